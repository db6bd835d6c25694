"""Feldman–Zhang estimator: exact arithmetic, the batched trainer against separate nn training, and a
planted mislabeled point whose label only its own presence fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.curvature import memorization
from utils.curvature.ensemble import MLPSpec, epoch_order, init_params, train_ensemble
from utils.curvature.memorization import feldman_zhang, fz_from_correct, run_fz, similarity, subset_masks

from .test_analysis import make_run, write_scores


def test_fz_from_correct_hand_case():
    masks = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)
    correct = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 1]], bool)
    r = fz_from_correct(correct, masks)
    # sample 0: in for models 0,1,3 (all correct), out for model 2 (wrong) -> 1 - 0
    # sample 1: in for 0,2,3 (1,1,0) -> 2/3; out for 1 (correct) -> 1
    # sample 2: in for 1,2,3 (all correct) -> 1; out for 0 (wrong) -> 0
    np.testing.assert_allclose(r["mem"], [1.0, 2 / 3 - 1, 1.0])
    np.testing.assert_array_equal(r["n_in"], [3, 3, 3])
    always = fz_from_correct(correct[:, :1], np.ones((4, 1), bool))
    assert np.isnan(always["mem"][0]) and np.isnan(always["p_out"][0]) and always["p_in"][0] == 0.75


def test_subset_masks_exact_size():
    m = subset_masks(50, 7, 0.7, seed=3)
    assert m.shape == (7, 50) and (m.sum(1) == 35).all()
    assert not (m == m[0]).all()  # different subsets
    np.testing.assert_array_equal(m, subset_masks(50, 7, 0.7, seed=3))


def test_epoch_order_visits_each_subset_once():
    masks = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    order, valid = epoch_order(masks, torch.Generator().manual_seed(0))
    assert order.shape == (2, 3)
    assert sorted(order[0].tolist()) == [0, 2, 3] and valid[0].all()
    assert sorted(order[1, :2].tolist()) == [0, 1] and valid[1].tolist() == [True, True, False]


def _reference(x, y, masks, spec, k, seed):
    """Each model trained alone: nn.Linear layers + torch.optim.SGD, with the ensemble's init and batch order."""
    g = torch.Generator().manual_seed(seed)
    p0 = init_params(masks.shape[0], x.shape[1], spec.width, k, g, x.dtype)
    orders = [epoch_order(masks, g) for _ in range(spec.epochs)]
    finals = []
    for m in range(masks.shape[0]):
        net = nn.Sequential(nn.Linear(x.shape[1], spec.width), nn.ReLU(), nn.Linear(spec.width, spec.width), nn.ReLU(),
                            nn.Linear(spec.width, k)).to(x.dtype)
        with torch.no_grad():
            for layer, (w, b) in zip([net[0], net[2], net[4]], zip(p0[0::2], p0[1::2])):
                layer.weight.copy_(w[m].T)
                layer.bias.copy_(b[m, 0])
        opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        for order, valid in orders:
            seq = order[m][valid[m]]
            for s in range(0, len(seq), spec.batch_size):
                idx = seq[s:s + spec.batch_size]
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        finals.append(net)
    return finals


def test_batched_training_equals_separate_models():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=g)
    masks = torch.zeros(3, 23, dtype=torch.bool)
    masks[0, :17] = True
    masks[1, 5:16] = True  # smaller subset: padded steps at the end of every epoch
    masks[2, ::2] = True
    spec = MLPSpec(width=6, epochs=3, lr=0.05, momentum=0.9, batch_size=4, weight_decay=1e-3)
    params = train_ensemble(x, y, masks, spec, 3, seed=7, progress=False)
    ref = _reference(x, y, masks, spec, 3, seed=7)
    for m, net in enumerate(ref):
        for layer, (w, b) in zip([net[0], net[2], net[4]], zip(params[0::2], params[1::2])):
            torch.testing.assert_close(w[m].T, layer.weight.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(b[m, 0], layer.bias.detach(), rtol=1e-10, atol=1e-12)


def test_planted_mislabeled_point_is_memorized():
    """Two clusters; point 0 sits far out on class 0's side but is labelled 1: models that train on it fit it,
    models that do not predict class 0. Its mem is ~1; the clean points' mem is ~0."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 2, generator=g) * 0.4 + torch.tensor([-2.0, 0.0]),
                   torch.randn(30, 2, generator=g) * 0.4 + torch.tensor([2.0, 0.0])])
    y = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    x[0] = torch.tensor([-2.0, 2.5])
    y[0] = 1
    spec = MLPSpec(width=32, epochs=60, lr=0.1, momentum=0.9, batch_size=16)
    res = feldman_zhang(x, y, 2, spec, n_models=24, fraction=0.7, seed=0, chunk=12, progress=False)
    mem = res["mem"]
    assert res["masks"].shape == (24, 60) and (res["n_in"] + res["n_out"] == 24).all()
    assert mem[0] > 0.85 and res["p_in"][0] > 0.85 and res["p_out"][0] < 0.15
    assert np.nanmean(np.abs(mem[1:])) < 0.05 and np.nanmax(mem[1:]) < 0.5


def test_similarity_known_values():
    a = np.array([1.0, 0.0, 1.0, 0.0])
    assert similarity(a, 3 * a)["cosine"] == pytest.approx(1.0) and similarity(a, 3 * a)["pearson"] == pytest.approx(1.0)
    assert similarity(a, 1 - a)["cosine"] == pytest.approx(0.0) and similarity(a, 1 - a)["pearson"] == pytest.approx(-1.0)
    s = similarity(np.array([1.0, 2.0, np.nan, 3.0]), np.array([2.0, 4.0, 1.0, 7.0]))
    assert s["n"] == 3 and s["spearman"] == pytest.approx(1.0)
    assert s["cosine"] == pytest.approx((2 + 8 + 21) / (np.sqrt(14) * np.sqrt(69)))


def test_run_fz_writes_file_compares_and_reuses(tmp_path, monkeypatch):
    cfg = make_run(tmp_path, "analysis.fz_epochs=2", "analysis.fz_width=32")
    res = run_fz(cfg, progress=False)
    assert "no " in res["md"] and res["mem"].shape == (300,)
    from utils.io import load_npz

    z = load_npz(res["path"])
    assert z["masks"].shape == (8, 300) and int(z["n_models"]) == 8 and int(z["width"]) == 32
    assert (z["masks"].sum(1) == 210).all()
    write_scores(cfg, np.where(z["is_noisy"], 1.0, 0.0) + 0.01)

    def boom(*a, **k):
        raise AssertionError("the stored estimate should have been reused")

    monkeypatch.setattr(memorization, "feldman_zhang", boom)
    res2 = run_fz(cfg, progress=False)
    np.testing.assert_array_equal(res2["mem"], z["mem"])
    assert set(res2["similarity"]) >= {"cosine", "pearson", "spearman"}
    assert "| curvature (mean over epochs) |" in res2["md"]
    assert res2["figure"].read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in res2["paths"]} >= {"fz_memorization.npz", "fz_similarity.csv", "fz_similarity.md",
                                               "fz_binned.png"}
    assert (res2["path"].parent / "analysis" / "fz_similarity.csv").is_file()
