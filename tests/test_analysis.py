"""Metrics on hand-made cases with known answers, baselines, Confident Learning, and the analysis on a tiny run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from utils.curvature.analysis import (
    analyze,
    baseline_scores,
    confident_learning,
    curvature_scores,
    learning_time,
    targets_of,
)
from utils.curvature.ensemble import MLPSpec, predict, train_ensemble
from utils.errors import UserError
from utils.folds import membership
from utils.holdout.stage import run_holdout
from utils.io import load_npz, save_npz
from utils.metrics import auprc, auroc
from utils.runs import run_dir, score_dir
from utils.scores.catalogue import SCORES
from utils.train import train

from .conftest import ROOT, run_script, tiny_cfg

RECORD_KEYS = ("index", "given_label", "true_label", "is_noisy", "is_duplicate", "duplicate_of", "dataset", "noise_kind",
               "noise_rate", "noise_seed")


# ----------------------------------------------------------------------------- helpers shared with the other test files
def make_run(tmp, *overrides: str) -> dict:
    """Train a tiny digits run (300 images, 3 epochs) under tmp; returns its config."""
    cfg = tiny_cfg(tmp, "analysis.fz_models=8", "analysis.top_k=8", *overrides)
    train(cfg)
    return cfg


def write_scores(cfg: dict, curvature: np.ndarray, per_epoch: np.ndarray | None = None,
                 epochs: np.ndarray | None = None, hv_norm: np.ndarray | None = None) -> dict:
    """A curvature.npz in the scoring stage's format, with the run's record and the given scores."""
    stats = load_npz(run_dir(cfg) / "train_stats.npz")
    if per_epoch is None:
        per_epoch = np.stack([curvature * s for s in (0.5, 1.0, 1.5)])
    epochs = np.arange(len(per_epoch)) if epochs is None else epochs
    arrays = {k: stats[k] for k in RECORD_KEYS}
    arrays.update(curvature=np.asarray(curvature, np.float32), trace=np.asarray(curvature, np.float32) * 2,
                  per_epoch=np.asarray(per_epoch, np.float32), epochs=np.asarray(epochs, np.int64))
    if hv_norm is not None:
        arrays["hv_norm"] = np.asarray(hv_norm, np.float32)
    save_npz(score_dir(cfg) / "curvature.npz", **arrays)
    return arrays


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- metrics with known answers
def test_auroc_perfect_reversed_and_ties():
    y = np.array([0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auroc(np.ones(4), y) == 0.5
    # positives {0.5, 0.5}, negatives {0.5, 0}: pairs score 1/2 (tie) + 1 + 1/2 + 1 over 4 -> 0.75
    assert auroc(np.array([0.5, 0.0, 0.5, 0.5]), y) == pytest.approx(0.75)
    assert np.isnan(auroc(np.arange(4.0), np.zeros(4, bool))) and np.isnan(auroc(np.arange(4.0), np.ones(4, bool)))


def test_auprc_known_values():
    y = np.array([0, 0, 0, 1], bool)
    assert auprc(np.array([0.0, 0.1, 0.2, 0.9]), y) == 1.0
    assert auprc(np.array([0.9, 0.8, 0.7, 0.1]), y) == pytest.approx(0.25)  # found last: precision 1/4 at recall 1
    assert auprc(np.ones(4), y) == pytest.approx(0.25)  # all tied: the prevalence
    # positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert auprc(np.array([0.9, 0.5, 0.7, 0.1]), np.array([1, 1, 0, 0], bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(auprc(np.arange(3.0), np.zeros(3, bool)))


def test_learning_time_hand_case():
    correct = np.array([[1, 0, 0, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0]], bool)  # (E=4, N=4)
    np.testing.assert_array_equal(learning_time(correct, np.array([1, 2, 3, 4])), [1, 4, 3, 5])
    np.testing.assert_array_equal(learning_time(correct, np.array([5, 10, 15, 20])), [5, 20, 15, 21])


def test_baselines_from_stats():
    loss = np.array([[1.0, 0.1, 2.0], [0.5, 0.1, 3.0]])
    margin = np.array([[0.0, 1.0, -1.0], [1.0, 2.0, -2.0]])
    stats = {"loss": loss, "margin": margin, "correct": margin > 0, "epochs": np.array([1, 2])}
    b = baseline_scores(stats)
    np.testing.assert_allclose(b["loss_final"], [0.5, 0.1, 3.0])
    np.testing.assert_allclose(b["cumulative_loss"], [1.5, 0.2, 5.0])
    np.testing.assert_allclose(b["in_confidence"], (1 - np.exp(-loss)).mean(0))
    np.testing.assert_allclose(b["neg_margin"], [-1.0, -2.0, 2.0])
    np.testing.assert_array_equal(b["learning_time"], [2, 1, 3])
    sub = baseline_scores(stats, cols=np.array([2, 0]))
    np.testing.assert_allclose(sub["cumulative_loss"], [5.0, 1.5])
    assert set(b) <= set(SCORES)


def test_robust_curvature_aggregates():
    pe = np.array([[1.0, 4.0], [100.0, 1.0], [1.0, 16.0]])
    r = curvature_scores({"curvature": pe.mean(0), "per_epoch": pe})
    np.testing.assert_allclose(r["curvature_geomean"], [100 ** (1 / 3), 4.0])
    np.testing.assert_allclose(r["curvature_median"], [1.0, 4.0])
    assert set(r) <= set(SCORES)


def test_confident_learning_flags_the_contradicted_label():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9 + 0.05 * rng.random(60)
    labels[7] = 2  # the model is confident it is class 0
    cl = confident_learning(labels, probs)
    assert cl["flagged"][7] and cl["flagged"].sum() == 1
    assert np.argmax(cl["score"]) == 7 and auroc(cl["score"], np.arange(60) == 7) == 1.0


def test_mlp_ensemble_on_fold_masks_is_out_of_sample():
    """The holdout stage's mlp method: model k trains on every fold but k and predicts fold k."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 2, generator=g) * 0.3 - 2, torch.randn(40, 2, generator=g) * 0.3 + 2])
    y = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    y[3] = 1  # deep inside class 0
    mask = membership(y.numpy(), "folds", 4, seed=0)
    params = train_ensemble(x, y, torch.from_numpy(mask), MLPSpec(width=16, epochs=30, lr=0.1, batch_size=16), 2,
                            progress=False)
    all_probs = torch.softmax(predict(params, x), -1).numpy()  # (4, 80, 2)
    probs = all_probs[(~mask).argmax(0), np.arange(80)]  # each sample from the model that held it out
    assert probs.shape == (80, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert probs[3, 1] < 0.2  # held out, its wrong label gets low probability
    clean = np.ones(80, bool)
    clean[3] = False
    assert (probs[clean, y.numpy()[clean]] > 0.5).mean() > 0.95


# ----------------------------------------------------------------------------- the analysis on a tiny run
@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("noisy"))


