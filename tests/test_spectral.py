"""MP fit, Tracy-Widom margin, ESM metric, the one classification rule (`classify`), the summary rows and the
ROC helper they use (utils.metrics): against Wishart matrices with known laws, spiked Wishart (BBP), synthetic
clean-like and random-label-like spectra, the spectra figure's MP curve, and hand-computed ROC cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from utils.metrics import roc, threshold_accuracy
from utils.spectral.hessian import lanczos, slq
from utils.spectral.rmt import (
    PARTICIPATION_C,
    classify,
    esm_metric,
    fit_mp,
    mp_bin_mass,
    mp_cdf,
    mp_density,
    mp_edges,
    summarise_esm,
    tw1_cdf,
    tw1_quantile,
)

torch.set_num_threads(1)


def test_tracy_widom_table_values():
    # GOE Tracy-Widom: quantiles and mean from the literature (Tracy & Widom 1996; Bornemann 2010)
    assert tw1_quantile(0.95) == pytest.approx(0.9793, abs=2e-4)
    assert tw1_quantile(0.99) == pytest.approx(2.0234, abs=2e-4)
    assert tw1_quantile(0.90) == pytest.approx(0.4501, abs=2e-4)
    s = np.linspace(-8, 8, 161)
    cdf = np.array([tw1_cdf(v) for v in s])
    assert np.all(np.diff(cdf) >= -1e-12) and cdf[0] < 1e-8 and cdf[-1] > 1 - 1e-8
    mean = s[-1] - np.trapezoid(cdf, s)  # E[X] = b - int F for X in [a, b]
    assert mean == pytest.approx(-1.2065, abs=2e-3)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 3.0])
def test_mp_density_mass_and_moments(gamma):
    s2 = 1.7
    lo, hi = mp_edges(s2, gamma)
    def integral(power):
        return quad(lambda x: x ** power * mp_density(np.array([x]), s2, gamma)[0], lo, hi, limit=200)[0]

    assert integral(0) == pytest.approx(min(1.0, 1.0 / gamma), rel=1e-6)
    # the atom at 0 contributes nothing to the moments: E = s2, E[l^2] = s2^2 (1 + gamma)
    assert integral(1) == pytest.approx(s2, rel=1e-6)
    assert integral(2) == pytest.approx(s2 ** 2 * (1 + gamma), rel=1e-6)


def _wishart(dim: int, gamma: float, sigma2: float, seed: int, spike: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(round(dim / gamma))
    x = torch.randn(n, dim, dtype=torch.float64, generator=g) * math.sqrt(sigma2)
    if spike:
        x[:, 0] *= math.sqrt(1 + spike)  # population covariance sigma2 (I + spike e1 e1^T)
    return x.T @ x / n


def _esm_of(w: torch.Tensor, seed: int, k: int = 8, probes: int = 6, iters: int = 40, num_classes: int | None = None):
    g = torch.Generator().manual_seed(seed + 1000)
    mv = lambda v: w @ v  # noqa: E731
    vals, vecs, _ = lanczos(mv, w.shape[0], k, max_iter=iters, tol=0.0, dtype=torch.float64, generator=g,
                            return_vectors=True)
    q = slq(mv, w.shape[0], n_probes=probes, n_iter=iters, dtype=torch.float64, generator=g, deflate=vecs)
    return vals.numpy(), esm_metric(vals.numpy(), q.nodes, q.weights, q.dim, quantile=0.99, num_classes=num_classes)


@pytest.mark.parametrize("gamma", [0.25, 1.0, 4.0])
def test_mp_fit_edge_within_two_percent(gamma):
    sigma2 = 0.7
    _, hi = mp_edges(sigma2, gamma)
    for seed in range(2):
        _, res = _esm_of(_wishart(600, gamma, sigma2, seed), seed, probes=10)
        assert res.fit.lam_plus == pytest.approx(hi, rel=0.02)
        assert res.fit.sigma2 == pytest.approx(sigma2, rel=0.05)
        assert res.fit.gamma == pytest.approx(gamma, rel=0.15)


def test_mp_fit_ignores_the_outliers():
    # the scaffold's bug: sigma2 from the top-k Ritz values. Our fit must not move when the top-k grow.
    rng = np.random.default_rng(0)
    nodes = np.sort(rng.uniform(0.0, 2.0, (4, 50)), axis=1)
    weights = np.full((4, 50), 1 / 50)
    a = fit_mp(nodes, weights, 10_000, top=np.array([50.0, 40.0, 30.0]))
    b = fit_mp(nodes, weights, 10_000, top=np.array([5000.0, 4000.0, 3000.0]))
    assert a.lam_plus == pytest.approx(b.lam_plus, rel=1e-12)
    # the bulk's own largest values re-enter: with the top values inside the bulk the fit equals the plain one
    c = fit_mp(nodes, weights, 10_000, top=np.array([1.0, 0.5]))
    assert c.sigma2 == pytest.approx((10_000 - 2) / 10_000 * float(nodes.mean()) + 1.5 / 10_000, rel=1e-9)


def test_esm_is_zero_on_pure_wishart():
    # the TW-margined edge: on a pure MP spectrum no eigenvalue exceeds it with probability >= 0.99
    zero = []
    for seed in range(20):
        gamma = (0.5, 1.0, 2.0)[seed % 3]
        _, res = _esm_of(_wishart(400, gamma, 1.0, seed), seed, k=6, probes=6, iters=30)
        zero.append(res.esm == 0.0 and res.n_outliers == 0)
    assert np.mean(zero) >= 0.95


def test_spike_above_bbp_detected_at_predicted_location():
    gamma, sigma2 = 0.5, 1.0
    spike = 4 * math.sqrt(gamma)  # BBP: detectable iff spike > sqrt(gamma)
    predicted = sigma2 * (1 + spike) * (1 + gamma / spike)
    w = _wishart(800, gamma, sigma2, seed=3, spike=spike)
    vals, res = _esm_of(w, 3)
    assert res.n_outliers == 1
    assert vals[0] == pytest.approx(predicted, rel=0.03)
    assert vals[0] > res.fit.edge > vals[1]
    assert res.esm > 0 and res.esm == pytest.approx(vals[0] / res.trace_pos, rel=1e-9)
    # below the transition: no outlier
    weak = _wishart(800, gamma, sigma2, seed=3, spike=0.3 * math.sqrt(gamma))
    _, res_weak = _esm_of(weak, 3)
    assert res_weak.n_outliers == 0 and res_weak.esm == 0.0


def test_roc_helper_known_cases():
    pos = np.array([0, 0, 1, 1], bool)
    assert roc(np.array([0.1, 0.4, 0.35, 0.8]), pos)[3] == pytest.approx(0.75)
    assert roc(np.array([0.1, 0.2, 0.3, 0.4]), pos)[3] == 1.0
    assert roc(np.array([0.4, 0.3, 0.2, 0.1]), pos)[3] == 0.0
    assert roc(np.array([0.5, 0.5, 0.5, 0.5]), pos)[3] == 0.5
    assert math.isnan(roc(np.array([0.1, 0.2]), np.array([True, True]))[3])
    fpr, tpr, _, _ = roc(np.array([0.1, 0.4, 0.35, 0.8]), pos)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert threshold_accuracy(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.3, 0.3, 0.3, 0.3]), pos) == 0.75


def test_summary_rows():
    def row(c, e, part, said):
        return {"grid": "g", "dataset": "d", "model": "m", "step": 5, "condition": c, "esm": e, "top10_share": e,
                "participation": part, "threshold": 13.0, "is_clean": said}

    vals = [row("clean", 0.9, 10.0, True), row("clean", 0.8, 12.0, True), row("random", 0.3, 20.0, False),
            row("random", 0.6, 12.5, True)]
    (r,) = summarise_esm(vals)
    assert r["auc_esm"] == 1.0 and r["auc_participation"] == 1.0 and r["threshold"] == 13.0
    assert r["threshold_accuracy"] == 0.75  # the rule's own answers: the second random run is called clean
    assert r["n_clean"] == 2 and r["esm_clean_mean"] == pytest.approx(0.85)
    assert not {"balance_accuracy", "balance_threshold", "threshold_median"} & set(r)  # one threshold only
    # a run the rule cannot classify (too few eigenvalues) counts as wrong; none classifiable -> NaN
    (r,) = summarise_esm([vals[0], {**vals[2], "is_clean": None}])
    assert r["threshold_accuracy"] == 0.5
    (r,) = summarise_esm([{**v, "is_clean": None, "participation": float("nan")} for v in vals])
    assert math.isnan(r["threshold_accuracy"]) and math.isnan(r["auc_participation"])


# ----------------------------------------------------------------------------- the classification rule
# Orientation: clean = positive (is_clean True). Three verdicts: "clean" (the class-outlier structure, m <= 1.3 K),
# "memorizing" (outliers above the MP edge but no K-dominant structure: sample-by-sample fitting) and "no signal"
# (nothing above the margined MP edge: a Hessian indistinguishable from the MP null, e.g. an untrained network --
# not memorizing, and not called clean either).
K = 10
# the top-10 eigenvalue profiles (lambda_i / lambda_1) of the digits MLP at step 500, seed 0 (/tmp grid of issue 13)
CLEAN_PROFILE = np.array([1.0, 0.8, 0.67, 0.49, 0.4, 0.37, 0.28, 0.21, 0.15, 0.11])
RANDOM_PROFILE = np.array([1.0, 0.64, 0.62, 0.53, 0.48, 0.45, 0.38, 0.33, 0.28, 0.27, 0.22, 0.2, 0.19, 0.18, 0.17,
                           0.16, 0.15, 0.15, 0.14, 0.14, 0.13, 0.13, 0.12, 0.12, 0.12, 0.11, 0.11, 0.1, 0.1, 0.1])


def _with_outliers(profile: np.ndarray, top_share: float, seed: int = 0, dim: int = 1500):
    """A Wishart bulk (gamma 2, sigma2 1: tr = dim) plus spikes shaped like `profile`, scaled so that the spikes
    hold `top_share` of the trace; its top-3K eigenvalues by Lanczos, the deflated bulk by SLQ, and the ESM result
    with K = 10 classes."""
    w = _wishart(dim, 2.0, 1.0, seed)
    if len(profile):
        scale = top_share * dim / ((1 - top_share) * profile.sum())
        g = torch.Generator().manual_seed(seed + 7)
        q, _ = torch.linalg.qr(torch.randn(dim, len(profile), dtype=torch.float64, generator=g))
        w = w + q @ torch.diag(torch.as_tensor(scale * profile)) @ q.T
    return _esm_of(w, seed, k=3 * K, probes=4, iters=90, num_classes=K)


def test_rule_calls_a_pure_mp_bulk_not_memorizing():
    vals, res = _with_outliers(np.array([]), 0.0)
    assert res.n_outliers == 0 and res.esm == 0.0  # the MP null: nothing above the edge
    assert res.rule.participation > 2.5 * K  # a flat top: ~3K directions share the curvature
    assert res.rule.verdict == "no signal" and res.rule.is_clean is False  # not memorizing, not clean
    assert res.rule == classify(vals, K, 0)
    assert classify(vals, K).verdict == "memorizing"  # without the MP edge the flat top alone reads as memorizing


def test_rule_calls_the_clean_runs_outlier_structure_clean():
    # the clean runs' outlier share at step 500 (top-10 share ~0.53 of tr H+) and their top-10 profile
    vals, res = _with_outliers(CLEAN_PROFILE, 0.53)
    assert res.top10_share == pytest.approx(0.53, abs=0.02) and res.esm > 0.5
    assert res.rule.participation < K and res.rule.is_clean is True and res.rule.ratio < 1
    assert res.rule.verdict == "clean"


def test_rule_calls_a_random_label_like_spectrum_memorizing():
    # the random-label runs' step-500 profile: 30 comparable outliers holding ~0.3 of tr H+ (top-10 share ~0.18)
    vals, res = _with_outliers(RANDOM_PROFILE, 0.3)
    assert res.top10_share == pytest.approx(0.18, abs=0.03) and res.n_outliers >= 25
    assert res.rule.participation > 1.5 * K and res.rule.is_clean is False and res.rule.verdict == "memorizing"
    # the same clean profile, for K = 10, is clean; the rule scales with K and needs 3K eigenvalues
    clean_vals, _ = _with_outliers(CLEAN_PROFILE, 0.53)
    assert classify(clean_vals, K).is_clean is True
    assert classify(clean_vals, 100).is_clean is None and classify(clean_vals, None).is_clean is None
    assert classify(clean_vals[: 3 * 5], 5).threshold == pytest.approx(PARTICIPATION_C * 5)


def test_the_constant_is_the_one_fixed_on_digits():
    # fixed on the digits grids before any CIFAR-10 dev run (docs/spectral.md); changing it needs a new grid
    assert PARTICIPATION_C == 1.3


def _wishart_spectrum(dim: int, n_rows: int, k: int, seed: int) -> tuple[np.ndarray, dict]:
    """All eigenvalues of W = X^T X / N (X: N x dim, iid N(0, 1)) via the N x N Gram matrix, and the spectrum
    dict a capture would hold if Lanczos found the top k exactly and SLQ resolved the rest (one probe whose
    nodes are the remaining eigenvalues, zero included, with their multiplicities as weights)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim))
    nonzero = np.sort(np.linalg.eigvalsh(x @ x.T / n_rows))[::-1]
    nodes = np.concatenate([[0.0], nonzero[k:]])
    weights = np.concatenate([[dim - n_rows], np.ones(n_rows - k)]) / (dim - k)
    return nonzero, {"eigenvalues": nonzero[:k], "slq_nodes": nodes[None], "slq_weights": weights[None],
                     "bulk_dim": dim - k, "run": "wishart", "step": 0}


