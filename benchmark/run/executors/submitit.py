"""Submitit executor: the grid as Slurm job arrays, one array task per shard of the grid (a
task: a few batches of one model's cells), or, with ``local=True``, as local subprocesses through
submitit's local executor (for tests and laptops).

Slurm jobs write results into the results folder, so it must be on a filesystem every node
mounts at the same path (as submitit's own job folder must be).  Retried batches go out as a
new, smaller job array.
"""
from __future__ import annotations

import re
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from .common import BatchOutcome, call, need

DEFAULT_LOCAL_TIMEOUT_MIN = 24 * 60


def parse_slurm_time(text: str | int | None) -> int | None:
    """Minutes from Slurm's time formats: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--slurm-time expects Slurm's format (MM, HH:MM:SS or D-HH:MM:SS), got {text!r}")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:  # HH:MM:SS
        hours, minutes, seconds = a, b, c
    else:  # MM[:SS]
        hours, minutes, seconds = 0, a, b or 0
    total = (days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ValueError(f"--slurm-time {text!r} is shorter than a minute")
    return total


class SubmititExecutor:
    name = "submitit"
    return_results = False

    def __init__(self, folder: str | Path, *, local: bool = False, partition: str | None = None,
                 time_min: int | None = None, gpus: int | None = None, array_parallelism: int | None = None,
                 cpus_per_task: int = 1, mem_gb: float | None = None, poll_s: float | None = None):
        self.folder = Path(folder)
        self.local = local
        self.partition = partition
        self.time_min = time_min
        self.gpus = gpus
        self.array_parallelism = array_parallelism
        self.cpus_per_task = cpus_per_task
        self.mem_gb = mem_gb
        self.threads = max(1, int(cpus_per_task))
        self.poll_s = poll_s if poll_s is not None else (0.5 if local else 15.0)
        self._ex: Any = None
        self._running: list[Any] = []
        self._queued: deque[Callable[[], list[BatchOutcome]]] = deque()  # local: waiting for a free slot
        self._local_handles: deque[int] = deque()
        self._by_handle: dict[int, Any] = {}
        self._next = 0

    def start(self) -> None:
        submitit = need("submitit", "submitit", "slurm")
        self.folder.mkdir(parents=True, exist_ok=True)
        folder = self.folder / "%j"
        if self.local:
            from .local import visible_gpus

            gpus = self.gpus if self.gpus is not None else min(1, len(visible_gpus()))
            self._ex = submitit.LocalExecutor(folder=folder)
            self._ex.update_parameters(timeout_min=self.time_min or DEFAULT_LOCAL_TIMEOUT_MIN, gpus_per_node=gpus)
            self.array_parallelism = self.array_parallelism or 2
            return
        if shutil.which("sbatch") is None:
            raise ValueError("--executor submitit: Slurm's sbatch is not on PATH here; run from a Slurm login "
                               "node, or add --local to use submitit's local executor")
        self._ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"name": "shiftbench", "cpus_per_task": self.cpus_per_task}
        if self.time_min:
            params["timeout_min"] = self.time_min
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.array_parallelism:
            params["slurm_array_parallelism"] = self.array_parallelism
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        self._ex.update_parameters(**params)

    # Slurm: everything submitted at once as one array (Slurm throttles it with
    # --slurm-array-parallelism).  Local: submitit starts every job at once, so jobs are held
    # here and started as earlier ones finish.
    def submit(self, calls: Sequence[Callable[[], list[BatchOutcome]]]) -> list[Any]:
        if not self.local:
            with self._ex.batch():
                jobs = [self._ex.submit(call, fn) for fn in calls]
            self._running += jobs
            return jobs
        handles = []
        for fn in calls:
            handles.append(self._next)
            self._queued.append(fn)
            self._local_handles.append(self._next)
            self._next += 1
        self._fill()
        return handles

    def _fill(self) -> None:
        while self._queued and len(self._running) < (self.array_parallelism or 1):
            job = self._ex.submit(call, self._queued.popleft())
            self._by_handle[id(job)] = self._local_handles.popleft()
            self._running.append(job)

    def wait(self) -> list[tuple[Any, list[BatchOutcome] | BaseException]]:
        while True:
            done = [j for j in self._running if j.done()]
            if done:
                break
            time.sleep(self.poll_s)
        out = []
        for job in done:
            self._running.remove(job)
            handle = self._by_handle.pop(id(job)) if self.local else job
            try:
                out.append((handle, job.result()))
            except Exception as exc:  # noqa: BLE001 - job failed, timed out, was preempted: the driver retries
                out.append((handle, exc))
        if self.local:
            self._fill()
        return out

    def cancel(self) -> None:
        self._queued.clear()
        for job in self._running:
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already finished
                pass
        self._running = []

    def close(self) -> None:
        pass
