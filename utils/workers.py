"""DataLoader workers: how they start (a fork server) and end (with the process that owns their loader); issue 27.

Every loader of the toolkit takes its keywords from `loader_options` (`utils.data.make_loader` for training,
`utils.distributed.sharded_map` for the evaluation and scoring passes). The choice of the start method was
measured: `benchmarks/loader_workers.py`, RESULTS.md ("DataLoader workers: how they start")."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

WORKER_START = "forkserver"  # how DataLoader workers start (issue 27; benchmarks/loader_workers.py)


def worker_context(num_workers: int) -> Any:
    """The multiprocessing context DataLoader workers start from (None without workers): a fork server.

    Workers forked from the training process inherit every lock its other threads (tqdm's monitor, gloo,
    OpenMP, a logging handler) held at that instant, and a worker whose lock is never released never reaches
    its worker loop: the pass waits forever (issue 27). The fork server is a fresh single-threaded process
    (started once, by fork + exec) that has imported `__main__`, torch, `utils.data` and torchvision's
    transforms, and forks the workers: as cheap as forking, without the inherited locks. Like `spawn`, it
    needs a script's top level guarded by `if __name__ == "__main__":` (every script here is)."""
    if num_workers <= 0:
        return None
    import multiprocessing

    ctx = multiprocessing.get_context(WORKER_START)
    ctx.set_forkserver_preload(["__main__", f"{__package__}.data", "torchvision.transforms"])  # missing: skipped
    return ctx


def exit_with_owner(owner: int, worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: this worker ends when process `owner` (the one iterating its loader) ends.

    A worker of the fork server watches its parent, the server, which lives on while any worker holds its pipe:
    after a SIGKILLed rank its workers, server and resource tracker would run forever (the fault suite found 6
    such processes per killed rank). A daemon thread waits on a pidfd of `owner` (polls it each second where
    there is none) and ends the worker. Takes no random numbers: the worker's seeding is unchanged."""
    import threading

    def watch() -> None:
        try:
            import select

            fd = os.pidfd_open(owner)
            select.select([fd], [], [])  # readable once `owner` has exited
        except (AttributeError, OSError):  # no pidfd here (or `owner` already gone)
            import time

            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


def loader_options(num_workers: int) -> dict[str, Any]:
    """DataLoader keywords shared by every loader: workers from `worker_context` that end with this process
    (`exit_with_owner`), pinned memory on CUDA.

    Workers are not persistent: each epoch's workers are seeded from the epoch's reseeded RNG (exact resume).
    No DataLoader `timeout`: with one, torch looks at its workers' liveness only once it has passed (workers of
    the fork server are not this process's children: no SIGCHLD), so a killed worker would be noticed after
    `dist.timeout_s`; without one, within 5 s (a `WaitError`). The deadline of each batch is
    `utils.waits.bounded`'s, iterating the loader."""
    opts: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        opts.update(multiprocessing_context=worker_context(num_workers), persistent_workers=False,
                    worker_init_fn=functools.partial(exit_with_owner, os.getpid()))
    return opts
