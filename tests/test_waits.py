"""Issue 27: no deadlock when DataLoader workers start, and no wait without end (utils/waits.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from .conftest import ROOT

_LOCKED_FORK = """
import sys, threading, time
sys.path.insert(0, {root!r})
import torch

LOCK = threading.Lock()  # a lock the workers need: a logging handler's, tqdm's, an allocator's


class NeedsLock(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        with LOCK:
            return i, torch.full((2,), float(i)), 0


if __name__ == "__main__":
    from utils.distributed import Dist, sharded_map
    from utils.waits import configure

    configure(timeout_s=20)
    held = threading.Event()
    threading.Thread(target=lambda: (LOCK.acquire(), held.set(), time.sleep(3600)), daemon=True).start()
    held.wait()  # another thread holds LOCK while the pass starts its workers, as tqdm's monitor or gloo may
    out = sharded_map(NeedsLock(), lambda i, x, y: {{"s": x.sum(1)}}, Dist(0, 1, 0, torch.device("cpu")), 2,
                      num_workers=2)
    assert out["s"].tolist() == [2.0 * i for i in range(8)], out
    print("pass done")
"""


def _run(cmd, timeout, **kw):
    """Run `cmd` in its own session; on timeout kill the whole group (the script, its workers, a fork server)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err
    return p.returncode, out, err


def test_workers_start_while_another_thread_holds_a_lock_they_need(tmp_path):
    """Workers forked from a process whose other thread holds a lock inherit it held and never run (the hang of
    issue 27: fails here by the DataLoader's timeout with `fork`); started from the fork server they run."""
    script = tmp_path / "locked_fork.py"
    script.write_text(_LOCKED_FORK.format(root=str(ROOT)))
    t0 = time.time()
    code, out, err = _run([sys.executable, str(script)], timeout=60, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert code == 0 and "pass done" in out, f"exit {code} after {time.time() - t0:.0f} s: {err[-1500:]}"


def test_a_wait_past_its_deadline_ends_the_process_in_one_line(tmp_path):
    code, out, err = _run([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from utils.waits import configure, set_stage, waiting
        configure(timeout_s=1)
        set_stage("stats")
        with waiting("all-gather of the result shapes"):
            time.sleep(60)
    """)], timeout=30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and lines[-1].startswith("error: rank 0: stats: all-gather of the result shapes did not "
                                              "finish within 1 s (dist.timeout_s)"), (code, err)


_PEER_NEVER_COMES = """
import sys, time
sys.path.insert(0, {root!r})
from utils.cli import run_script
from utils.distributed import broadcast_object, setup
from utils.waits import set_stage


def main(cfg):
    d = setup(cfg)
    set_stage("scoring")
    if d.rank == 1:
        time.sleep(300)  # never reaches the collective
    broadcast_object("go")


if __name__ == "__main__":
    run_script(main, "configs/digits.yaml")
"""


def test_a_rank_whose_peer_never_reaches_a_collective_exits_in_one_line(tmp_path):
    """2 gloo ranks under torchrun; rank 1 never joins the broadcast: rank 0 ends within dist.timeout_s with one
    line naming its rank, stage and wait, exit status 3, and torchrun stops the job (nonzero)."""
    script = tmp_path / "stuck.py"
    script.write_text(_PEER_NEVER_COMES.format(root=str(ROOT)))
    t0 = time.time()
    code, out, err = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--monitor-interval=0.5", str(script), "dist.timeout_s=3"], timeout=120, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    took = time.time() - t0
    assert code not in (None, 0), (code, err[-2000:])
    line = "error: rank 0: scoring: broadcast from rank 0 did not finish within 3 s (dist.timeout_s)"
    assert line in err, err[-3000:]
    assert "exitcode  : 3" in err or "exitcode: 3" in err or "exit code 3" in err, err[-3000:]
    assert took < 60, took


_OWNER_KILLED = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import torch


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        open(f"worker_{{os.getpid()}}", "w").close()
        time.sleep(0.05)
        return i, torch.zeros(2), 0


if __name__ == "__main__":
    from utils.data import make_loader

    it = iter(make_loader(Slow(), 4, shuffle=False, num_workers=2))
    next(it)
    os.kill(os.getpid(), signal.SIGKILL)  # a pre-empted rank
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_end_with_the_process_that_owns_their_loader(tmp_path):
    """A SIGKILLed rank's DataLoader workers (children of the fork server, which they keep alive) end within
    seconds instead of running on forever."""
    script = tmp_path / "owner_killed.py"
    script.write_text(_OWNER_KILLED.format(root=str(ROOT)))
    p = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert p.wait(timeout=120) == -signal.SIGKILL
        pids = [int(f.name.split("_")[1]) for f in tmp_path.glob("worker_*")]
        end = time.time() + 20
        while time.time() < end and not all(_gone(q) for q in pids):
            time.sleep(0.2)
        alive = [q for q in pids if not _gone(q)]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever the script left (a fork server, a resource tracker, workers)
        except ProcessLookupError:
            pass
    assert len(pids) == 2 and not alive, (pids, alive)
