"""Ray executor: each task (a few batches of one model's cells) is a Ray task.

``address`` joins a running cluster (``ray start --head`` on one node, ``ray start --address``
on the others); without it a local Ray starts and stops with the command.  A task asks for
``cpus_per_task`` CPUs and, when the cluster has GPUs, one GPU (``gpus_per_task`` overrides).

Where results go: by default the workers write them into the results folder themselves, which
then has to be the same shared filesystem (NFS, Lustre, ...) at the same path on every node.
With ``return_results`` the workers send them back and the driver writes them, for clusters
without a shared filesystem.  Either way every node needs shiftbench installed, the same
registry path and its data (``--data-dir``) readable.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .common import BatchOutcome, call, need


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, *, return_results: bool = False, num_cpus: int | None = None,
                 cpus_per_task: int = 1, gpus_per_task: float | None = None, init_kwargs: dict | None = None):
        self.address = address
        self.return_results = return_results
        self.num_cpus = num_cpus  # only for a local Ray started here
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.threads = max(1, int(cpus_per_task))
        self.init_kwargs = init_kwargs or {}
        self._ray: Any = None
        self._started = False
        self._remote: Any = None
        self._refs: list[Any] = []

    def start(self) -> None:
        ray = self._ray = need("ray", "ray", "ray")
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)
            self._started = True
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self._remote = ray.remote(call).options(num_cpus=self.cpus_per_task, num_gpus=gpus,
                                                max_retries=0)  # retries are the driver's, per batch

    def submit(self, calls: Sequence[Callable[[], list[BatchOutcome]]]) -> list[Any]:
        refs = [self._remote.remote(fn) for fn in calls]
        self._refs += refs
        return refs

    def wait(self) -> list[tuple[Any, list[BatchOutcome] | BaseException]]:
        ray = self._ray
        ready, rest = ray.wait(self._refs, num_returns=1)
        self._refs = rest
        out = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - a worker died, a task failed: the driver retries it
                out.append((ref, exc))
        return out

    def cancel(self) -> None:
        for ref in self._refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass
        self._refs = []

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
            self._started = False
