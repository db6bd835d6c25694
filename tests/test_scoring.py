"""Scoring a run's checkpoints: file format, resume, torchrun sharding, and the digits mislabel AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.config import load_config
from utils.curvature.scoring import score_run
from utils.errors import UserError
from utils.metrics import auroc
from utils.runs import list_checkpoints, run_dir, score_dir
from utils.train import train

from .conftest import ROOT, run_script, tiny_cfg

KEYS = ("index", "curvature", "trace", "per_epoch", "epochs", "given_label", "true_label", "is_noisy", "is_duplicate",
        "duplicate_of", "dataset", "noise_kind", "noise_rate", "noise_seed", "method", "n_probes", "h", "seed")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """300 digits images, 3 epochs (checkpoints 0..3), 10 % noise."""
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = tiny_cfg(tmp, "score.n_probes=3")
    train(cfg)
    return tmp, cfg


def test_digits_default_run_flags_noisy_labels(tmp_path):
    """The default configs/digits.yaml run (10 % symmetric noise), its first 30 of 60 epochs (the constant-lr
    schedule makes them identical to the full run's), scored at the default settings. The figure is bit-exact for
    one CPU kernel set and thread count only (issue 17): over six settings (1 / 2 threads; AVX-512, AVX2 kernels,
    MKL_CBWR=AVX2) these 30 epochs gave 0.9826-0.9879 and the full 60-epoch `make demo` 0.9779-0.9821 (RESULTS.md,
    "Reproducibility"); the band below is that spread with room for another CPU."""
    cfg = load_config(ROOT / "configs/digits.yaml", [f"paths.pretrained={tmp_path}/p", f"paths.scores={tmp_path}/s",
                                                     f"paths.logs={tmp_path}/l", "run=demo", "train.stats=false",
                                                     "train.epochs=30"])
    assert cfg["train"]["milestones"] == []
    train(cfg)
    out = score_run(cfg)
    z = _load(out)
    assert set(KEYS) <= set(z)
    n = len(z["index"])
    assert z["per_epoch"].shape == (len(z["epochs"]), n) and n == 1347 and z["is_noisy"].sum() == 135
    np.testing.assert_allclose(z["curvature"], z["per_epoch"].mean(0), rtol=1e-6)
    assert list(z["epochs"]) == list(range(0, 31, cfg["score"]["every"]))
    a = auroc(z["curvature"], z["is_noisy"])
    assert 0.975 <= a <= 0.995, a


def test_resume_skips_scored_epochs_and_rejects_other_settings(tiny_run):
    tmp, cfg = tiny_run
    cfg = {**cfg, "paths": {**cfg["paths"], "scores": str(tmp / "resume")}}
    out = score_run(cfg)
    first = _load(out)
    assert list(first["epochs"]) == [0, 1, 2, 3]
    sdir = score_dir(cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in sdir.glob("epoch_*.npz")}
    (sdir / "epoch_002.npz").unlink()
    score_run(cfg)
    again = _load(out)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    for name, t in stamps.items():
        if name != "epoch_002.npz":
            assert (sdir / name).stat().st_mtime_ns == t  # not rescored
    assert not list(sdir.glob(".*tmp"))  # no partial files left behind
    other = {**cfg, "score": {**cfg["score"], "n_probes": 4}}
    with pytest.raises(UserError, match=r"other settings \(score.n_probes: file 3, now 4\)"):
        score_run(other)
    every2 = {**cfg, "score": {**cfg["score"], "every": 2}}
    z = _load(score_run(every2))
    assert list(z["epochs"]) == [0, 2]
    np.testing.assert_array_equal(z["per_epoch"], first["per_epoch"][[0, 2]])


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run 'nothing_here'"):
        score_run(tiny_cfg(tmp_path, "run=nothing_here"))


def test_two_rank_torchrun_gives_identical_files(tiny_run):
    tmp, cfg = tiny_run
    assert len(list_checkpoints(run_dir(cfg))) == 4
    args = [f"paths.pretrained={tmp}/pretrained", "data.subset=300", "train.epochs=3", "train.batch_size=32", "run=tiny",
            "score.n_probes=3", "score.split=both", "score.batch_size=64"]
    score_run(load_config(ROOT / "configs/digits.yaml", [*args, f"paths.scores={tmp}/one"]))  # one process
    two = run_script("score_digits_checkpoint.py", *args, f"paths.scores={tmp}/two", nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _load(tmp / "one/tiny/curvature.npz"), _load(tmp / "two/tiny/curvature.npz")
    assert set(a) == set(b) and {"test_curvature", "test_per_epoch", "test_label", "hv_norm"} <= set(a)
    assert a["test_per_epoch"].shape == (4, 450)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for e in range(4):
        ea, eb = _load(tmp / f"one/tiny/epoch_{e:03d}.npz"), _load(tmp / f"two/tiny/epoch_{e:03d}.npz")
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=f"epoch {e} {k}")


def test_readme_plain_route(tmp_path):
    """Train with noise overrides, then every later stage with run=<name> alone (the README's route)."""
    common = [f"paths.pretrained={tmp_path}/pretrained", f"paths.scores={tmp_path}/curv_scores",
              f"paths.logs={tmp_path}/logs"]
    train_args = ["run=u1", "noise.rate=0.05", "noise.seed=3", "data.subset=300", "train.epochs=4"]
    res = run_script("train_digits.py", *common, *train_args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for script, extra in (("score_digits_checkpoint.py", []), ("analyze_curvature.py", []),
                          ("find_duplicates.py", []),
                          ("fz_memorization.py", ["analysis.fz_models=8", "analysis.fz_epochs=2"]),
                          ("layer_rewinding.py", ["localization.rewind_epochs=[0]"])):
        res = run_script(script, *common, "run=u1", *extra, cwd=tmp_path)
        assert res.returncode == 0, f"{script}: {res.stderr[-2000:]}"
        assert "written:" in res.stdout, f"{script} does not name what it wrote: {res.stdout[-500:]}"
    z = _load(tmp_path / "curv_scores/u1/curvature.npz")
    assert int(z["noise_seed"]) == 3 and z["is_noisy"].sum() == 15  # the run's own labels (5 % of 300, seed 3)
    # another data set's script scores the run's own data and never downloads
    res = run_script("score_cifar10_checkpoint.py", *common, "run=u1", f"paths.scores={tmp_path}/other", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.array_equal(_load(tmp_path / "other/u1/curvature.npz")["curvature"], z["curvature"])
    # a recorded key given again with another value is refused, naming the recorded value
    res = run_script("score_digits_checkpoint.py", *common, "run=u1", "noise.rate=0.1", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "noise.rate=0.1 differs from run 'u1', recorded with noise.rate=0.05" in res.stderr


def test_online_scores_are_bit_identical_to_offline(tmp_path):
    """score.online=true writes, while training, exactly the epoch files the offline scorer writes from the
    checkpoints; the offline scorer then has nothing left to score (a run keeping every 2nd checkpoint is still
    scored every epoch)."""
    on = tiny_cfg(tmp_path, "run=on", "score.online=true", "score.n_probes=2", "score.split=both")
    train(on)
    off = {**on, "paths": {**on["paths"], "scores": str(tmp_path / "offline")}}
    score_run(off)
    for e in range(4):
        a, b = _load(score_dir(on) / f"epoch_{e:03d}.npz"), _load(score_dir(off) / f"epoch_{e:03d}.npz")
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"epoch {e} {k}")
    sparse = tiny_cfg(tmp_path, "run=sparse", "score.online=true", "train.epochs=4", "train.checkpoint_every=2")
    train(sparse)
    assert [e for e, _ in list_checkpoints(run_dir(sparse))] == [0, 2, 4]
    z = _load(score_run(sparse))
    assert list(z["epochs"]) == [0, 1, 2, 3, 4]


def test_corrupt_score_file_is_one_line_error(tiny_run):
    tmp, cfg = tiny_run
    cfg = {**cfg, "paths": {**cfg["paths"], "scores": str(tmp / "corrupt")}}
    out = score_run(cfg)
    out.write_bytes(out.read_bytes()[:200])
    from utils.curvature.analysis import analyze

    with pytest.raises(UserError, match="corrupt or truncated") as e:
        analyze(cfg, progress=False, figures=False)
    assert "\n" not in str(e.value)
