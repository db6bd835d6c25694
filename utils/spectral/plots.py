"""Figures of the ESM grid: eigenvalue distributions with the fitted MP law, ESM (or the top-10 share) and
the classification rule's ratio against the step, ROC curves of ESM. Each `figure_*` returns a matplotlib
figure (Agg backend, from `utils.io.plt`); `all_figures` writes them with `utils.io.save_figure`, a notebook
shows them with `utils.io.figure_png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import plt, save_figure
from ..metrics import roc
from . import rmt


def spectrum_grid(s: dict[str, Any]) -> str:
    """The grid a spectrum belongs to: its stored `grid`, else its run name less `_<condition>_s<seed>`."""
    return str(s["grid"]) if "grid" in s else str(s["run"]).rsplit("_", 2)[0]


def log_bins(s: dict[str, Any], fit: rmt.MPFit, n_bins: int = 60, decades: float = 7.0) -> np.ndarray:
    """Log-spaced bin edges from 10^-decades times the top of the plot (2 x max(lambda_1, edge)) up to it."""
    hi = max(float(np.max(s["eigenvalues"])), fit.edge) * 2
    return np.logspace(np.log10(max(hi * 10 ** -decades, 1e-300)), np.log10(hi), n_bins + 1)


def slq_bin_mass(s: dict[str, Any], edges: np.ndarray) -> np.ndarray:
    """The deflated bulk's spectral mass per bin: SLQ quadrature weights summed per bin, averaged over probes
    (each probe's weights sum to 1, so the bins hold the share of the bulk's dim eigenvalues in them)."""
    nodes, weights = np.atleast_2d(s["slq_nodes"]), np.atleast_2d(s["slq_weights"])
    return np.mean([np.histogram(nd, bins=edges, weights=wt)[0] for nd, wt in zip(nodes, weights)], axis=0)


def plot_spectrum(ax: Any, s: dict[str, Any], tw_quantile: float = 0.99, label: str = "") -> None:
    """Eigenvalue distribution of one spectrum on a log axis: the deflated bulk's SLQ mass per log-bin and the
    fitted MP law's mass in the same bins (its CDF differenced over the bin edges: the same normalisation, also
    for a band narrower than a bin), the top-k eigenvalues (ticks), lambda_+ and the margined edge. The legend
    gives what no log-bin can show: the MP atom at 0 (1 - 1/gamma), the bulk's mass below the first bin and
    its negative mass."""
    res = rmt.esm_from_spectrum(s, tw_quantile)
    fit = res.fit
    ev = np.asarray(s["eigenvalues"])
    edges = log_bins(s, fit)
    nodes, weights = np.atleast_2d(s["slq_nodes"]), np.atleast_2d(s["slq_weights"])
    below = float((weights * ((nodes >= 0) & (nodes < edges[0]))).sum(-1).mean())
    neg = float((weights * (nodes < 0)).sum(-1).mean())
    ax.stairs(np.maximum(slq_bin_mass(s, edges), 1e-9), edges, color="0.4",
              label=f"bulk (SLQ, deflated); <{edges[0]:.0e}: {below:.2f}, <0: {neg:.2f}")
    atom = max(0.0, 1 - 1 / fit.gamma)
    ax.stairs(np.maximum(rmt.mp_bin_mass(edges, fit.sigma2, fit.gamma), 1e-9), edges, color="g", lw=1.2,
              label=f"MP fit (gamma={fit.gamma:.3g}; atom at 0: {atom:.2f})")
    ax.axvline(fit.lam_plus, color="g", ls=":", lw=1)
    ax.axvline(fit.edge, color="g", ls="--", lw=1, label="edge + TW margin")
    out = ev > fit.edge
    ax.plot(ev[out], np.full(out.sum(), 2e-1), "|", color="C3", ms=12, label=f"top-k above edge ({out.sum()})")
    ax.plot(ev[~out], np.full((~out).sum(), 2e-1), "|", color="C0", ms=12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 1.5)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("share of the bulk's eigenvalues per bin")
    rule = res.rule
    verdict = "" if rule.is_clean is None else f", top-3K participation {rule.participation:.1f} -> " + (
        "clean" if rule.is_clean else "memorizing")
    ax.set_title(f"{label or s['run']} step {s['step']}\nESM={res.esm:.2f}{verdict}", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")


def figure_spectra(spectra: list[dict[str, Any]], step: int, tw_quantile: float = 0.99) -> Any:
    """One row per grid: the first clean and the first random run at `step`."""
    grids = sorted({spectrum_grid(s) for s in spectra})
    fig, axes = plt().subplots(len(grids), 2, figsize=(10, 3.7 * len(grids)), squeeze=False)
    for gi, grid in enumerate(grids):
        for ci, cond in enumerate(("none", "random")):
            pick = sorted((s for s in spectra if spectrum_grid(s) == grid and s["noise_kind"] == cond
                           and int(s["step"]) == step), key=lambda s: int(s["seed"]))
            ax = axes[gi, ci]
            if pick:
                plot_spectrum(ax, pick[0], tw_quantile, f"{grid} {'clean' if cond == 'none' else 'random'} s{pick[0]['seed']}")
            else:
                ax.set_axis_off()
    fig.tight_layout()
    return fig


def figure_esm_vs_step(values: list[dict[str, Any]], key: str = "esm") -> Any:
    """`key` (esm or top10_share) against the capture step, one panel per grid, one line per run. For esm a
    second row shows the one classification rule in its own units: participation / (C K) (`rmt.classify`) on a
    log axis, whose threshold is the constant line 1 (below: clean, above: memorizing)."""
    grids = sorted({v["grid"] for v in values})
    rows = 2 if key == "esm" else 1
    fig, axes = plt().subplots(rows, len(grids), figsize=(4.2 * len(grids), 3.4 * rows), squeeze=False)
    for gi, grid in enumerate(grids):
        runs = sorted({v["run"] for v in values if v["grid"] == grid})
        for ri, k in enumerate([key, "ratio"][:rows]):
            ax = axes[ri, gi]
            for run in runs:
                pts = sorted((v for v in values if v["run"] == run), key=lambda v: v["step"])
                c = "C0" if pts[0]["condition"] == "clean" else "C3"
                ax.plot([r["step"] for r in pts], [r[k] for r in pts], "o-", color=c, alpha=0.7, ms=3)
            ax.plot([], [], "o-", color="C0", label="clean")
            ax.plot([], [], "o-", color="C3", label="random labels")
            ax.set_xscale("log")
            ax.set_xlabel("optimizer step")
            ax.set_title(grid, fontsize=9)
            if k == "ratio":
                thr = next((v["threshold"] for v in values if v["grid"] == grid and np.isfinite(v["threshold"])), np.nan)
                ax.axhline(1.0, color="k", ls="--", lw=1.2,
                           label=f"threshold: count = {rmt.PARTICIPATION_C:g} K = {thr:.3g}")
                r = [v["ratio"] for v in values if v["grid"] == grid and np.isfinite(v["ratio"])]
                ax.set_ylim(min([0.7, *r]) * 0.95, max([1.3, *r]) * 1.05)  # linear, the threshold line always inside
                ax.set_ylabel(f"top-{rmt.PARTICIPATION_WINDOW}K participation / ({rmt.PARTICIPATION_C:g} K)")
            else:
                ax.set_ylim(0, 1)
                ax.set_ylabel(k)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_roc(values: list[dict[str, Any]]) -> Any:
    """ROC of ESM (clean = positive) per grid, one curve per step, AUC in the legend."""
    grids = sorted({v["grid"] for v in values})
    fig, axes = plt().subplots(1, len(grids), figsize=(3.6 * len(grids), 3.4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        for i, step in enumerate(sorted({v["step"] for v in values if v["grid"] == grid})):
            rows = [v for v in values if v["grid"] == grid and v["step"] == step]
            fpr, tpr, _, auc = roc(np.array([r["esm"] for r in rows]), np.array([r["condition"] == "clean" for r in rows]))
            ax.plot(fpr, tpr, color=f"C{i}", label=f"step {step}: AUC {auc:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate (random called clean)")
        ax.set_ylabel("true positive rate")
        ax.set_title(grid, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def all_figures(spectra: list[dict[str, Any]], values: list[dict[str, Any]], root: Path,
                tw_quantile: float = 0.99) -> list[Path]:
    """spectra_stepXXXXX.png for every step, esm_vs_step.png, top10_vs_step.png, roc.png under root;
    returns the paths written (nothing when there are no spectra)."""
    root = Path(root)
    if not spectra:
        return []
    paths = [save_figure(figure_spectra(spectra, step, tw_quantile), root / f"spectra_step{step:05d}.png")
             for step in sorted({int(s["step"]) for s in spectra})]
    paths.append(save_figure(figure_esm_vs_step(values), root / "esm_vs_step.png"))
    paths.append(save_figure(figure_esm_vs_step(values, "top10_share"), root / "top10_vs_step.png"))
    paths.append(save_figure(figure_roc(values), root / "roc.png"))
    return paths
