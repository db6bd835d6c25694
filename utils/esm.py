"""Spectrum capture (per checkpoint or per training step) and the early-spectral-memorization grid.

* `compute_spectrum(model, dataset, cfg, dist)` -> dict of arrays: top-k Lanczos eigenvalues,
  SLQ quadrature (density), tr H and tr H^2 of the mean training loss over a fixed sample set.
* `write_spectrum(cfg, model, dataset, out_path, dist)`: the same, written atomically to a .npz
  (what the scoring loop calls with score.spectrum=true: curv_scores/<run>/spectrum_epoch_XXX.npz).
* `SpectrumCallback`: a `utils.train.Callback` capturing the spectrum at given optimizer steps
  into <dir>/step_XXXXX.npz.
* `run_grid(cfg)`: trains every (condition, seed) of `cfg.esm` and captures the spectra
  (esm_experiment.py); `analyse(cfg)` turns the files into summary.csv and figures (analyse_esm.py).
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import spectral
from .checkpoint import atomic_write, save_npz
from .distributed import Dist, setup
from .errors import UserError
from .hessian import HessianOperator, batches_from_dataset, lanczos, slq
from .train import Callback, TrainState, train

SPECTRUM_VERSION = 1


# ----------------------------------------------------------------------------- capture
def sample_indices(n_total: int, n_samples: int, seed: int) -> np.ndarray:
    """The fixed Hessian sample set: `n_samples` indices of a seeded permutation (sorted); 0 = all."""
    if n_samples <= 0 or n_samples >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[:n_samples])


def compute_spectrum(model: nn.Module, dataset, cfg: dict[str, Any], dist: Dist | None = None,
                     indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Hessian spectrum of the mean loss over a fixed subset of `dataset` (un-augmented).

    Returns arrays: eigenvalues (k,) descending, residuals (k,), lanczos_ritz (m,) + lanczos_weights
    (m,) (all Ritz values of the top-k run and their quadrature weights), slq_nodes / slq_weights
    (probes, m) of the *bulk* B = P H P (P projects out the top-k Ritz vectors; dimension bulk_dim),
    trace_samples / sq_trace_samples (probes,) (Hutchinson samples of tr B, tr B^2 from the SLQ
    runs), bulk_trace, bulk_sq_trace, trace = sum(eigenvalues) + bulk_trace (tr H), sq_trace, n_params,
    n_samples, loss, grad_norm, n_matvec, seconds.
    The model is left in eval mode; callers restore train() themselves."""
    s = cfg["spectrum"]
    dist = dist or Dist(0, 1, 0, next(model.parameters()).device)
    if indices is None:
        indices = sample_indices(len(dataset), s["n_samples"], s["seed"])
    t0 = time.time()
    op = HessianOperator(model, batches_from_dataset(dataset, indices, s["batch_size"], dist), dist=dist)
    loss, grad = op.loss_and_grad()
    device, dtype = op.device, op.dtype
    gen = torch.Generator(device=device).manual_seed(int(s["seed"]) + 1)
    vals, vecs, info = lanczos(op, op.dim, s["top_k"], max_iter=s["lanczos_iter"], tol=s["tol"], device=device,
                               dtype=dtype, generator=gen, return_vectors=True)
    # the bulk: SLQ of H deflated by the top-k Ritz vectors (tr H = sum(top-k) + tr(bulk) exactly)
    q = slq(op, op.dim, n_probes=s["slq_probes"], n_iter=s["slq_iter"], device=device, dtype=dtype, generator=gen,
            deflate=vecs)
    del vecs
    out = {
        "eigenvalues": vals.numpy(),
        "residuals": np.asarray(info["residuals"], np.float64),
        "lanczos_ritz": np.asarray(info["ritz"], np.float64),
        "lanczos_weights": np.asarray(info["ritz_weights"], np.float64),
        "slq_nodes": q.nodes, "slq_weights": q.weights,
        "trace_samples": q.trace_samples, "sq_trace_samples": q.sq_trace_samples,
        "bulk_trace": np.float64(q.trace), "bulk_sq_trace": np.float64(q.sq_trace), "bulk_dim": np.int64(q.dim),
        "trace": np.float64(q.trace + float(vals.sum())),
        "sq_trace": np.float64(q.sq_trace + float((vals ** 2).sum())),
        "n_params": np.int64(op.dim), "n_samples": np.int64(op.n_samples),
        "loss": np.float64(loss), "grad_norm": np.float64(float(grad.norm())),
        "n_matvec": np.int64(op.n_matvec), "seconds": np.float64(time.time() - t0),
        "spectrum_version": np.int64(SPECTRUM_VERSION),
    }
    del op
    return out


