"""Random-matrix reading of a Hessian spectrum: Marchenko-Pastur (MP) fit of the bulk, Tracy-Widom
(TW) margin of its edge, the early-spectral-memorization (ESM) metric, the one clean / memorizing
rule (`classify`) and the per-(grid, step) summary (AUROC from `utils.metrics`).

Conventions. The MP law MP(sigma2, gamma) is the limiting spectrum of W = X^T X / N for an N x D
matrix X of iid entries of variance sigma2, gamma = D / N. For gamma > 1 it has an atom 1 - 1/gamma
at 0; in all cases its first two moments are E[lambda] = sigma2 and E[lambda^2] = sigma2^2 (1 + gamma),
and its support edge is lambda_+ = sigma2 (1 + sqrt(gamma))^2.

ESM of one spectrum (see `esm_from_spectrum`):
    ESM = (sum of the Hessian eigenvalues above the margined MP edge) / tr(H_+),
where H_+ is the positive part of H (its negative eigenvalues, which the MP model of the
Gauss-Newton-like component does not describe, are left out of numerator and denominator alike).

ESM ranks runs (clean above random within a step); it is not what classifies them: clean runs early in
training and random-label runs that have interpolated reach the same ESM (0.54-0.64 on digits). The rule
that classifies is `classify`: the number of directions the top of the curvature is spread over (the
participation count of the top 3K eigenvalues) against `PARTICIPATION_C` * K, K the number of classes.
Orientation: clean = positive (is_clean True); memorizing = not clean.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

from ..metrics import auroc

# ----------------------------------------------------------------------------- MP law


def mp_edges(sigma2: float, gamma: float) -> tuple[float, float]:
    """(lambda_-, lambda_+) of MP(sigma2, gamma)."""
    r = math.sqrt(gamma)
    return sigma2 * (1 - r) ** 2, sigma2 * (1 + r) ** 2


def mp_density(x: np.ndarray, sigma2: float, gamma: float) -> np.ndarray:
    """Density of the continuous part of MP(sigma2, gamma) at x (its integral is min(1, 1/gamma))."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = mp_edges(sigma2, gamma)
    out = np.zeros_like(x)
    inside = (x > lo) & (x < hi) & (x > 0)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * math.pi * sigma2 * gamma * xi)
    return out


