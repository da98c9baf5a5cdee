"""Local executor: the grid on this machine, in this process or in N worker processes.

With GPUs visible, the default is one worker per GPU, each seeing only its own
(``CUDA_VISIBLE_DEVICES``); with more workers than GPUs they share them round-robin.  Workers
ignore Ctrl-C: the driver cancels what has not started and stops the running tasks with SIGTERM,
which aborts them between two Python steps, so a result file is either complete or absent.  A
driver that dies without stopping them (``kill -9``, an out-of-memory kill, a scheduler's time
limit) leaves no worker behind: each one checks every second that its parent is still the driver
and stops itself the same way when it is not.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from .common import BatchOutcome


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()][:n]
    return [str(i) for i in range(n)]


_STOPPING = False


def _stop(signum, frame):  # SIGTERM in a worker: abort the running call, start no other
    global _STOPPING
    _STOPPING = True
    raise SystemExit(128 + signum)


PARENT_CHECK_SECONDS = 1.0


def _watch_parent(parent: int) -> None:
    """Stop this worker (SIGTERM to its main thread: :func:`_stop`) once its parent is no longer
    the driver (the driver died and the worker was handed to another process)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    # to the main thread itself (a signal to the process may be taken by this thread, and the main
    # thread, blocked reading its next task, would never see it), and again: the pool's loop catches
    # the abort of a running task and waits for the next one, which the next signal ends
    while True:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        time.sleep(PARENT_CHECK_SECONDS)


def _init_worker(devices) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="shiftbench-parent-watch", daemon=True).start()
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def _guarded(fn: Callable[[], Any]) -> Any:
    if _STOPPING:
        raise SystemExit(1)
    return fn()


class LocalExecutor:
    """``workers`` processes (``None``: one per visible GPU, else 1).  One worker runs in this
    process, with all of torch's threads; several each get one thread (``spawn``ed)."""

    name = "local"
    return_results = False

    def __init__(self, workers: int | None = 1, gpus: Sequence[str] | None = None):
        import torch

        self.gpus = visible_gpus() if gpus is None else [str(g) for g in gpus]
        self.workers = workers if workers else max(1, len(self.gpus))
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.threads = torch.get_num_threads() if self.workers == 1 else 1
        self._pool: ProcessPoolExecutor | None = None
        self._inline: deque[tuple[int, Callable[[], Any]]] = deque()
        self._futures: set[Future] = set()
        self._ids = itertools.count()

    @property
    def in_process(self) -> bool:
        return self.workers == 1

    def devices(self) -> list[str | None]:
        """The ``CUDA_VISIBLE_DEVICES`` each worker gets (None: unchanged)."""
        if not self.gpus or self.workers == 1:
            return [None] * self.workers
        return [self.gpus[i % len(self.gpus)] for i in range(self.workers)]

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        devices = ctx.Queue()
        for d in self.devices():
            devices.put(d)
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(devices,))

    def start(self) -> None:
        if self.workers > 1:
            self._pool = self._new_pool()

    def submit(self, calls: Sequence[Callable[[], list[BatchOutcome]]]) -> list[Any]:
        if self._pool is None:
            handles = [next(self._ids) for _ in calls]
            self._inline.extend(zip(handles, calls))
            return handles
        out = []
        for fn in calls:
            try:
                fut = self._pool.submit(_guarded, fn)
            except BrokenProcessPool:  # a worker died (e.g. killed for memory): start fresh ones for the retries
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                fut = self._pool.submit(_guarded, fn)
            self._futures.add(fut)
            out.append(fut)
        return out

    def wait(self) -> list[tuple[Any, list[BatchOutcome] | BaseException]]:
        if self._pool is None:
            handle, fn = self._inline.popleft()
            return [(handle, fn())]
        done, _ = wait(self._futures, return_when=FIRST_COMPLETED)
        out = []
        for fut in done:
            self._futures.discard(fut)
            try:
                out.append((fut, fut.result()))
            except Exception as exc:  # noqa: BLE001 - the driver retries or reports it
                out.append((fut, exc))
        return out

    def cancel(self) -> None:
        self._inline.clear()
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