def _meta(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"run": np.array(cfg["run"]), "dataset": np.array(cfg["data"]["name"] if cfg["data"]["name"] != "imagefolder"
                                                             else cfg["data"]["folder"]),
            "model": np.array(cfg["model"]["name"]), "noise_kind": np.array(cfg["noise"]["kind"]),
            "noise_rate": np.float64(cfg["noise"]["rate"]), "seed": np.int64(cfg["train"]["seed"]),
            "config": np.array(json.dumps(cfg, sort_keys=True))}


def write_spectrum(cfg: dict[str, Any], model: nn.Module, dataset, out_path: str | Path, dist: Dist | None = None,
                   **extra: Any) -> dict[str, np.ndarray]:
    """Compute the spectrum (see `compute_spectrum`) and write it atomically to `out_path` (rank 0).

    For the scoring loop: `write_spectrum(cfg, model, data.train_eval, score_dir(cfg) /
    f"spectrum_epoch_{epoch:03d}.npz", dist, epoch=epoch)`; extra keyword arrays are stored too.
    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    try:
        arrays = compute_spectrum(model, dataset, cfg, dist)
    finally:
        model.train(was_training)
    arrays.update(_meta(cfg))
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    if dist is None or dist.is_main:
        save_npz(Path(out_path), **arrays)
    return arrays


class SpectrumCallback(Callback):
    """Capture the spectrum at the given optimizer steps into `out_dir/step_XXXXX.npz`."""

    def __init__(self, cfg: dict[str, Any], out_dir: str | Path, steps: list[int]) -> None:
        self.cfg, self.out_dir, self.steps = cfg, Path(out_dir), sorted(set(int(s) for s in steps))
        self.indices: np.ndarray | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.indices = sample_indices(len(state.data.train_eval), self.cfg["spectrum"]["n_samples"],
                                      self.cfg["spectrum"]["seed"])

    def on_step_end(self, state: TrainState) -> None:
        if state.step not in self.steps:
            return
        model = state.model
        was_training = model.training
        try:
            arrays = compute_spectrum(model, state.data.train_eval, self.cfg, state.dist, self.indices)
        finally:
            model.train(was_training)
        arrays.update(_meta(self.cfg))
        arrays["step"] = np.int64(state.step)
        arrays["epoch"] = np.int64(state.epoch)
        if state.dist.is_main:
            save_npz(self.out_dir / f"step_{state.step:05d}.npz", **arrays)
        if state.step >= self.steps[-1]:
            state.stop = True


# ----------------------------------------------------------------------------- the grid
def grid_name(cfg: dict[str, Any]) -> str:
    d = cfg["data"]
    return cfg["esm"]["name"] or f"{d['folder'] or d['name']}_{cfg['model']['name']}"


def esm_root(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["scores"]) / "esm"


def run_config(cfg: dict[str, Any], condition: str, seed: int) -> dict[str, Any]:
    """The training config of one grid point: noise.kind=condition (rate 1 for random), both seeds=seed."""
    c = copy.deepcopy(cfg)
    c["noise"]["kind"] = condition
    c["noise"]["rate"] = 1.0 if condition == "random" else (0.0 if condition == "none" else c["noise"]["rate"])
    c["noise"]["seed"] = seed
    c["train"]["seed"] = seed
    c["train"]["max_steps"] = max(cfg["esm"]["steps"])
    c["run"] = f"{grid_name(cfg)}_{'clean' if condition == 'none' else condition}_s{seed}"
    c["paths"] = dict(c["paths"], pretrained=str(Path(cfg["paths"]["pretrained"]) / "esm"))
    return c


def run_grid(cfg: dict[str, Any]) -> list[Path]:
    """Train every (condition, seed) of the grid and capture its spectra; finished runs are skipped."""
    e = cfg["esm"]
    if not e["steps"] or not e["seeds"] or not e["conditions"]:
        raise UserError("esm.steps, esm.seeds and esm.conditions must be non-empty lists")
    dist = setup()
    done = []
    for condition in e["conditions"]:
        for seed in e["seeds"]:
            c = run_config(cfg, condition, int(seed))
            out = esm_root(cfg) / c["run"]
            want = [out / f"step_{s:05d}.npz" for s in sorted(e["steps"])]
            if all(p.is_file() for p in want):
                done.append(out)
                continue
            # restart the run from scratch: spectra are taken at steps inside the first epochs
            c["resume"] = False
            rdir = Path(c["paths"]["pretrained"]) / c["run"]
            if dist.is_main and rdir.exists():
                shutil.rmtree(rdir)
            train(c, [SpectrumCallback(c, out, e["steps"])])
            done.append(out)
    return done


# ----------------------------------------------------------------------------- analysis
def load_spectra(root: str | Path) -> list[dict[str, Any]]:
    """Every step_XXXXX.npz under root/<run>/ as a dict (numpy scalars unwrapped)."""
    rows = []
    for p in sorted(Path(root).glob("*/step_*.npz")):
        with np.load(p, allow_pickle=False) as z:
            row = {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
        row["path"] = str(p)
        rows.append(row)
    return rows


def analyse(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """ESM metric of every captured spectrum, AUC per (grid, step), the null threshold and its
    accuracy -> <root>/summary.csv, <root>/esm_values.csv and figures; returns the summary rows."""
    root = esm_root(cfg)
    spectra = load_spectra(root)
    if not spectra:
        raise UserError(f"no spectra under {root}/<run>/step_*.npz; run esm_experiment.py first")
    q = cfg["spectrum"]["tw_quantile"]
    values = esm_values(spectra, q)
    summary = spectral.summarise_esm(values)
    _write_csv(root / "esm_values.csv", values)
    _write_csv(root / "summary.csv", summary)
    all_figures(spectra, values, root, tw_quantile=q)
    return summary


def esm_values(spectra: list[dict[str, Any]], tw_quantile: float = 0.99) -> list[dict[str, Any]]:
    """One row per captured spectrum: grid, run, dataset, model, condition, seed, step + `ESMResult.as_row()`."""
    rows = []
    for s in spectra:
        res = spectral.esm_from_spectrum(s, tw_quantile=tw_quantile)
        rows.append({"grid": str(s["run"]).rsplit("_", 2)[0], "run": s["run"], "dataset": s["dataset"],
                     "model": s["model"], "condition": "random" if s["noise_kind"] == "random" else "clean",
                     "seed": int(s["seed"]), "step": int(s["step"]), **res.as_row()})
    return rows


def main_analyse(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """analyse_esm.py: analyse everything under <paths.scores>/esm/ and print the summary table."""
    summary = analyse(cfg)
    cols = ["grid", "step", "n_clean", "n_random", "auc_esm", "auc_top10", "esm_clean_mean", "esm_random_mean",
            "threshold_median", "threshold_accuracy", "balance_accuracy"]
    print(" ".join(f"{c:>18}" for c in cols))
    for r in summary:
        print(" ".join(f"{r[c]:>18.4g}" if isinstance(r[c], float) else f"{r[c]!s:>18}" for c in cols))
    print(f"written: {esm_root(cfg) / 'summary.csv'}, esm_values.csv, spectra_step*.png, esm_vs_step.png, roc.png")
    return summary


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_png(fig) -> bytes:
    """A figure as PNG bytes (150 dpi), closed afterwards (for notebooks: IPython.display.Image)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=150, format="png", bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _save_fig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png", bbox_inches="tight"))
    _plt().close(fig)


