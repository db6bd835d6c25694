"""Faults survived (issue 17): the seconds-long part of benchmarks/faults.py, which runs the whole suite."""

import os
import socket
import subprocess
import sys

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
    gone = reap_temporaries(tmp_path)
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
