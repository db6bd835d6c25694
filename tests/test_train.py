"""Training: checkpoints and their format, train_stats.npz, resume determinism, bad input."""

import json

import numpy as np
import pytest
import torch

from utils.checkpoint import list_checkpoints, load_checkpoint, run_dir
from utils.errors import UserError
from utils.train import load_model, train

from .conftest import run_script


def _weights(path):
    return load_checkpoint(path)["model"]


def test_checkpoints_stats_and_log(tiny, tmp_path):
    cfg = tiny()
    rdir = train(cfg)
    assert [e for e, _ in list_checkpoints(rdir)] == [0, 1, 2, 3]
    ck = torch.load(rdir / "epoch_003.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["step"] == 3 * 10 and ck["config"]["run"] == "tiny"
    r = ck["record"]
    assert r["dataset"] == "digits" and r["noise_kind"] == "symmetric" and r["noise_seed"] == 0
    assert int(r["is_noisy"].sum()) == 30 and torch.equal(r["is_noisy"], r["given_labels"] != r["true_labels"])
    assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "metrics", "identity"}
    with np.load(rdir / "train_stats.npz", allow_pickle=False) as z:
        assert list(z["epochs"]) == [1, 2, 3] and z["loss"].shape == (3, 300) and z["correct"].dtype == bool
        assert np.array_equal(z["index"], np.arange(300)) and np.array_equal(z["is_noisy"], r["is_noisy"].numpy())
        # the stats are those of the saved model on the un-augmented train set
        model = load_model(ck)
        from utils.data import build_data
        from utils.distributed import setup
        from utils.evaluate import evaluate

        ev = evaluate(model, build_data(cfg).train_eval, setup())
        np.testing.assert_allclose(z["loss"][-1], ev["loss"].numpy(), rtol=1e-5, atol=1e-6)
    lines = [json.loads(s) for s in (tmp_path / "logs" / "tiny.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and {"test_acc", "noisy_acc", "clean_acc", "time"} <= set(lines[0])


def test_killed_run_resumes_to_identical_weights(tiny, tmp_path):
    full = train(tiny("run=full"))
    part = train(tiny("run=part"))
    (part / "epoch_003.pt").unlink()  # as if killed during epoch 3
    train(tiny("run=part"))
    a, b = _weights(full / "epoch_003.pt"), _weights(part / "epoch_003.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with np.load(full / "train_stats.npz") as za, np.load(part / "train_stats.npz") as zb:
        assert np.array_equal(za["loss"], zb["loss"]) and list(zb["epochs"]) == [1, 2, 3]


def test_extending_a_finished_run(tiny):
    rdir = train(tiny("train.epochs=2"))
    train(tiny("train.epochs=3"))
    assert [e for e, _ in list_checkpoints(rdir)] == [0, 1, 2, 3]


def test_corrupt_checkpoint_is_one_line_error(tiny):
    rdir = train(tiny("train.epochs=1"))
    p = rdir / "epoch_001.pt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or truncated") as e:
        train(tiny("train.epochs=2"))
    assert "\n" not in str(e.value)


def test_resume_with_other_config_refused(tiny):
    train(tiny("train.epochs=1"))
    with pytest.raises(UserError, match="different config"):
        train(tiny("train.epochs=2", "train.lr=0.5"))
    with pytest.raises(UserError, match="resume=true"):
        train(tiny("train.epochs=2", "resume=false"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny):
    with pytest.raises(UserError, match=r"non-finite loss at epoch \d+ step \d+"):
        train(tiny("train.lr=1e12", "train.epochs=5"))
    rdir = run_dir(tiny())
    epochs = [e for e, _ in list_checkpoints(rdir)]
    assert epochs and all(torch.isfinite(v).all() for v in _weights(list_checkpoints(rdir)[-1][1]).values())
    assert not list(rdir.glob("*.tmp"))


def test_script_reports_bad_key_in_one_line(tmp_path):
    res = run_script("train_digits.py", "train.epoch=3", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("error: unknown config key 'train.epoch'") and res.stderr.count("\n") == 1
    assert not (tmp_path / "pretrained").exists()


def test_script_reports_missing_data(tmp_path):
    res = run_script("train_cifar10.py", "data.download=false", f"data.root={tmp_path}/nothing", cwd=tmp_path)
    assert res.returncode == 2 and "data.download=true" in res.stderr and res.stderr.count("\n") == 1
