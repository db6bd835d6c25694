"""Run a command so that nothing it starts outlives it (the fault suite, `benchmarks/faults.py`; issue 27).

`launch` starts the command in a session of its own with a marker in its environment (`MARK=<random>`). On a
timeout, and after it ends, it SIGKILLs the command's process group and every process that carries the marker:
torchrun's ranks run in sessions of their own and DataLoader workers are children of a fork server, so neither
the launcher's process group nor its children alone reach them all. Without /proc only the group is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

MARK = "TOOLKIT_FAULT_SUITE"  # environment marker of every process a launched command started


def _marked(marker: str) -> list[int]:
    """Live processes whose environment carries `MARK=marker` (none where there is no /proc)."""
    needle, out = f"{MARK}={marker}".encode(), []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:  # gone, or not ours
                pass
    return out


def kill_all(p: subprocess.Popen, marker: str, grace: float = 0.0) -> int:
    """SIGKILL the command's process group and every process carrying its marker that is still alive after
    `grace` seconds (a fork server or resource tracker ends a moment after its owner); returns how many."""
    end = time.time() + grace
    while grace and _marked(marker) and time.time() < end:
        time.sleep(0.2)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    left: set[int] = set()
    for _ in range(5):
        pids = [q for q in _marked(marker) if q != os.getpid()]
        if not pids:
            break
        left.update(pids)
        for q in pids:
            try:
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return len(left)


def launch(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, fired: Path | None = None,
           after_fire: float = 0.0) -> subprocess.CompletedProcess:
    """Run `cmd` in a session of its own; past `timeout` s from the launch, or `after_fire` s from the time written
    in `fired` (the fault's own clock), kill everything it started and raise TimeoutExpired. The result carries
    `orphans`: processes of the command still alive after it ended (killed)."""
    marker = uuid.uuid4().hex
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=cwd, env={**env, MARK: marker}, stdout=out, stderr=err, text=True,
                             start_new_session=True)
        start = time.time()
        while p.poll() is None:
            deadline = start + timeout
            if fired is not None and fired.is_file():
                try:
                    deadline = min(deadline, float(fired.read_text()) + after_fire)
                except ValueError:  # being written
                    pass
            if time.time() > deadline:
                kill_all(p, marker)
                p.wait()
                out.seek(0), err.seek(0)
                raise subprocess.TimeoutExpired(cmd, time.time() - start, out.read(), err.read())
            time.sleep(0.2)
        orphans = kill_all(p, marker, grace=5.0)
        out.seek(0), err.seek(0)
        res = subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read())
    res.orphans = orphans
    if orphans:
        print(f"          killed {orphans} process(es) left by {' '.join(cmd[-6:])[:100]}", flush=True)
    return res
