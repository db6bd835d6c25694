"""Fault injection for the fault suite (`benchmarks/faults.py`); does nothing unless $TOOLKIT_FAULT is set.

    TOOLKIT_FAULT=<action>:<point>:<n>[:<rank>]

action: `kill` (SIGKILL this process: no handler, no clean-up, as a pre-empted job) or `enospc` (raise
OSError(ENOSPC), as a full disk). point: `step` (after an optimizer step), `write` (inside an atomic write,
after the temporary file is written, before the rename), `stats` (a batch of the per-sample stats pass),
`score` (a batch of the scorer), `worker` (a sample read by DataLoader worker 0, inside that worker process:
a worker killed mid-epoch; each worker process counts its own samples, so the fault fires in the first pass whose
worker 0 reads n samples). n: the fault fires the n-th time the point is reached (1 = the first).
rank: only on this torchrun rank (default: every rank). With $TOOLKIT_FAULT_ONCE=<path> the fault fires only
while that file does not exist (it is created first, holding the time it fired), so a restarted job runs clean."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

POINTS = ("step", "write", "stats", "score", "worker")
_seen: dict[str, int] = {}


def _spec() -> tuple[str, str, int, int | None] | None:
    raw = os.environ.get("TOOLKIT_FAULT", "")
    if not raw:
        return None
    parts = raw.split(":")
    action, point, n = parts[0], parts[1], int(parts[2])
    rank = int(parts[3]) if len(parts) > 3 else None
    if action not in ("kill", "enospc") or point not in POINTS:
        raise ValueError(f"TOOLKIT_FAULT={raw!r}: want kill|enospc:{'|'.join(POINTS)}:<n>[:<rank>]")
    return action, point, n, rank


def fault_point(point: str, path: str | os.PathLike = "") -> None:
    """Reached `point`: fire the configured fault if this is its n-th time (see the module docstring)."""
    spec = _spec()
    if spec is None or spec[1] != point:
        return
    action, _, n, rank = spec
    if rank is not None and int(os.environ.get("RANK", 0)) != rank:
        return
    if point == "worker":
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is None or info.id != 0:
            return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] != n:
        return
    once = os.environ.get("TOOLKIT_FAULT_ONCE", "")
    if once:
        if Path(once).exists():
            return
        Path(once).write_text(f"{time.time():.3f}\n")  # when it fired: the suite times what follows
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
