"""Training: the run record and checkpoint format, statistics, resume determinism, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.runs import list_checkpoints, load_checkpoint, open_run, read_run_record, run_dir
from utils.train import train

from .conftest import ROOT, run_script, write_image_folder


def _weights(path):
    return load_checkpoint(path)["model"]


def test_run_record_checkpoints_stats_and_log(tiny, tmp_path):
    cfg = tiny()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tiny.jsonl").write_text('{"epoch": 9, "note": "a stale log of an earlier run"}\n')
    rdir = train(cfg)
    assert [e for e, _ in list_checkpoints(rdir)] == [0, 1, 2, 3]
    ck = torch.load(rdir / "epoch_003.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["step"] == 3 * 10 and set(ck) == {"format_version", "epoch", "step", "model", "metrics"}
    assert set(torch.load(rdir / "resume.pt", weights_only=True)) >= {"model", "optimizer", "scheduler", "identity"}
    rcfg, r, ident = read_run_record(rdir)
    assert rcfg["run"] == "tiny" and rcfg["noise"]["rate"] == 0.1 and ident
    assert r["dataset"] == "digits" and r["noise_kind"] == "symmetric" and r["noise_seed"] == 0
    assert int(r["is_noisy"].sum()) == 30 and torch.equal(r["is_noisy"], r["given_labels"] != r["true_labels"])
    assert sorted(p.name for p in (rdir / "stats").iterdir()) == ["epoch_001.npz", "epoch_002.npz", "epoch_003.npz"]
    with np.load(rdir / "train_stats.npz", allow_pickle=False) as z:
        assert list(z["epochs"]) == [1, 2, 3] and z["loss"].shape == (3, 300) and z["correct"].dtype == bool
        assert np.array_equal(z["index"], np.arange(300)) and np.array_equal(z["is_noisy"], r["is_noisy"].numpy())
        # the stats are those of the saved model on the un-augmented train set
        run = open_run(cfg)
        from utils.evaluate import evaluate

        ev = evaluate(run.load_model(3), run.data.train_eval, run.dist)
        np.testing.assert_allclose(z["loss"][-1], ev["loss"].numpy(), rtol=1e-5, atol=1e-6)
    lines = [json.loads(s) for s in (tmp_path / "logs" / "tiny.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and {"test_acc", "noisy_acc", "clean_acc", "time"} <= set(lines[0])


def test_checkpoint_every_keeps_resume_exact(tiny):
    rdir = train(tiny("train.epochs=5", "train.checkpoint_every=2", "train.stats_every=2"))
    assert [e for e, _ in list_checkpoints(rdir)] == [0, 2, 4, 5]
    assert sorted(p.stem for p in (rdir / "stats").iterdir()) == ["epoch_002", "epoch_004", "epoch_005"]


def test_stats_false_run_resumes(tiny):
    rdir = train(tiny("train.epochs=1", "train.stats=false"))
    train(tiny("train.epochs=2", "train.stats=false"))
    assert [e for e, _ in list_checkpoints(rdir)] == [0, 1, 2] and not (rdir / "train_stats.npz").exists()


def test_extending_a_finished_run_says_resuming(tiny, tmp_path):
    args = [f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs", "data.subset=100", "run=ext"]
    assert run_script("train_digits.py", *args, "train.epochs=1", cwd=tmp_path).returncode == 0
    res = run_script("train_digits.py", *args, "train.epochs=2", cwd=tmp_path)
    assert res.returncode == 0 and "resuming ext from epoch 1" in res.stdout
    assert [e for e, _ in list_checkpoints(tmp_path / "pre/ext")] == [0, 1, 2]


def _train_cmd(tmp_path, run, epochs, workers):
    return [sys.executable, str(ROOT / "train_cifar10.py"), f"run={run}", f"paths.pretrained={tmp_path}/pre",
            f"paths.logs={tmp_path}/logs", "data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=rand",
            "data.augment=true", f"data.num_workers={workers}", "model.name=digits_cnn", "model.width=8",
            f"train.epochs={epochs}", "train.batch_size=16", "train.lr=0.05", "noise.kind=symmetric", "noise.rate=0.1"]


def test_kill9_and_resume_is_bit_identical_with_workers_and_augmentation(tmp_path):
    write_image_folder(tmp_path / "data" / "rand", n=32, noise=True, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_train_cmd(tmp_path, "full", 4, 2), capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(_train_cmd(tmp_path, "part", 4, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + 200
    while not (tmp_path / "pre/part/epoch_002.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "pre/part/epoch_002.pt").exists() and not (tmp_path / "pre/part/epoch_004.pt").exists()
    res = subprocess.run(_train_cmd(tmp_path, "part", 4, 2), capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _weights(tmp_path / "pre/full/epoch_004.pt"), _weights(tmp_path / "pre/part/epoch_004.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_is_one_line_error(tiny):
    rdir = train(tiny("train.epochs=1"))
    p = rdir / "resume.pt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or truncated") as e:
        train(tiny("train.epochs=2"))
    assert "\n" not in str(e.value)


def test_resume_with_other_config_names_the_keys(tiny):
    train(tiny("train.epochs=1"))
    with pytest.raises(UserError, match=r"\(train.lr: run 0.05, now 0.5\); to continue it, repeat its overrides"):
        train(tiny("train.epochs=2", "train.lr=0.5"))
    with pytest.raises(UserError, match="resume=true"):
        train(tiny("train.epochs=2", "resume=false"))


def test_adamw_optimizer_is_used_and_keeps_sgd_identities(tiny):
    from utils.config import identity_hash

    sgd = tiny("train.epochs=1")
    assert identity_hash(sgd) == identity_hash({**sgd, "train": {k: v for k, v in sgd["train"].items() if k != "optimizer"}})
    rdir = train(tiny("train.epochs=1", "train.optimizer=adamw", "train.lr=0.001", "run=tiny_adamw"))
    state = torch.load(rdir / "resume.pt", weights_only=True)["optimizer"]
    assert "exp_avg_sq" in state["state"][0] and state["param_groups"][0]["lr"] == 0.001  # AdamW's state, its lr
    with pytest.raises(UserError, match="train.optimizer must be sgd or adamw, got 'adam'"):
        train(tiny("train.epochs=1", "train.optimizer=adam", "run=tiny_adam"))


def test_zero_epochs_is_one_line_error(tiny):
    with pytest.raises(UserError, match="train.epochs=0"):
        train(tiny("train.epochs=0"))


def test_step_budget_drives_epochs(tiny, tmp_path):
    rdir = train(tiny("train.epochs=1", "train.max_steps=25"))  # 10 steps per epoch
    ck = load_checkpoint(list_checkpoints(rdir)[-1][1])
    assert ck["epoch"] == 3 and ck["step"] == 25


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny):
    with pytest.raises(UserError, match=r"non-finite loss in epoch \d+ \(by step \d+\)"):
        train(tiny("train.lr=1e12", "train.epochs=5"))
    rdir = run_dir(tiny())
    assert list_checkpoints(rdir) and all(torch.isfinite(v).all() for v in _weights(list_checkpoints(rdir)[-1][1]).values())
    assert not list(rdir.glob(".*.tmp"))


def test_outputs_honour_the_umask(tiny):
    old = os.umask(0o022)
    try:
        rdir = train(tiny("train.epochs=1"))
    finally:
        os.umask(old)
    for p in (rdir / "epoch_001.pt", rdir / "run.json", rdir / "train_stats.npz"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_script_reports_bad_key_in_one_line(tmp_path):
    res = run_script("train_digits.py", "train.epoch=3", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("error: unknown config key 'train.epoch'") and res.stderr.count("\n") == 1
    assert "did you mean train.epochs?" in res.stderr and len(res.stderr) < 400
    assert not (tmp_path / "pretrained").exists()


def test_error_during_a_progress_bar_is_the_last_line(tmp_path):
    res = run_script("train_digits.py", f"paths.pretrained={tmp_path}/p", f"paths.logs={tmp_path}/l", "train.lr=1e12",
                     "train.epochs=5", "data.subset=300", cwd=tmp_path)
    assert res.returncode == 2
    last = res.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("error: non-finite loss"), res.stderr[-500:]


def test_script_reports_missing_data(tmp_path):
    res = run_script("train_cifar10.py", "data.download=false", f"data.root={tmp_path}/nothing", cwd=tmp_path)
    assert res.returncode == 2 and "data.download=true" in res.stderr and res.stderr.count("\n") == 1


def test_damaged_epoch_files_are_named_not_passed_over(tiny):
    """Issue 17, finding 1: a finished run with epoch_004.pt deleted and epoch_003.pt cut to 1,000 bytes used to
    exit 0 on the same command (only resume.pt was read)."""
    rdir = train(tiny("train.epochs=4"))
    assert load_checkpoint(rdir / "resume.pt")["saved_epochs"] == [0, 1, 2, 3, 4]
    train(tiny("train.epochs=4"))  # intact: the same command again is a no-op
    (rdir / "epoch_004.pt").unlink()
    p = rdir / "epoch_003.pt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(UserError) as e:
        train(tiny("train.epochs=4"))
    msg = str(e.value)
    assert "epoch_003.pt corrupt or truncated" in msg and "epoch_004.pt missing" in msg and "\n" not in msg
    assert "epoch_002.pt" not in msg


def test_epoch_file_of_another_epoch_is_refused(tiny):
    rdir = train(tiny("train.epochs=2"))
    (rdir / "epoch_001.pt").write_bytes((rdir / "epoch_002.pt").read_bytes())
    with pytest.raises(UserError, match="epoch_001.pt holds epoch 2, not 1"):
        train(tiny("train.epochs=3"))


def test_kill_between_epoch_file_and_resume_state_resumes(tiny):
    """epoch_XXX.pt is written before resume.pt: a kill between them leaves resume.pt one epoch back."""
    rdir = train(tiny("train.epochs=2"))
    one = torch.load(rdir / "epoch_001.pt", weights_only=True)
    train(tiny("train.epochs=1", "run=tiny_b"))
    b = rdir.parent / "tiny_b"
    (b / "epoch_002.pt").write_bytes((rdir / "epoch_002.pt").read_bytes())  # written, then killed
    train(tiny("train.epochs=2", "run=tiny_b"))
    assert torch.equal(torch.load(b / "epoch_002.pt", weights_only=True)["model"]["fc.weight"],
                       torch.load(rdir / "epoch_002.pt", weights_only=True)["model"]["fc.weight"])
    assert one["epoch"] == 1


def test_newer_format_or_foreign_checkpoint_is_refused(tiny, tmp_path):
    rdir = train(tiny("train.epochs=1"))
    ck = torch.load(rdir / "epoch_001.pt", weights_only=True)
    torch.save({**ck, "format_version": 99}, tmp_path / "newer.pt")
    torch.save({"state_dict": ck["model"]}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="checkpoint format 99, which this toolkit .format 2. does not read"):
        load_checkpoint(tmp_path / "newer.pt")
    with pytest.raises(UserError, match="not a checkpoint of this toolkit"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_truncated_train_stats_is_an_error_and_training_rebuilds_it(tiny, capsys):
    """Issue 17, finding 2: a train_stats.npz cut to 200 bytes went unnoticed (readers stacked stats/)."""
    cfg = tiny("train.epochs=2")
    rdir = train(cfg)
    whole = rdir / "train_stats.npz"
    good = whole.read_bytes()
    whole.write_bytes(good[:200])
    with pytest.raises(UserError, match="train_stats.npz is corrupt or truncated") as e:
        open_run(cfg).stats()
    assert "running the training command" in str(e.value) and "\n" not in str(e.value)
    train(tiny("train.epochs=2"))
    assert "rebuilt from" in capsys.readouterr().out
    assert whole.read_bytes() == good and open_run(cfg).stats()["loss"].shape[0] == 2