def mp_cdf(x: np.ndarray, sigma2: float, gamma: float, atom: bool = True, n_nodes: int = 2049) -> np.ndarray:
    """P(lambda <= x) under MP(sigma2, gamma), with its atom 1 - 1/gamma at 0 (gamma > 1) unless `atom` is False
    (then the continuous part's mass alone, which tends to min(1, 1/gamma)). Exact up to ~1e-7: the density is
    integrated in the angle t, x = (l- + l+)/2 - (l+ - l-)/2 cos t, where the square-root edges become smooth.
    What a histogram must be compared with: `np.diff(mp_cdf(edges, ...))` is the law's mass in each bin, also
    when its support is narrower than one bin (a density evaluated at bin centres misses such a band)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = mp_edges(sigma2, gamma)
    t = np.linspace(0.0, math.pi, n_nodes)
    xt = (lo + hi) / 2 - (hi - lo) / 2 * np.cos(t)
    f = ((hi - lo) / 2) ** 2 * np.sin(t) ** 2 / (2 * math.pi * sigma2 * gamma * np.maximum(xt, 1e-300))
    cum = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(t))])
    cum *= min(1.0, 1.0 / gamma) / cum[-1]  # trapezoid error of a smooth periodic integrand: tiny; renormalise
    out = np.interp(x, xt, cum, left=0.0, right=cum[-1])
    if atom and gamma > 1:
        out = out + (1 - 1 / gamma) * (x >= 0)
    return out


def mp_bin_mass(edges: np.ndarray, sigma2: float, gamma: float) -> np.ndarray:
    """Mass of the continuous part of MP(sigma2, gamma) in each bin [edges[i], edges[i+1])."""
    return np.diff(mp_cdf(edges, sigma2, gamma, atom=False))


def mp_from_moments(m1: float, m2: float) -> tuple[float, float]:
    """(sigma2, gamma) of the MP law with first moments m1 = E[lambda], m2 = E[lambda^2]."""
    if not (m1 > 0 and m2 > 0):
        raise ValueError(f"MP moments must be positive, got m1={m1}, m2={m2}")
    return m1, max(m2 / (m1 * m1) - 1.0, 1e-12)


# ----------------------------------------------------------------------------- Tracy-Widom (beta = 1)
def tw1_cdf(s: float, n_nodes: int = 56) -> float:
    """F_1(s), the GOE Tracy-Widom distribution, as the Fredholm determinant det(I - K) on
    L^2(s, inf) with K(x, y) = Ai((x + y) / 2) / 2 (Ferrari-Spohn), discretised by Gauss-Legendre
    quadrature on (s, max(s, 0) + 16) where Ai(16) ~ 1e-19 (Bornemann's method; ~1e-12 for s >= -8)."""
    t, w = np.polynomial.legendre.leggauss(n_nodes)
    hi = max(s, 0.0) + 16.0
    x = s + (t + 1) * (hi - s) / 2
    w = w * (hi - s) / 2
    k = 0.5 * special.airy((x[:, None] + x[None, :]) / 2)[0]
    sw = np.sqrt(w)
    return float(np.linalg.det(np.eye(n_nodes) - sw[:, None] * k * sw[None, :]))


@functools.lru_cache(maxsize=64)
def tw1_quantile(q: float) -> float:
    """s with F_1(s) = q (e.g. 0.95 -> 0.979, 0.99 -> 2.023)."""
    if not 0 < q < 1:
        raise ValueError("q must be in (0, 1)")
    return float(optimize.brentq(lambda s: tw1_cdf(s) - q, -8.0, 12.0, xtol=1e-10))


def tw_scale(sigma2: float, n_rows: float, dim: float) -> tuple[float, float]:
    """(centre, scale) of the largest eigenvalue of X^T X / N, X N x D with iid var-sigma2 entries
    (Johnstone 2001): lambda_max ~ centre + scale * TW1, centre = sigma2 (sqrt(N-1) + sqrt(D))^2 / N,
    scale = sigma2 (sqrt(N-1) + sqrt(D)) (1/sqrt(N-1) + 1/sqrt(D))^(1/3) / N."""
    a, b = math.sqrt(max(n_rows - 1, 1.0)), math.sqrt(dim)
    return sigma2 * (a + b) ** 2 / n_rows, sigma2 * (a + b) * (1 / a + 1 / b) ** (1 / 3) / n_rows


# ----------------------------------------------------------------------------- the MP fit
@dataclass
class MPFit:
    """MP fit of a bulk of dimension `dim`: sigma2, gamma (aspect ratio D/N used), n_rows = dim/gamma,
    lam_minus/lam_plus (MP support), tw_centre/tw_scale (Johnstone), edge_se (standard error of
    lam_plus over the SLQ probes, jackknife), margin (TW quantile * scale + z_q * edge_se) and
    edge = lam_plus + margin: the threshold above which an eigenvalue is an outlier."""

    sigma2: float
    gamma: float
    n_rows: float
    dim: int
    lam_minus: float
    lam_plus: float
    tw_centre: float
    tw_scale: float
    edge_se: float
    margin: float
    edge: float
    quantile: float


def _pos_moments(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe quadrature moments of the positive part: (sum w max(l,0), sum w max(l,0)^2)."""
    pos = np.clip(nodes, 0.0, None)
    return (weights * pos).sum(-1), (weights * pos * pos).sum(-1)


def _fit_once(m1p: np.ndarray, m2p: np.ndarray, dim: int, quantile: float) -> MPFit:
    s2, g = mp_from_moments(float(m1p.mean()), float(m2p.mean()))
    lo, hi = mp_edges(s2, g)
    p = len(m1p)
    se = 0.0
    if p > 1:
        loo = np.array([mp_edges(*mp_from_moments(float(np.delete(m1p, j).mean()), float(np.delete(m2p, j).mean())))[1]
                        for j in range(p)])
        se = float(math.sqrt((p - 1) / p * ((loo - loo.mean()) ** 2).sum()))
    n_rows = dim / g
    centre, scale = tw_scale(s2, n_rows, dim)
    margin = max(centre - hi, 0.0) + tw1_quantile(quantile) * scale + float(special.ndtri(quantile)) * se
    return MPFit(s2, g, n_rows, int(dim), lo, hi, centre, scale, se, margin, hi + margin, quantile)


def fit_mp(nodes: np.ndarray, weights: np.ndarray, dim: int, quantile: float = 0.99,
           top: np.ndarray | None = None, max_rounds: int = 20) -> MPFit:
    """Fit MP(sigma2, gamma) to a bulk given by SLQ quadrature (probes, m) of a `dim`-dimensional
    operator, plus those of the deflated eigenvalues `top` (k,) that turn out not to be outliers.

    Estimator (method of moments on the bulk): sigma2 = E[lambda_+] and gamma = E[lambda_+^2] /
    E[lambda_+]^2 - 1, where E is the bulk's spectral measure as estimated by the probes' Gauss
    quadrature and lambda_+ = max(lambda, 0). Why this one:
      * MP's first two moments fix (sigma2, gamma) exactly, including the atom at 0 that a
        Hessian (rank <= n(K-1) << D) has, so no aspect ratio has to be guessed from P/n;
      * for a PSD operator the quadrature moments *are* Hutchinson's unbiased estimators
        (e1^T T e1 = v^T B v, e1^T T^2 e1 = |B v|^2), and with the top-k Ritz space deflated
        (`hessian.slq(deflate=...)`) the outliers no longer inflate their variance or the fit;
      * sigma2 never comes from the top-k Ritz values alone (the public scaffold's bug, which puts
        lambda_+ far above lambda_max of any real network): deflated eigenvalues re-enter the
        moments only if they lie below the edge (they are then bulk members: removing the largest
        bulk eigenvalues would bias lambda_+ low). This is iterated: start with all of `top` in the
        bulk, fit, move those above the margined edge out, refit, until the set is stable;
      * negative eigenvalues (the residual term of the Hessian, not MP-distributed) are clipped
        rather than allowed to cancel positive mass in E[lambda].
    Margin = TW quantile of lambda_max for N = dim/gamma rows (Johnstone) + the normal quantile
    times the jackknife standard error of lambda_+ over the probes (estimation noise of the fit)."""
    nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
    m1b, m2b = _pos_moments(nodes, weights)
    top = np.zeros(0) if top is None else np.clip(np.asarray(top, np.float64), 0.0, None)
    db = dim - len(top)
    inside = np.ones(len(top), bool)
    fit = None
    for _ in range(max_rounds):
        n_in = int(inside.sum())
        m1 = (db * m1b + top[inside].sum()) / (db + n_in)
        m2 = (db * m2b + (top[inside] ** 2).sum()) / (db + n_in)
        fit = _fit_once(m1, m2, db + n_in, quantile)
        new = top <= fit.edge
        if np.array_equal(new, inside):
            break
        inside = new
    assert fit is not None
    return fit


# ----------------------------------------------------------------------------- the classification rule
# Gauss-Newton: H ~ (1/n) sum_i J_i^T A_i J_i (J_i the K x P logit Jacobian, A_i = diag p_i - p_i p_i^T). A network
# that fits through shared class structure has J_i ~ (class mean) + small deviation, so the top of its spectrum is
# ~K class outliers (Papyan 2019/2020; Sagun et al. 2017; Gur-Ari et al. 2018) and then a steep drop: the top 3K
# eigenvalues have participation count (sum l)^2 / sum l^2 ~ K. A network that fits sample by sample gives each
# memorised sample its own directions: no drop after ~K, the count grows towards 3K (a flat window; a pure MP
# bulk, the Gauss-Newton matrix of independent per-sample gradients, gives ~3K). The boundary c K, c in (1, 3),
# is the one free constant, fixed on the digits grids (MLP and CNN, steps 100/500/2000, 5 seeds x clean/random)
# before any CIFAR-10 dev run: every clean spectrum had count <= 1.20 K, every random-label one >= 1.38 K; c is
# their geometric midpoint, rounded (docs/spectral.md). The count depends on neither n_samples nor the MP fit.
PARTICIPATION_WINDOW = 3  # the top WINDOW * K eigenvalues (needs spectrum.top_k >= 3K)
PARTICIPATION_C = 1.3  # clean iff count <= C * K; fixed on digits, never changed after a CIFAR run


@dataclass
class Classification:
    """`classify`'s answer: participation (count of the top 3K eigenvalues), threshold (C * K), ratio
    (participation / threshold: the rule in units where the threshold is 1), is_clean (ratio <= 1; None when
    the spectrum has fewer than 3K eigenvalues or K is unknown) and verdict: "clean", "memorizing", or
    "no signal" -- no eigenvalue above the margined MP edge, a Hessian indistinguishable from the MP null (an
    untrained network): nothing learned, so not memorizing (and not called clean either)."""

    participation: float
    threshold: float
    ratio: float
    is_clean: bool | None
    verdict: str = ""


def classify(eigenvalues: np.ndarray, num_classes: int | None, n_outliers: int | None = None) -> Classification:
    """The one clean / memorizing rule: with m = (sum l_i)^2 / sum l_i^2 over the top 3K eigenvalues (negative
    ones clipped to 0), a run is clean iff m <= PARTICIPATION_C * K (see the comment above). Given
    `n_outliers` (top eigenvalues above the margined MP edge), a spectrum without any is "no signal"."""
    if not num_classes or num_classes < 2:
        return Classification(float("nan"), float("nan"), float("nan"), None, "unknown")
    k = PARTICIPATION_WINDOW * int(num_classes)
    thr = PARTICIPATION_C * num_classes
    top = np.sort(np.clip(np.asarray(eigenvalues, np.float64), 0.0, None))[::-1]
    if len(top) < k or not top[0] > 0:
        return Classification(float("nan"), thr, float("nan"), None, "unknown")
    m = float(top[:k].sum() ** 2 / (top[:k] ** 2).sum())
    clean = bool(m <= thr)
    verdict = "no signal" if n_outliers == 0 else ("clean" if clean else "memorizing")
    return Classification(m, thr, m / thr, clean and verdict == "clean", verdict)


# ----------------------------------------------------------------------------- ESM
@dataclass
class ESMResult:
    """ESM of one spectrum: esm (outlier share of tr H_+), n_outliers (top-k values above the MP edge),
    bulk_outlier_mass (quadrature mass of bulk eigenvalues above the edge, in eigenvalue units) and
    bulk_above_share (that mass / tr H_+: the part of ESM the MP law itself would put at 0), trace_pos
    (tr H_+), trace (tr H), top10_share (sum of the 10 largest / tr H_+), negative_share (|negative mass| /
    tr H_+), the MP fit, and `classify`'s answer (participation, threshold, ratio, is_clean)."""

    esm: float
    n_outliers: int
    bulk_outlier_mass: float
    bulk_above_share: float
    trace_pos: float
    trace: float
    top10_share: float
    negative_share: float
    fit: MPFit
    rule: Classification

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("fit", "rule")}
        row.update(asdict(self.rule))
        row.update({f"mp_{k}": v for k, v in asdict(self.fit).items()})
        return row


def esm_metric(eigenvalues: np.ndarray, bulk_nodes: np.ndarray, bulk_weights: np.ndarray, bulk_dim: int,
               quantile: float = 0.99, num_classes: int | None = None) -> ESMResult:
    """ESM from the top-k eigenvalues (k,) and the deflated bulk's SLQ quadrature (probes, m), plus
    `classify(eigenvalues, num_classes, n_outliers)`.

    tr H_+ = sum(max(top-k, 0)) + bulk_dim * E_bulk[max(lambda, 0)]. Outliers: top-k eigenvalues
    above `fit.edge`, plus the bulk's own quadrature mass above the edge (eigenvalues beyond the k
    Lanczos ones that still exceed it). On a pure MP spectrum no eigenvalue exceeds the edge with
    probability >= `quantile` (ESM = 0). On network Hessians the MP law does not describe the bulk
    (docs/spectral.md): the moment fit puts its edge inside a bulk that spans decades, and
    bulk_above_share says how much of ESM comes from bulk eigenvalues beyond that edge."""
    ev = np.sort(np.asarray(eigenvalues, np.float64))[::-1]
    fit = fit_mp(bulk_nodes, bulk_weights, bulk_dim + len(ev), quantile, top=ev)
    nodes, weights = np.atleast_2d(bulk_nodes), np.atleast_2d(bulk_weights)
    m1p, _ = _pos_moments(nodes, weights)
    bulk_pos = bulk_dim * float(m1p.mean())
    trace_pos = float(np.clip(ev, 0, None).sum()) + bulk_pos
    neg = bulk_dim * float((weights * np.clip(nodes, None, 0.0)).sum(-1).mean()) + float(np.clip(ev, None, 0).sum())
    out = ev[ev > fit.edge]
    bulk_above = bulk_dim * float((weights * nodes * (nodes > fit.edge)).sum(-1).mean())
    share = (lambda v: v / trace_pos if trace_pos > 0 else 0.0)  # noqa: E731
    return ESMResult(esm=share(float(out.sum()) + bulk_above), n_outliers=int(len(out)), bulk_outlier_mass=bulk_above,
                     bulk_above_share=share(bulk_above), trace_pos=trace_pos, trace=trace_pos + neg,
                     top10_share=share(float(np.clip(ev[:10], 0, None).sum())), negative_share=share(-neg), fit=fit,
                     rule=classify(ev, num_classes, int(len(out))))


# classes of the data sets a spectrum written before `num_classes` was stored can come from
_KNOWN_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "cifar10-jpeg-dev": 10}


