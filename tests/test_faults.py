"""Faults survived (issue 17): the seconds-long part of benchmarks/faults.py, which runs the whole suite."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from utils.curvature.scoring import score_run
from utils.errors import UserError
from utils.io import NPZ_KEY, load_npz, reap_temporaries, save_npz
from utils.train import train

from .conftest import ROOT


def _weights(rdir, epoch):
    return torch.load(rdir / f"epoch_{epoch:03d}.pt", weights_only=True)["model"]


def test_full_disk_is_one_line_files_intact_and_the_rerun_resumes(tiny, monkeypatch):
    import utils.faults

    monkeypatch.setattr(utils.faults, "_seen", {})
    ref = train(tiny("train.epochs=3", "run=ref"))
    monkeypatch.setenv("TOOLKIT_FAULT", "enospc:write:8")  # run.json, record, epoch 0, resume, stats 1, epoch 1, ...
    with pytest.raises(UserError, match="could not write .*: No space left on device; nothing was half-written") as e:
        train(tiny("train.epochs=3"))
    assert "\n" not in str(e.value)
    rdir = ref.parent / "tiny"
    assert not list(rdir.rglob("*.tmp"))
    for p in rdir.rglob("*.npz"):
        load_npz(p)
    monkeypatch.delenv("TOOLKIT_FAULT")
    train(tiny("train.epochs=3"))
    assert all(torch.equal(_weights(ref, 3)[k], _weights(rdir, 3)[k]) for k in _weights(ref, 3))


def test_sigkill_inside_a_write_leaves_a_temporary_that_the_rerun_removes(tmp_path):
    args = [str(ROOT / "train_digits.py"), "data.subset=200", "train.epochs=2", "train.batch_size=50", "run=k",
            f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_FAULT": "kill:write:6"}
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == -9
    left = list((tmp_path / "pre/k").rglob("*.tmp"))
    assert len(left) == 1  # the killed writer's temporary file
    env["TOOLKIT_FAULT"] = ""
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed 1 temporary file(s) left by a killed job" in res.stdout
    assert not list((tmp_path / "pre/k").rglob("*.tmp")) and (tmp_path / "pre/k/epoch_002.pt").is_file()


def test_reap_temporaries_spares_live_writers_and_other_hosts(tmp_path):
    host = socket.gethostname().replace(".", "-")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {"dead": f".epoch_001.pt.{host}-{dead.pid}.abc123.tmp", "live": f".x.npz.{host}-{os.getpid()}.q1.tmp",
             "other": f".x.npz.otherhost-{dead.pid}.q2.tmp", "plain": "notes.tmp"}
    for n in names.values():
        (tmp_path / n).write_text("x")
    gone = reap_temporaries(tmp_path, announce=False)
    assert [p.name for p in gone] == [names["dead"]]
    assert all((tmp_path / names[k]).exists() for k in ("live", "other", "plain"))


def test_npz_of_a_newer_format_or_another_project_is_refused(tmp_path):
    save_npz(tmp_path / "ours.npz", curvature=np.zeros(3), epochs=np.arange(2))
    assert set(load_npz(tmp_path / "ours.npz", require=("curvature", "epochs"))) == {"curvature", "epochs"}
    np.savez(tmp_path / "newer.npz", curvature=np.zeros(3), epochs=np.arange(2), **{NPZ_KEY: np.int64(7)})
    with pytest.raises(UserError, match="written in file format 7, which this toolkit .format 1. does not read"):
        load_npz(tmp_path / "newer.npz")
    np.savez(tmp_path / "theirs.npz", scores=np.zeros(3))
    with pytest.raises(UserError, match="not a file of this toolkit .it lacks curvature, epochs.; move it away and"):
        load_npz(tmp_path / "theirs.npz", "score again", require=("curvature", "epochs"))


def test_scorer_checks_every_checkpoint_before_scoring_any(tiny):
    cfg = tiny("train.epochs=3")
    rdir = train(cfg)
    p = rdir / "epoch_002.pt"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(UserError, match="epoch_002.pt corrupt or truncated") as e:
        score_run(cfg)
    assert "\n" not in str(e.value)
    assert not (rdir.parent.parent / "curv_scores" / "tiny" / "epoch_000.npz").exists()  # nothing scored first


def test_two_scorers_on_one_run_at_once_both_finish_with_identical_files(tmp_path):
    base = [f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs", "run=s"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "train_digits.py"), *base, "data.subset=200", "train.epochs=3"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    score = [sys.executable, str(ROOT / "score_digits_checkpoint.py"), *base]
    both = [subprocess.Popen([*score, f"paths.scores={tmp_path}/shared"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], [o[1][-1500:] for o in outs]
    alone = subprocess.run([*score, f"paths.scores={tmp_path}/alone"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert alone.returncode == 0
    files = sorted(p.name for p in (tmp_path / "alone/s").glob("*.npz"))
    assert files == sorted(p.name for p in (tmp_path / "shared/s").glob("*.npz")) and len(files) == 5
    for f in files:
        assert (tmp_path / "alone/s" / f).read_bytes() == (tmp_path / "shared/s" / f).read_bytes(), f
    assert not list((tmp_path / "shared").rglob("*.tmp"))


def test_two_torchrun_agents_in_two_copies_train_and_score_what_one_process_does(tmp_path):
    """--nnodes=2 over loopback, each agent in its own copy of the project; only node 0 holds outputs (rank 0
    decides and writes, rank 1 reads nothing from its disk)."""
    import shutil
    import socket as so

    for node in ("node0", "node1"):
        shutil.copytree(ROOT, tmp_path / node, ignore=shutil.ignore_patterns(
            ".git", ".venv", "pretrained", "curv_scores", "logs", "results", "notebooks", "docs", "tests", "*.png"))
    args = ["data.subset=192", "train.epochs=2", "train.batch_size=32", "run=n", "paths.pretrained=pre",
            "paths.scores=scores", "paths.logs=logs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    one.mkdir()
    for script in ("train_digits.py", "score_digits_checkpoint.py"):
        res = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, env=env,
                             cwd=one, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    for script in ("train_digits.py", "score_digits_checkpoint.py"):
        with so.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}",
                                    "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", script,
                                    *args], cwd=tmp_path / f"node{r}", env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        outs = [a.communicate(timeout=300) for a in agents]
        assert [a.returncode for a in agents] == [0, 0], [o[1][-1500:] for o in outs]
    assert not (tmp_path / "node1/pre").exists() and not (tmp_path / "node1/scores").exists()
    wa = torch.load(one / "pre/n/epoch_002.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "node0/pre/n/epoch_002.pt", weights_only=True)["model"]
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 3e-7
    ca, cb = (np.load(d / "scores/n/curvature.npz")["curvature"] for d in (one, tmp_path / "node0"))
    np.testing.assert_allclose(ca, cb, rtol=1e-4, atol=1e-6)



def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waits for its reaper only
    except FileNotFoundError:
        return True


def test_the_suite_kills_what_it_starts_even_in_other_sessions(tmp_path):
    """Issue 27: torchrun's ranks run in sessions of their own, so killing the launcher (or its process group) on
    a timeout left them running. `launch` kills every process carrying its marker: on a timeout, whose clock can
    start at the fault, and after a command that exits leaving a process behind."""
    from benchmarks.procs import launch

    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(300)'], start_new_session=True); open('{}', 'w').write(str(p.pid)); time.sleep({})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    with pytest.raises(subprocess.TimeoutExpired):
        launch([sys.executable, "-c", spawn.format("a", 300)], tmp_path, env, timeout=5)
    assert time.time() - t0 < 30 and _dead(int((tmp_path / "a").read_text()))
    fired = tmp_path / "fired"
    fired.write_text(f"{time.time() + 3:.3f}\n")  # the fault fires in 3 s: killed 2 s later, not 300 s after launch
    t0 = time.time()
    with pytest.raises(subprocess.TimeoutExpired):
        launch([sys.executable, "-c", spawn.format("b", 300)], tmp_path, env, timeout=300, fired=fired, after_fire=2)
    assert time.time() - t0 < 30 and _dead(int((tmp_path / "b").read_text()))
    res = launch([sys.executable, "-c", spawn.format("c", 0)], tmp_path, env, timeout=60)
    assert res.returncode == 0 and res.orphans == 1 and _dead(int((tmp_path / "c").read_text()))
