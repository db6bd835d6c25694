"""No wait without end (issue 27): every wait on another rank or process has a deadline, `dist.timeout_s`.

A wait is a block `with waiting("barrier"):` (collectives, rank-0 broadcasts, a training step with its gradient
all-reduce) or an iteration `for batch in bounded(loader):` (DataLoader batches). A wait that outlives
`dist.timeout_s` seconds is ended by a watchdog thread, which prints one line naming the rank, the stage and the
wait, for example

    error: rank 1: stats: all-gather of the result shapes did not finish within 600 s (dist.timeout_s); ...

and ends the process with exit status 3 (`os._exit`: the main thread is blocked inside C and cannot be
interrupted), so `torchrun --max-restarts` restarts the group, or stops it, and a scheduler sees a failed job.
A wait that fails instead of hanging (a peer rank died: gloo's "Connection closed by peer"; a DataLoader worker
killed; the DataLoader's own `timeout`) raises `WaitError` carrying the same kind of line; the scripts
(`utils.cli.run_script`) print it and exit 3 too. The stage is the innermost `stage(name)` block, else the last
`set_stage(name)` (training, stats, test, scoring, spectra, ...).

The watchdog is one daemon thread per process, started by the first wait; it polls the armed deadlines twice a
second and takes no lock the main thread could hold (it writes the line with `os.write`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

EXIT_STATUS = 3  # a wait timed out or failed (user errors exit 2)
DEFAULT_TIMEOUT_S = 600.0  # = config DEFAULTS["dist"]["timeout_s"]
POLL_S = 0.5  # how often the watchdog looks at the armed deadlines
T = TypeVar("T")


class WaitError(RuntimeError):
    """A wait on another rank or process failed: `str(e)` is the one line (rank, stage, wait, cause)."""


_state = {"timeout_s": DEFAULT_TIMEOUT_S, "rank": None, "stage": "start"}
_stages: list[str] = []


def configure(timeout_s: float | None = None, rank: int | None = None) -> None:
    """Set the deadline of every later wait (seconds) and this process's rank (default: $RANK, else 0)."""
    if timeout_s is not None:
        if not timeout_s > 0:
            from .errors import UserError

            raise UserError(f"dist.timeout_s must be > 0 seconds, got {timeout_s}")
        _state["timeout_s"] = float(timeout_s)
    if rank is not None:
        _state["rank"] = int(rank)


def timeout_s() -> float:
    """Seconds any wait may last (`dist.timeout_s`)."""
    return float(_state["timeout_s"])


def rank() -> int:
    r = _state["rank"]
    return int(os.environ.get("RANK", 0)) if r is None else int(r)


def set_stage(name: str) -> None:
    """The stage named by waits outside any `stage` block (e.g. "training" for the rest of `train`)."""
    _state["stage"] = name


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Waits inside this block name `name` as their stage."""
    _stages.append(name)
    try:
        yield
    finally:
        _stages.pop()


def where(what: str) -> str:
    """'rank R: <stage>: <what>'."""
    return f"rank {rank()}: {_stages[-1] if _stages else _state['stage']}: {what}"


class _Watchdog:
    """Deadlines of the waits in progress, checked by one daemon thread."""

    def __init__(self) -> None:
        self.armed: dict[int, tuple[float, str]] = {}
        self.tokens = itertools.count()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    def arm(self, seconds: float, line: str) -> int:
        token = next(self.tokens)
        self.armed[token] = (time.monotonic() + seconds, line)
        if self.thread is None:
            with self.start_lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="toolkit-wait-watchdog", daemon=True)
                    self.thread.start()
        return token

    def disarm(self, token: int) -> None:
        self.armed.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            for deadline, line in self.armed.copy().values():
                if now >= deadline:
                    fail_now(line)


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:  # a forked child has no watchdog thread and no wait in progress
    _watchdog.armed.clear()
    _watchdog.thread = None
    _watchdog.start_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def fail_now(line: str) -> None:
    """End the process now with exit status 3 and `error: <line>` as the last line on stderr (see `exit_now`)."""
    exit_now(f"\nerror: {line}")


def exit_now(text: str = "") -> None:
    """Write `text` (a line) on stderr and end the process with exit status 3, taking no lock and running no
    clean-up that could wait on a peer. Its DataLoader workers are SIGKILLed first (one stuck on a lock or a read
    would outlive it, holding the job's pipes open), and multiprocessing's resource tracker is let go first, so
    its warning about the workers' semaphores comes before `text`, not after."""
    try:
        import multiprocessing

        for p in multiprocessing.active_children():
            with contextlib.suppress(OSError, TypeError):
                os.kill(p.pid, 9)
        _release_resource_tracker()
    finally:
        try:
            if text:
                os.write(2, (text.rstrip("\n") + "\n").encode())
        finally:
            os._exit(EXIT_STATUS)


def _release_resource_tracker(wait_s: float = 2.0) -> None:
    """Close this process's end of the resource tracker's pipe and give the tracker `wait_s` to clean up and exit."""
    with contextlib.suppress(Exception):
        from multiprocessing import resource_tracker

        tracker = resource_tracker._resource_tracker
        fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
        if fd is None or pid is None:
            return
        os.close(fd)
        tracker._fd = None
        end = time.monotonic() + wait_s
        while time.monotonic() < end and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.05)


def _hint() -> str:
    return "a peer rank or a DataLoader worker died or is stuck (see its own lines); the job ends so that torchrun " \
           "or the scheduler can restart it"


_COMM_MARKS = ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_comm_error(e: BaseException) -> bool:
    """An error of a collective (gloo / NCCL): the peer is gone or the backend's own timeout passed; not a bug
    of the code that runs between collectives."""
    if isinstance(e, WaitError) or not isinstance(e, RuntimeError):
        return False
    import torch.distributed as tdist

    dist_error = getattr(tdist, "DistError", ())
    return (bool(dist_error) and isinstance(e, dist_error)) or any(m in str(e) for m in _COMM_MARKS)


def is_loader_error(e: BaseException) -> bool:
    """The DataLoader's own errors (a worker killed or exited, its `timeout`), not a dataset's exception."""
    return isinstance(e, RuntimeError) and str(e).startswith("DataLoader")


@contextlib.contextmanager
def waiting(what: str, convert: Callable[[BaseException], bool] | None = is_comm_error) -> Iterator[None]:
    """A wait named `what`: ended after `dist.timeout_s` by the watchdog; an exception for which `convert` says
    True becomes a `WaitError` naming the rank, stage and wait (None: exceptions pass unchanged)."""
    line = where(what)
    token = _watchdog.arm(timeout_s(), f"{line} did not finish within {timeout_s():g} s (dist.timeout_s); "
                                       + _hint())
    try:
        yield
    except Exception as e:
        if convert is None or not convert(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WaitError(f"{line} failed ({type(e).__name__}: {first}); {_hint()}") from e
    finally:
        _watchdog.disarm(token)


def bounded(items: Iterable[T], what: str = "DataLoader batch") -> Iterator[T]:
    """Iterate `items` (a DataLoader), each `next` a wait of at most `dist.timeout_s` (see `waiting`)."""
    it = iter(items)
    while True:
        with waiting(what, is_loader_error):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item
