"""What every executor shares: tasks of cell batches, the worker-side loop (per-batch errors,
out-of-memory backoff), and the driver (retries, progress, Ctrl-C, failures reported).

An executor only moves zero-argument calls to where they run and hands their outcome back; the
driver decides what to run, retries what failed, writes returned results and counts.  A cell's
numbers therefore never depend on the executor: the same code evaluates it everywhere.
"""
from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from .. import store
from ..plan import Cell

Batch = tuple[Cell, ...]
# runner(chunk, *, results_dir, threads, batch_size) -> keys written; evaluate._run_chunk with its
# registry, data and model folders bound and raise_errors=True (a failing batch raises).  It must be picklable (a functools.partial of module
# functions) so that it can travel to worker processes, Ray workers and Slurm jobs.
Runner = Callable[..., list[str]]

DEFAULT_RETRIES = 2
DEFAULT_MIN_BATCH = 8


@dataclass(frozen=True)
class Task:
    """Batches of cells that run one after the other where the task lands (one model's, so its
    weights load once)."""
    batches: tuple[Batch, ...]
    attempt: int = 0  # 0: first try; k: k-th retry


@dataclass
class BatchOutcome:
    keys: tuple[str, ...]
    written: list[str] = field(default_factory=list)
    error: str | None = None
    fatal: bool = False  # a result could not be written (store.StoreError): the run stops
    retry: bool = True  # False for errors in the input (missing files, a broken entry): retrying cannot help
    batch_size: int | None = None  # the batch size that succeeded (smaller than asked after an OOM backoff)
    files: dict[str, str] = field(default_factory=dict)  # returned results: path in results_dir -> JSON text


@dataclass
class Failure:
    cells: tuple[str, ...]  # Cell.describe() of each cell of the batch
    error: str
    attempts: int


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C: outstanding work was cancelled; every result written so far is complete."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        super().__init__(f"interrupted after {counts.get('ran', 0)} cells")


class MissingExtra(ImportError):
    def __init__(self, executor: str, package: str, extra: str):
        super().__init__(f"--executor {executor} needs the '{package}' package: pip install 'shiftbench[{extra}]'")


def need(executor: str, package: str, extra: str):
    """Import an optional executor's package, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingExtra(executor, package, extra) from exc


# --------------------------------------------------------------------------- worker side
def describe_error(exc: BaseException, batch: Batch | None = None) -> str:
    """One line for an error (a string: it travels back from where the batch ran).  Errors of our
    own (ValueError, RuntimeError) are their message; others carry their type and the innermost
    frames.  The model's entry file is named unless the message does (data errors name their files)."""
    if isinstance(exc, (ValueError, RuntimeError)) and str(exc):
        msg = str(exc)
    else:
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)
        msg = f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
    m = batch[0].model if batch else None
    if m is not None and m.path and m.path not in msg and not isinstance(exc, OSError):
        msg = f"model '{m.id}' ({m.path}): {msg}"
    return msg


def is_input_error(exc: BaseException) -> bool:
    from ...models.weights import WeightsError
    from ...registry import RegistryError

    return isinstance(exc, (FileNotFoundError, RegistryError, WeightsError))


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_batch_with_backoff(runner: Runner, batch: Batch, *, results_dir: str, threads: int, batch_size: int,
                           min_batch_size: int = DEFAULT_MIN_BATCH, raise_fatal: bool = False) -> BatchOutcome:
    """Run one batch; on CUDA out-of-memory, retry it with half the batch size while that stays at
    or above ``min_batch_size``, then report it failed.  Any other error is reported, not raised:
    one broken cell never stops the task (an input error, :func:`is_input_error`, is marked not
    worth retrying).  A failed write (:class:`store.StoreError`) is marked fatal, or raised with
    ``raise_fatal``; Ctrl-C (KeyboardInterrupt) propagates."""
    keys = tuple(c.key for c in batch)
    bs = batch_size
    while True:
        try:
            written = runner(list((batch,)), results_dir=results_dir, threads=threads, batch_size=bs)
            return BatchOutcome(keys, list(written), batch_size=bs)
        except store.StoreError as exc:
            if raise_fatal:
                raise
            return BatchOutcome(keys, error=str(exc), fatal=True)
        except Exception as exc:  # noqa: BLE001 - reported per batch, the sweep goes on
            if is_input_error(exc):
                return BatchOutcome(keys, error=describe_error(exc, batch), retry=False)
            if not _is_oom(exc):
                return BatchOutcome(keys, error=describe_error(exc, batch))
            _free_gpu_memory()
            if bs // 2 < min_batch_size:
                return BatchOutcome(keys, error=f"out of GPU memory at batch size {bs} (floor {min_batch_size}): "
                                                f"{describe_error(exc, batch)}")
            bs //= 2