def plot_spectrum(ax, s: dict[str, Any], tw_quantile: float = 0.99, label: str = "") -> None:
    """Eigenvalue distribution of one spectrum on a log axis: SLQ mass of the bulk per log-bin, the
    fitted MP law's mass per bin (same normalisation), the top-k eigenvalues (ticks), lambda_+ and
    the margined edge."""
    res = spectral.esm_from_spectrum(s, tw_quantile)
    fit = res.fit
    ev = np.asarray(s["eigenvalues"])
    nodes, weights = np.asarray(s["slq_nodes"]), np.asarray(s["slq_weights"])
    hi = max(float(ev.max()), fit.edge) * 2
    lo = max(hi * 1e-7, 1e-12)
    edges = np.logspace(np.log10(lo), np.log10(hi), 60)
    mass = np.zeros(len(edges) - 1)
    for nd, wt in zip(nodes, weights):
        mass += np.histogram(nd, bins=edges, weights=wt)[0]
    mass /= len(nodes)
    ax.stairs(np.maximum(mass, 1e-9), edges, color="0.4", label="bulk (SLQ, deflated)")
    x = np.sqrt(edges[1:] * edges[:-1])
    mp = spectral.mp_density(x, fit.sigma2, fit.gamma) * np.diff(edges)
    ax.plot(x, np.maximum(mp, 1e-9), "g-", lw=1.2, label=f"MP fit (gamma={fit.gamma:.3g})")
    ax.axvline(fit.lam_plus, color="g", ls=":", lw=1)
    ax.axvline(fit.edge, color="g", ls="--", lw=1, label="edge + TW margin")
    out = ev > fit.edge
    ax.plot(ev[out], np.full(out.sum(), 2e-1), "|", color="C3", ms=12, label=f"top-k above edge ({out.sum()})")
    ax.plot(ev[~out], np.full((~out).sum(), 2e-1), "|", color="C0", ms=12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 1.5)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral mass per bin")
    ax.set_title(f"{label or s['run']} step {s['step']}: ESM={res.esm:.2f}", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")


def figure_spectra(spectra: list[dict[str, Any]], step: int, tw_quantile: float = 0.99):
    """One row per grid: the first clean and the first random run at `step`."""
    plt = _plt()
    grids = sorted({str(s["run"]).rsplit("_", 2)[0] for s in spectra})
    fig, axes = plt.subplots(len(grids), 2, figsize=(10, 3.4 * len(grids)), squeeze=False)
    for gi, grid in enumerate(grids):
        for ci, cond in enumerate(("none", "random")):
            pick = sorted((s for s in spectra if str(s["run"]).rsplit("_", 2)[0] == grid and s["noise_kind"] == cond
                           and int(s["step"]) == step), key=lambda s: int(s["seed"]))
            ax = axes[gi, ci]
            if pick:
                plot_spectrum(ax, pick[0], tw_quantile, f"{grid} {'clean' if cond == 'none' else 'random'} s{pick[0]['seed']}")
            else:
                ax.set_axis_off()
    fig.tight_layout()
    return fig


def figure_esm_vs_step(values: list[dict[str, Any]], key: str = "esm"):
    """`key` (esm or top10_share) against the capture step, one panel per grid, one line per run."""
    plt = _plt()
    grids = sorted({v["grid"] for v in values})
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 3.4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        runs = sorted({v["run"] for v in values if v["grid"] == grid})
        for run in runs:
            rows = sorted((v for v in values if v["run"] == run), key=lambda v: v["step"])
            c = "C0" if rows[0]["condition"] == "clean" else "C3"
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", color=c, alpha=0.7, ms=3)
        if key == "esm":
            thr = np.median([v["threshold"] for v in values if v["grid"] == grid])
            ax.axhline(thr, color="k", ls="--", lw=1, label=f"MP null threshold (median {thr:.3g})")
            ax.axhline(spectral.BALANCE_THRESHOLD, color="k", ls="-", lw=1,
                       label=f"balance threshold {spectral.BALANCE_THRESHOLD:g}")
        ax.plot([], [], "o-", color="C0", label="clean")
        ax.plot([], [], "o-", color="C3", label="random labels")
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(grid, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_roc(values: list[dict[str, Any]]):
    """ROC of ESM (clean = positive) per grid, one curve per step, AUC in the legend."""
    plt = _plt()
    grids = sorted({v["grid"] for v in values})
    fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids), 3.4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        for i, step in enumerate(sorted({v["step"] for v in values if v["grid"] == grid})):
            rows = [v for v in values if v["grid"] == grid and v["step"] == step]
            fpr, tpr, _, auc = spectral.roc(np.array([r["esm"] for r in rows]),
                                            np.array([r["condition"] == "clean" for r in rows]))
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
    """spectra_stepXXXXX.png for every step, esm_vs_step.png, top10_vs_step.png, roc.png under root."""
    root = Path(root)
    paths = []
    for step in sorted({int(s["step"]) for s in spectra}):
        p = root / f"spectra_step{step:05d}.png"
        _save_fig(figure_spectra(spectra, step, tw_quantile), p)
        paths.append(p)
    for name, fig in (("esm_vs_step.png", figure_esm_vs_step(values)),
                      ("top10_vs_step.png", figure_esm_vs_step(values, "top10_share")), ("roc.png", figure_roc(values))):
        _save_fig(fig, root / name)
        paths.append(root / name)
    return paths


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0].keys()) if rows else []

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    atomic_write(path, write)