def test_analyze_tiny_run_known_aurocs(noisy_run):
    cfg = noisy_run
    rec = load_npz(ROOT / cfg["paths"]["pretrained"] / cfg["run"] / "train_stats.npz")
    noisy = rec["is_noisy"]
    assert 0 < noisy.sum() < len(noisy)
    curv = noisy + 0.01 * np.random.default_rng(0).random(len(noisy))  # a perfect ranking
    per_epoch = np.stack([1.0 - noisy, noisy.astype(float), np.ones(len(noisy))])  # reversed, perfect, tied
    write_scores(cfg, curv, per_epoch, np.array([0, 1, 3]), hv_norm=1.0 - noisy)  # official form: reversed
    res = analyze(cfg, progress=False)
    out = res["out_dir"]
    rows = {r["score"]: r for r in read_csv(out / "auroc.csv") if r["target"] == "mislabeled"}
    assert float(rows["curvature"]["auroc"]) == 1.0 and float(rows["curvature"]["auprc"]) == 1.0
    assert rows["curvature"]["label"] == "curvature (mean over epochs)"
    assert float(rows["curvature_epoch_0"]["auroc"]) == 0.0
    assert float(rows["curvature_epoch_1"]["auroc"]) == 1.0
    assert float(rows["curvature_epoch_3"]["auroc"]) == 0.5
    assert rows["curvature_epoch_3"]["epoch"] == "3"
    assert float(rows["curvature_official"]["auroc"]) == 0.0
    # the baselines in the table are exactly sklearn on train_stats
    b = baseline_scores(rec)
    for name in ("cumulative_loss", "learning_time", "loss_final"):
        assert float(rows[name]["auroc"]) == pytest.approx(auroc(b[name], noisy), abs=1e-6)
    assert "confident_learning" in rows and "in-sample" in res["cl_source"]  # no holdout files yet
    md = (out / "auroc.md").read_text()
    assert "| curvature (mean over epochs) | `curvature` | 1.0000 | 1.0000 |" in md and "Confident Learning" in md
    # with the holdout stage's files, Confident Learning reads them (the analysis never trains)
    run_holdout({**cfg, "holdout": {**cfg["holdout"], "method": "mlp", "models": 3}}, progress=False)
    again = analyze(cfg, progress=False, figures=False)
    assert "out-of-sample probabilities of 3 MLPs" in again["cl_source"]
    for name in ("roc", "curvature_hist", "curvature_epochs", "auroc_vs_epoch", "topk_curvature"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ep = read_csv(out / "auroc_vs_epoch.csv")
    assert {r["score"] for r in ep} == {"curvature", "loss"}


def test_cl_from_best_checkpoint(noisy_run):
    cfg = {**noisy_run, "analysis": {**noisy_run["analysis"], "cl_probs": "best"}}
    res = analyze(cfg, progress=False, figures=False)
    assert "best-test-accuracy checkpoint" in res["cl_source"]


def test_duplicate_injection_auroc_reported(tmp_path):
    cfg = make_run(tmp_path, "noise.duplicates=12")
    rec = load_npz(ROOT / cfg["paths"]["pretrained"] / cfg["run"] / "train_stats.npz")
    dup = rec["is_duplicate"].astype(bool)
    assert dup.sum() == 12 and len(dup) == 312
    write_scores(cfg, dup + 0.001 * np.arange(len(dup)) / len(dup))
    res = analyze(cfg, progress=False, figures=False)
    rows = [r for r in res["rows"] if r["score"] == "curvature"]
    by = {r["target"]: r for r in rows}
    assert by["duplicate"]["auroc"] == 1.0 and by["duplicate"]["n_pos"] == 12
    pair = targets_of({k: rec[k] for k in RECORD_KEYS})["duplicate_pair"]
    assert pair.sum() == 24 and pair[rec["duplicate_of"][dup]].all()
    assert by["mislabeled"]["n_pos"] == int(rec["is_noisy"].sum()) > 12  # noise + the copies
    assert "injected duplicate (is_duplicate): 12 positives" in res["md"]


def test_duplicates_only_run_has_no_separate_mislabel_target():
    rec = {"is_noisy": np.array([0, 1, 0, 1], bool), "is_duplicate": np.array([0, 1, 0, 1], bool),
           "index": np.arange(4), "duplicate_of": np.array([-1, 0, -1, 2])}
    t = targets_of(rec)
    assert list(t) == ["duplicate", "duplicate_pair"]
    np.testing.assert_array_equal(t["duplicate_pair"], [1, 1, 1, 1])


def test_clean_run_and_missing_scores_are_user_errors(tmp_path, noisy_run):
    cfg = {**noisy_run, "paths": {**noisy_run["paths"], "scores": str(tmp_path / "none")}}
    with pytest.raises(UserError, match="score the run first"):
        analyze(cfg)
    scores = write_scores(cfg, np.ones(300))
    scores["is_noisy"][:] = False
    save_npz(score_dir(cfg) / "curvature.npz", **scores)
    with pytest.raises(UserError, match="nothing to detect"):
        analyze(cfg)


def test_cli_prints_table(noisy_run):
    c = noisy_run
    p = run_script("analyze_curvature.py", f"run={c['run']}", f"paths.pretrained={c['paths']['pretrained']}",
                   f"paths.scores={c['paths']['scores']}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| curvature (mean over epochs) |" in p.stdout and "auroc.md" in p.stdout and "written:" in p.stdout


def test_roc_legend_lists_every_score_of_the_table(noisy_run, monkeypatch):
    from utils.curvature import plots

    seen = {}
    real = plots.roc_curves

    def spy(scores, target, path, title="", main=""):
        seen[path.name] = list(scores)
        return real(scores, target, path, title, main)

    monkeypatch.setattr(plots, "roc_curves", spy)
    res = analyze(noisy_run, progress=False)
    table = [r["label"] for r in res["rows"] if r["target"] == "mislabeled" and r["group"] == "score"]
    assert seen["roc.png"] == table


def test_regime_curve_running_means(noisy_run):
    """The last regime row is the run's final AUROCs; earlier rows use only the epochs up to them."""
    from utils.curvature.regime import write_regime

    cfg = noisy_run
    rec = load_npz(run_dir(cfg) / "train_stats.npz")
    noisy = rec["is_noisy"]
    per_epoch = np.stack([1.0 - noisy, 3.0 * noisy, np.ones(len(noisy))])  # reversed, then perfect, then flat
    write_scores(cfg, per_epoch.mean(0), per_epoch, np.array([0, 1, 3]))
    rows, paths = write_regime(cfg)
    assert [r["epoch"] for r in rows] == [0, 1, 3]
    assert rows[0]["curvature"] == 0.0 and rows[1]["curvature"] == 1.0  # mean of epochs 0..1 is 0.5 + noisy
    assert rows[-1]["cumulative_loss"] == pytest.approx(auroc(rec["loss"].sum(0), noisy))
    assert "confident_learning" in rows[-1] and "confident_learning" not in rows[0]  # no CL for the initialisation
    assert rows[-1]["noisy_acc"] == pytest.approx(float(rec["correct"][-1][noisy].mean()))
    assert {p.name for p in paths} == {"regime.csv", "regime.md", "regime.png"}