def run_task(runner: Runner, task: Task, *, results_dir: str, threads: int, batch_size: int,
             min_batch_size: int = DEFAULT_MIN_BATCH, return_results: bool = False,
             raise_fatal: bool = False) -> list[BatchOutcome]:
    """Where a task lands: run its batches one by one (up to the first fatal error).  With
    ``return_results`` the results are written to a private temporary folder and returned as
    text, for the driver to write (no shared filesystem needed)."""
    out = []
    for b in task.batches:
        with tempfile.TemporaryDirectory(prefix="shiftbench-") if return_results else _no_folder() as tmp:
            o = run_batch_with_backoff(runner, b, results_dir=tmp or results_dir, threads=threads,
                                       batch_size=batch_size, min_batch_size=min_batch_size,
                                       raise_fatal=raise_fatal)
            for cell in b if tmp else ():
                path = Path(tmp) / cell.filename
                if path.is_file():
                    o.files[cell.filename] = path.read_text(encoding="utf-8")
        out.append(o)
        if o.fatal:
            break
    return out


@contextlib.contextmanager
def _no_folder():
    yield None


def call(fn: Callable[[], Any]) -> Any:
    """Run a zero-argument call (a module-level function, so Ray and submitit can ship it)."""
    return fn()


# --------------------------------------------------------------------------- executor interface
class Executor(Protocol):
    """Moves calls to where they run.  ``submit`` takes the calls of several tasks at once (so a
    Slurm executor can make one job array of them); ``wait`` blocks until at least one finished
    and returns ``(handle, outcome or the exception that ended it)``; ``cancel`` stops everything
    outstanding (Ctrl-C); ``close`` releases what ``start`` took."""

    name: str
    threads: int  # torch threads per task where the calls run

    def start(self) -> None: ...

    def submit(self, calls: Sequence[Callable[[], list[BatchOutcome]]]) -> list[Any]: ...

    def wait(self) -> list[tuple[Any, list[BatchOutcome] | BaseException]]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...

    return_results: bool


# --------------------------------------------------------------------------- driver
def _write_returned(results_dir: Path, files: dict[str, str]) -> list[str]:
    written = []
    for rel, text in files.items():  # already signed where they were computed
        path, payload = results_dir / rel, json.loads(text)
        if not store.is_done(path, payload["key"]):
            store.write_json_atomic(path, payload)
            written.append(payload["key"])
    return written


def drive(executor: Executor, chunks: Sequence[Sequence[Batch]], runner: Runner, results_dir: Path, *,
          total: int, retries: int = DEFAULT_RETRIES, batch_size: int, min_batch_size: int = DEFAULT_MIN_BATCH,
          progress: bool = True, report: Callable[[Failure], None] | None = None) -> dict[str, int]:
    """Run ``chunks`` (one task each) on ``executor``; a batch that fails is retried alone up to
    ``retries`` times (errors in the input are not retried), then handed to ``report`` while the
    rest goes on.  Returns ``{"ran": cells written, "failed": cells given up, "retried": batches}``.
    Raises :class:`store.StoreError` when a result cannot be written, :class:`GridInterrupted`
    on Ctrl-C; either way outstanding work is cancelled."""
    from tqdm.auto import tqdm

    results_dir = Path(results_dir)
    counts = {"ran": 0, "failed": 0, "retried": 0}
    outstanding: dict[Any, Task] = {}
    bar = tqdm(total=total, desc=f"cells ({executor.name})", unit="cell", disable=not progress, dynamic_ncols=True)

    def show(advance: int = 0) -> None:
        left = max(0, total - bar.n - advance - counts["failed"])
        bar.set_postfix_str(f"failed={counts['failed']} left={left}" +
                            (f" retried={counts['retried']}" if counts["retried"] else ""), refresh=False)
        bar.update(advance) if advance else bar.refresh()

    def make_call(task: Task):
        return functools.partial(run_task, runner, task, results_dir=str(results_dir), threads=executor.threads,
                                 batch_size=batch_size, min_batch_size=min_batch_size,
                                 return_results=executor.return_results,
                                 raise_fatal=getattr(executor, "in_process", False))

    def submit(tasks: list[Task]) -> None:
        if tasks:
            handles = executor.submit([make_call(t) for t in tasks])
            outstanding.update(zip(handles, tasks))

    try:
        executor.start()
        show()
        submit([Task(tuple(ch)) for ch in chunks if ch])
        while outstanding:
            again: list[Task] = []
            for handle, result in executor.wait():
                task, advance = outstanding.pop(handle), 0
                if isinstance(result, BaseException):  # the whole task died (worker lost, job failed)
                    err = describe_error(result)
                    result = [BatchOutcome(tuple(c.key for c in b), error=err) for b in task.batches]
                for batch, o in zip(task.batches, result):
                    if o.fatal:
                        executor.cancel()
                        raise store.StoreError(o.error)
                    if o.error is None:
                        written = _write_returned(results_dir, o.files) if executor.return_results else o.written
                        counts["ran"] += len(written)
                        advance += len(written)
                    elif o.retry and task.attempt < retries:
                        counts["retried"] += 1
                        again.append(Task((batch,), task.attempt + 1))
                    else:
                        lost = [c for c in batch if not store.is_done(results_dir / c.filename, c.key)]
                        counts["failed"] += len(lost)
                        if report is not None:
                            report(Failure(tuple(c.describe() for c in batch), o.error, task.attempt + 1))
                show(advance)
            submit(again)
    except KeyboardInterrupt:
        executor.cancel()
        bar.close()
        raise GridInterrupted(counts) from None
    finally:
        bar.close()
        executor.close()
    return counts
