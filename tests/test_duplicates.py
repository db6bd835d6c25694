"""The conflicting-duplicate finder on planted exact and near duplicates, and on a run with injected ones."""

from __future__ import annotations

import numpy as np
import pytest

from utils.curvature.duplicates import feature_neighbors, find_conflicting_pairs, find_duplicates, pixel_neighbors

from .test_analysis import make_run, read_csv, write_scores


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    x = rng.random((30, 16))  # distinct random images: RMS distance ~0.4
    labels = rng.integers(0, 3, 30)
    x[20] = x[3]  # exact duplicate, other label
    labels[20] = (labels[3] + 1) % 3
    x[21] = np.clip(x[5] + rng.normal(0, 0.01, 16), 0, 1)  # near duplicate, other label
    labels[21] = (labels[5] + 2) % 3
    x[22] = x[7]  # exact duplicate, same label: not a conflict
    labels[22] = labels[7]
    x[23] = x[9]  # conflicting exact duplicate, but neither side is searched
    labels[23] = (labels[9] + 1) % 3
    return x, labels


def test_planted_exact_and_near_duplicates(planted):
    x, labels = planted
    rows = find_conflicting_pairs(x, labels, np.array([20, 21, 22, 3, 0]), pixel_rms=0.05)
    pairs = [(r["i"], r["j"]) for r in rows]
    assert pairs == [(20, 3), (21, 5)]  # (3, 20) is the same pair: listed once
    assert rows[0]["pixel_rms"] == 0.0 and 0 < rows[1]["pixel_rms"] < 0.02
    assert rows[0]["given_i"] == labels[20] and rows[0]["given_j"] == labels[3]
    assert all(r["found_by"] == "pixel" for r in rows) and np.isnan(rows[0]["feature_cos"])
    # a tight threshold keeps only the exact copy
    assert [(r["i"], r["j"]) for r in find_conflicting_pairs(x, labels, np.array([20, 21]), pixel_rms=1e-9)] == [(20, 3)]


def test_feature_space_catches_what_pixels_miss(planted):
    x, labels = planted
    feats = np.random.default_rng(1).normal(size=(30, 8))
    x[24] = 1 - x[11]  # far in pixels ...
    feats[24] = 3 * feats[11]  # ... same direction in feature space
    labels[24] = (labels[11] + 1) % 3
    rows = find_conflicting_pairs(x, labels, np.array([24, 20]), features=feats, pixel_rms=0.05, feature_cos=0.999)
    by = {(r["i"], r["j"]): r for r in rows}
    assert set(by) == {(24, 11), (20, 3)}
    assert by[(24, 11)]["found_by"] == "feature" and by[(24, 11)]["feature_cos"] == pytest.approx(1.0)
    assert by[(24, 11)]["pixel_rms"] > 0.2
    assert by[(20, 3)]["found_by"] == "pixel"  # random features: the exact copy is not near in this feature space


def test_neighbors_exclude_self_and_sort():
    import torch

    px = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.1], [1.0, 1.0]], dtype=torch.float64)
    d, i = pixel_neighbors(px, np.array([0]), k=2)
    np.testing.assert_array_equal(i, [[2, 1]])
    np.testing.assert_allclose(d, [[0.1 / np.sqrt(2), 1 / np.sqrt(2)]])
    s, j = feature_neighbors(torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]]), np.array([0, 2]), k=1)
    np.testing.assert_array_equal(j, [[1], [1]])


def test_finder_on_injected_duplicates(tmp_path):
    cfg = make_run(tmp_path, "noise.kind=none", "noise.rate=0.0", "noise.duplicates=10", "analysis.dup_top=20",
                   "analysis.dup_feature_cos=0.9999")  # a 3-epoch MLP maps many same-digit images to cos > 0.995
    from utils.io import load_npz
    from utils.runs import run_dir

    rec = load_npz(run_dir(cfg) / "train_stats.npz")
    dup = rec["is_duplicate"].astype(bool)
    curv = np.zeros(len(dup))
    curv[dup] = 10 + np.arange(10)  # the copies are the top-10 curvature samples
    write_scores(cfg, curv)
    res = find_duplicates(cfg)
    assert res["injected"] == 10 and res["injected_found"] == 10 and res["precision"] == 1.0
    rows = read_csv(res["out_dir"] / "duplicate_pairs.csv")
    found = {(int(r["i"]), int(r["j"])) for r in rows}
    assert {(int(i), int(rec["duplicate_of"][i])) for i in np.flatnonzero(dup)} <= found
    assert all(float(r["pixel_rms"]) == 0.0 for r in rows if r["same_source"] == "True")
    assert (res["out_dir"] / "duplicate_pairs.png").read_bytes()[:4] == b"\x89PNG"
    assert "found 10 of them" in (res["out_dir"] / "duplicates.md").read_text()


def test_pair_figure_without_pairs(tmp_path):
    from utils.curvature import plots

    path = plots.duplicate_pairs(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), [], tmp_path / "none.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
