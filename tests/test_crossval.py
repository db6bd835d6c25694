"""analysis.cl_probs=cv: K fold runs of the run's own recipe give out-of-sample probabilities on any data set.

Each sample's row must be the softmax of the fold model that did not train on it (its fold run's record leaves
the sample out), the fold runs and the assembled probabilities are reused, and a folder data set works too."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from utils.curvature.analysis import analyze, cl_probabilities
from utils.curvature.crossval import fold_config, fold_run_name
from utils.errors import UserError
from utils.folds import fold_assignment
from utils.io import load_npz
from utils.runs import open_run, run_dir
from utils.train import train

from .conftest import tiny_cfg, write_image_folder
from .test_analysis import write_scores


def test_fold_assignment_is_stratified_seeded_and_balanced():
    y = np.repeat(np.arange(3), [10, 7, 5])
    f = fold_assignment(y, 3, seed=4)
    assert np.array_equal(f, fold_assignment(y, 3, seed=4)) and not np.array_equal(f, fold_assignment(y, 3, seed=5))
    assert sorted(np.bincount(f)) == [7, 7, 8]  # 22 samples: floor or ceil of 22/3
    for c, n in ((0, 10), (1, 7), (2, 5)):
        counts = np.bincount(f[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n


def _fold_probs(cfg: dict, k: int, folds: int, idx: np.ndarray) -> np.ndarray:
    """Softmax of fold run k's final model on the parent's samples idx (the un-augmented images)."""
    frun = open_run(fold_config(cfg, k, folds, cfg["analysis"]["seed"]))
    model = frun.load_model(-1)
    ds = open_run(cfg).data.train_eval
    with torch.no_grad():
        x = torch.stack([ds[int(i)][1] for i in idx])
        return torch.softmax(model(x).double(), -1).numpy()


def test_recipe_cv_on_tiny_digits_is_out_of_sample_and_cached(tmp_path):
    cfg = tiny_cfg(tmp_path, "analysis.cl_probs=cv", "analysis.cv_folds=3")
    train(cfg)
    run = open_run(cfg)
    t0 = time.time()
    probs, source = cl_probabilities(run, run.stats())
    seconds = time.time() - t0
    print(f"recipe cv, 3 folds of tiny digits (300 images, 3 epochs, MLP): {seconds:.1f} s")
    given = run.record["given_labels"].numpy()
    fold = fold_assignment(given, 3, 0)
    assert probs.shape == (300, 10) and np.allclose(probs.sum(1), 1) and "own recipe" in source
    for k in range(3):
        name = fold_run_name("tiny", k, 3)
        rec = load_npz(tmp_path / "pretrained" / name / "record.npz")
        held = np.flatnonzero(fold == k)
        assert np.intersect1d(rec["parent_index"], held).size == 0  # the fold run never saw its held-out samples
        assert np.array_equal(rec["parent_index"], np.flatnonzero(fold != k))
        assert np.array_equal(rec["given_labels"], given[rec["parent_index"]])
        fr = open_run(fold_config(cfg, k, 3, 0))
        assert fr.cfg["data"]["holdout_fold"] == k and fr.cfg["data"]["folds"] == 3 and fr.epochs == [0, 3]
        # each held-out sample's row is exactly its own fold model's prediction, not another fold's
        np.testing.assert_allclose(probs[held], _fold_probs(cfg, k, 3, held), atol=1e-6)
        assert not np.allclose(probs[held], _fold_probs(cfg, (k + 1) % 3, 3, held), atol=1e-3)
    cache = run.scores / "analysis" / "cl_probs.npz"
    z = load_npz(cache)
    assert np.array_equal(z["fold"], fold) and str(z["identity"]) == run.identity
    stamps = [p.stat().st_mtime_ns for p in (cache, run_dir(fold_config(cfg, 0, 3, 0)) / "resume.pt")]
    again, _ = cl_probabilities(open_run(cfg), run.stats())
    assert np.array_equal(again, probs) and [p.stat().st_mtime_ns for p in
                                            (cache, run_dir(fold_config(cfg, 0, 3, 0)) / "resume.pt")] == stamps
    cache.unlink()  # the fold runs are reused: no retraining, the same probabilities
    again, _ = cl_probabilities(open_run(cfg), run.stats())
    assert np.allclose(again, probs) and run_dir(fold_config(cfg, 0, 3, 0)).joinpath("resume.pt").stat().st_mtime_ns \
        == stamps[1]
    # the analysis table names them
    write_scores(cfg, np.random.default_rng(0).random(300))
    res = analyze(cfg, progress=False, figures=False)
    assert "own recipe" in res["cl_source"] and any(r["score"] == "confident_learning" for r in res["rows"])


def test_recipe_cv_refuses_fold_runs_of_another_version(tmp_path):
    cfg = tiny_cfg(tmp_path, "analysis.cl_probs=cv", "analysis.cv_folds=2", "train.epochs=1")
    train(cfg)
    cl_probabilities(open_run(cfg), {})
    # the run retrained with another recipe under the same name: its old fold runs are named, not silently reused
    import shutil

    shutil.rmtree(run_dir(cfg))
    (tmp_path / "curv_scores/tiny/analysis/cl_probs.npz").unlink()
    cfg2 = tiny_cfg(tmp_path, "analysis.cl_probs=cv", "analysis.cv_folds=2", "train.epochs=1", "train.lr=0.01")
    train(cfg2)
    with pytest.raises(UserError, match=r"fold run tiny_cv0of2 .* another version of run tiny .*train.lr"):
        cl_probabilities(open_run(cfg2), {})
    with pytest.raises(UserError, match="analysis.cv_folds=1"):
        cl_probabilities(open_run(tiny_cfg(tmp_path, "analysis.cl_probs=cv", "analysis.cv_folds=1", "train.epochs=1",
                                           "train.lr=0.01")), {})


def test_recipe_cv_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path / "data" / "rand", n=6, noise=True, size=16)
    cfg = tiny_cfg(tmp_path, "data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=rand", "data.subset=0",
                   "data.image_size=16", "model.name=digits_cnn", "model.width=4", "train.batch_size=8",
                   "train.epochs=2", "noise.rate=0.0", "noise.kind=none", "analysis.cl_probs=cv", "analysis.cv_folds=3")
    train(cfg)
    run = open_run(cfg)
    probs, source = cl_probabilities(run, run.stats())
    assert probs.shape == (18, 3) and np.allclose(probs.sum(1), 1)
    fold = fold_assignment(run.record["given_labels"].numpy(), 3, 0)
    for k in range(3):
        rec = load_npz(tmp_path / "pretrained" / fold_run_name("tiny", k, 3) / "record.npz")
        assert np.array_equal(rec["parent_index"], np.flatnonzero(fold != k)) and len(rec["index"]) == 12
        held = np.flatnonzero(fold == k)
        np.testing.assert_allclose(probs[held], _fold_probs(cfg, k, 3, held), atol=1e-6)