def _drawn_bin_masses(ax) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin edges, bulk mass per bin, MP mass per bin) as drawn in a `plot_spectrum` panel, whichever artist
    draws the MP curve (a step patch, or a line through the bin centres)."""
    (bulk,) = [p for p in ax.patches if p.get_label().startswith("bulk")]
    values, edges, _ = bulk.get_data()
    mp = [a for a in [*ax.patches, *ax.lines] if a.get_label().startswith("MP fit")][0]
    if hasattr(mp, "get_data") and len(mp.get_data()) == 3:
        mp_mass = mp.get_data()[0]
    else:
        xc, y = mp.get_data()
        mp_mass = np.interp(np.sqrt(edges[1:] * edges[:-1]), xc, y)
    floor = lambda v: np.where(np.asarray(v) <= 1.01e-9, 0.0, v)  # noqa: E731  the plot floors at 1e-9 (log axis)
    return np.asarray(edges), floor(values), floor(mp_mass)


@pytest.mark.parametrize(("dim", "n_rows"), [(20_000, 400), (50_000, 100)])  # gamma 50 and 500: narrow bands
def test_plotted_mp_mass_per_log_bin_matches_the_eigenvalue_histogram(dim, n_rows):
    """The spectra figure's MP curve is the fitted law's mass in the figure's own log-bins: on a Wishart matrix
    (where the moment fit is right) it must match the histogram of the eigenvalues over the same bins. A density
    evaluated at the bin centres misses bands narrower than a bin (gamma 500) and is 15-20 % off at the edges."""
    from utils.io import plt
    from utils.spectral.plots import plot_spectrum

    gamma = dim / n_rows
    nonzero, s = _wishart_spectrum(dim, n_rows, k=5, seed=1)
    fig, ax = plt().subplots()
    plot_spectrum(ax, s)
    edges, bulk, mp = _drawn_bin_masses(ax)
    plt().close(fig)
    res = esm_metric(s["eigenvalues"], s["slq_nodes"], s["slq_weights"], s["bulk_dim"])
    assert res.fit.gamma == pytest.approx(gamma, rel=0.05) and res.n_outliers == 0
    # the drawn bulk is the SLQ mass of the deflated bulk per bin (the share of its dim - k eigenvalues)
    assert np.allclose(bulk, np.histogram(nonzero[5:], bins=edges)[0] / (dim - 5))
    # the drawn MP curve: the continuous part's mass 1/gamma, spread over the bins as the eigenvalues are
    hist = np.histogram(nonzero, bins=edges)[0] / dim
    assert mp.sum() == pytest.approx(1 / gamma, rel=0.02)
    assert np.abs(mp - hist).sum() <= 0.1 / gamma


def test_mp_cdf_and_bin_mass():
    for gamma in (0.3, 2.0, 48.0, 1200.0):
        lo, hi = mp_edges(1.3, gamma)
        x = lo + (hi - lo) * np.array([0.05, 0.4, 0.8])
        exact = [quad(lambda t, g=gamma: mp_density(np.array([t]), 1.3, g)[0], lo, v, limit=200)[0] for v in x]
        assert np.allclose(mp_cdf(x, 1.3, gamma, atom=False), exact, atol=1e-6 * min(1, 1 / gamma))
        assert mp_cdf(np.array([-1e-9]), 1.3, gamma)[0] == 0.0
        assert mp_cdf(np.array([0.0, 2 * hi]), 1.3, gamma) == pytest.approx([max(0.0, 1 - 1 / gamma), 1.0])
        # a band narrower than one bin keeps its whole mass
        assert mp_bin_mass(np.array([lo / 2, hi * 2]), 1.3, gamma)[0] == pytest.approx(min(1.0, 1 / gamma))


def test_mp_fit_reproduces_the_bulk_moments():
    """The fitted law's first two moments are the quadrature's (positive part), to rounding."""
    rng = np.random.default_rng(4)
    nodes = np.sort(rng.lognormal(-5, 2, (3, 40)), axis=1) * rng.choice([1, 1, 1, -0.1], (3, 40))
    weights = rng.dirichlet(np.ones(40), 3)
    fit = fit_mp(nodes, weights, 5000)
    pos = np.clip(nodes, 0, None)
    assert fit.sigma2 == pytest.approx((weights * pos).sum(1).mean(), rel=1e-12)
    assert fit.sigma2 ** 2 * (1 + fit.gamma) == pytest.approx((weights * pos ** 2).sum(1).mean(), rel=1e-12)