def spectrum_classes(s: dict[str, Any]) -> int | None:
    """K of a spectrum: its stored num_classes, else that of a known data set (None when unknown)."""
    if "num_classes" in s:
        return int(s["num_classes"])
    return _KNOWN_CLASSES.get(str(s.get("dataset", "")))


def esm_from_spectrum(s: dict[str, Any], tw_quantile: float = 0.99) -> ESMResult:
    """`esm_metric` of a spectrum dict / .npz as written by `utils.spectral.capture.compute_spectrum`."""
    return esm_metric(s["eigenvalues"], s["slq_nodes"], s["slq_weights"], int(s["bulk_dim"]), tw_quantile,
                      spectrum_classes(s))


# ----------------------------------------------------------------------------- per (grid, step)
def summarise_esm(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per (grid, step): n_clean, n_random, AUC of ESM (clean = positive), AUC of the top-10 share and of
    the participation count (clean = low), mean/std of ESM and mean participation per condition, `classify`'s
    threshold (C * K) and threshold_accuracy: the fraction of runs it calls right (clean iff is_clean; a run it
    cannot classify counts as wrong; NaN when it can classify none)."""
    out = []
    keys = sorted({(v["grid"], v["step"]) for v in values})
    for grid, step in keys:
        rows = [v for v in values if v["grid"] == grid and v["step"] == step]
        pos = np.array([r["condition"] == "clean" for r in rows])
        esm, top, part, thr = (np.array([r[k] for r in rows], np.float64)
                               for k in ("esm", "top10_share", "participation", "threshold"))
        said = [r["is_clean"] for r in rows]
        mean = lambda v, m: float(v[m].mean()) if m.any() else float("nan")  # noqa: E731
        out.append({
            "grid": grid, "dataset": rows[0]["dataset"], "model": rows[0]["model"], "step": int(step),
            "n_clean": int(pos.sum()), "n_random": int((~pos).sum()),
            "auc_esm": auroc(esm, pos), "auc_top10": auroc(top, pos),
            "auc_participation": auroc(-part, pos) if np.isfinite(part).all() else float("nan"),
            "esm_clean_mean": mean(esm, pos), "esm_clean_std": float(esm[pos].std()) if pos.any() else float("nan"),
            "esm_random_mean": mean(esm, ~pos), "esm_random_std": float(esm[~pos].std()) if (~pos).any() else float("nan"),
            "top10_clean_mean": mean(top, pos), "top10_random_mean": mean(top, ~pos),
            "participation_clean_mean": mean(part, pos), "participation_random_mean": mean(part, ~pos),
            "threshold": float(thr[np.isfinite(thr)][0]) if np.isfinite(thr).any() else float("nan"),
            "threshold_accuracy": (float(np.mean([s is not None and s == p for s, p in zip(said, pos)]))
                                   if any(s is not None for s in said) else float("nan")),
        })
    return out
