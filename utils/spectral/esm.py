"""Spectrum capture (per checkpoint or per training step) and the early-spectral-memorization grid.

* `compute_spectrum(model, dataset, cfg, dist)` -> dict of arrays: top-k Lanczos eigenvalues,
  SLQ quadrature (density), tr H and tr H^2 of the mean training loss over a fixed sample set,
  all in full fp32 (`utils.evaluate.fp32`: no TF32, no autocast).
* `write_spectrum(cfg, model, dataset, out_path, dist)`: the same, written atomically to a .npz
  (what the scoring loop calls with score.spectrum=true: curv_scores/<run>/spectrum_epoch_XXX.npz).
* `SpectrumCallback`: a `utils.callbacks.Callback` capturing the spectrum at given optimizer steps
  into <dir>/step_XXXXX.npz.
* `run_grid(cfg)`: trains every (condition, seed) of `cfg.esm` and captures the spectra into the grid
  directory <paths.scores>/esm/<grid>/ (`grid_name`: data set + model, never shared between data sets);
  `main_grid` is esm_experiment.py, `main_analyse` (summary.csv/.md, esm_values.csv, figures) analyse_esm.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..callbacks import Callback, TrainState
from ..config import identity_hash
from ..distributed import Dist, all_reduce_sum, barrier, broadcast_object, setup
from ..errors import UserError
from ..evaluate import fp32
from ..io import markdown_table, save_npz, write_table
from ..models import forward
from ..runs import run_dir
from ..train import train
from .hessian import HessianOperator, batches_from_dataset, lanczos, slq
from .plots import all_figures, spectrum_grid
from .rmt import esm_from_spectrum, summarise_esm

SPECTRUM_VERSION = 1
HEADLINE = ["grid", "step", "n_clean", "n_random", "auc_esm", "threshold_accuracy", "balance_accuracy"]


# ----------------------------------------------------------------------------- capture
def sample_indices(n_total: int, n_samples: int, seed: int) -> np.ndarray:
    """The fixed Hessian sample set: `n_samples` indices of a seeded permutation (sorted); 0 = all."""
    if n_samples <= 0 or n_samples >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[:n_samples])


def compute_spectrum(model: nn.Module, dataset: Any, cfg: dict[str, Any], dist: Dist | None = None,
                     indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Hessian spectrum of the mean loss over a fixed subset of `dataset` (un-augmented), in fp32.

    Returns arrays: eigenvalues (k,) descending, residuals (k,), lanczos_ritz (m,) + lanczos_weights
    (m,) (all Ritz values of the top-k run and their quadrature weights), slq_nodes / slq_weights
    (probes, m) of the *bulk* B = P H P (P projects out the top-k Ritz vectors; dimension bulk_dim),
    trace_samples / sq_trace_samples (probes,) (Hutchinson samples of tr B, tr B^2 from the SLQ
    runs), bulk_trace, bulk_sq_trace, trace = sum(eigenvalues) + bulk_trace (tr H), sq_trace, n_params,
    n_samples, loss, grad_norm, n_matvec, seconds.
    Everything (HVPs and the Krylov basis' reorthogonalisation) runs without TF32 or autocast.
    The model is left in eval mode; callers restore train() themselves."""
    s = cfg["spectrum"]
    dist = dist or Dist(0, 1, 0, next(model.parameters()).device)
    if indices is None:
        indices = sample_indices(len(dataset), s["n_samples"], s["seed"])
    t0 = time.time()
    with fp32(dist.device):
        op = HessianOperator(model, batches_from_dataset(dataset, indices, s["batch_size"], dist), dist=dist)
        loss, grad = op.loss_and_grad()
        device, dtype = op.device, op.dtype
        gen = torch.Generator(device=device).manual_seed(int(s["seed"]) + 1)
        vals, vecs, info = lanczos(op, op.dim, s["top_k"], max_iter=s["lanczos_iter"], tol=s["tol"], device=device,
                                   dtype=dtype, generator=gen, return_vectors=True)
        # the bulk: SLQ of H deflated by the top-k Ritz vectors (tr H = sum(top-k) + tr(bulk) exactly)
        q = slq(op, op.dim, n_probes=s["slq_probes"], n_iter=s["slq_iter"], device=device, dtype=dtype,
                generator=gen, deflate=vecs)
    del vecs
    fit = _fit_stats(op)
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
        "loss": np.float64(loss), "grad_norm": np.float64(float(grad.norm())), **fit,
        "n_matvec": np.int64(op.n_matvec), "seconds": np.float64(time.time() - t0),
        "spectrum_version": np.int64(SPECTRUM_VERSION),
    }
    del op
    return out


@torch.no_grad()
def _fit_stats(op: HessianOperator) -> dict[str, np.ndarray]:
    """How well the model fits the Hessian sample set (its own, possibly random, labels; eval mode):
    accuracy, and the Gauss-Newton weights w_i = tr A_i = 1 - |p_i|^2 (A_i = diag p_i - p_i p_i^T, the
    softmax Hessian) as gn_weight_mean = mean w_i and gn_n_eff = (sum w)^2 / sum w^2 (how many samples
    carry the Gauss-Newton curvature). All-reduced sums, so every rank gets the global values."""
    acc = torch.zeros(3, dtype=torch.float64, device=op.device)
    with fp32(op.device):
        for idx, x, y in op.batches:
            p = torch.softmax(forward(op.model, x, idx).double(), -1)
            w = 1.0 - (p * p).sum(-1)
            acc += torch.stack([(p.argmax(-1) == y).sum().double(), w.sum(), (w * w).sum()])
    correct, sw, sw2 = (float(v) for v in all_reduce_sum(acc))
    return {"accuracy": np.float64(correct / op.n_samples), "gn_weight_mean": np.float64(sw / op.n_samples),
            "gn_n_eff": np.float64(sw * sw / sw2 if sw2 > 0 else 0.0)}


def dataset_name(cfg: dict[str, Any]) -> str:
    """The data set a config trains on: data.folder for imagefolder / imagenet (when set), else data.name."""
    d = cfg["data"]
    return d["folder"] if d["name"] in ("imagefolder", "imagenet") and d["folder"] else d["name"]


def _meta(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return {"run": np.array(cfg["run"]), "dataset": np.array(dataset_name(cfg)),
            "model": np.array(cfg["model"]["name"]), "noise_kind": np.array(cfg["noise"]["kind"]),
            "noise_rate": np.float64(cfg["noise"]["rate"]), "seed": np.int64(cfg["train"]["seed"]),
            "config": np.array(json.dumps(public, sort_keys=True))}


def _captured(cfg: dict[str, Any], model: nn.Module, dataset: Any, dist: Dist | None,
              indices: np.ndarray | None = None, **extra: Any) -> dict[str, np.ndarray]:
    """`compute_spectrum` with the model's train/eval mode restored, plus identity and `extra` arrays."""
    was_training = model.training
    try:
        arrays = compute_spectrum(model, dataset, cfg, dist, indices)
    finally:
        model.train(was_training)
    arrays.update(_meta(cfg))
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    return arrays


def write_spectrum(cfg: dict[str, Any], model: nn.Module, dataset: Any, out_path: str | Path, dist: Dist | None = None,
                   **extra: Any) -> dict[str, np.ndarray]:
    """Compute the spectrum (see `compute_spectrum`) and write it atomically to `out_path` (rank 0).

    For the scoring loop: `write_spectrum(cfg, model, data.train_eval, score_dir(cfg) /
    f"spectrum_epoch_{epoch:03d}.npz", dist, epoch=epoch)`; extra keyword arrays are stored too.
    The model's train/eval mode is restored afterwards."""
    arrays = _captured(cfg, model, dataset, dist, **extra)
    if dist is None or dist.is_main:
        save_npz(Path(out_path), **arrays)
    return arrays


class SpectrumCallback(Callback):
    """Capture the spectrum at the given optimizer steps into `out_dir/step_XXXXX.npz` (extra keyword
    arrays are stored in every file); asks the loop to stop after the last of them. Each file also holds
    running_loss (mean per-sample training loss of the last RUNNING batches, this rank's, augmented) and
    run_seconds (wall time since the start of training, this capture included)."""

    RUNNING = 20

    def __init__(self, cfg: dict[str, Any], out_dir: str | Path, steps: list[int], **extra: Any) -> None:
        self.cfg, self.out_dir, self.steps = cfg, Path(out_dir), sorted({int(s) for s in steps})
        self.extra = extra
        self.indices: np.ndarray | None = None
        self.t0 = time.time()
        self.recent: list[tuple[torch.Tensor, int]] = []  # (sum of per-sample losses, count), last RUNNING batches

    def on_train_start(self, state: TrainState) -> None:
        s = self.cfg["spectrum"]
        self.indices = sample_indices(len(state.data.train_eval), s["n_samples"], s["seed"])
        self.t0, self.recent = time.time(), []

    def on_batch_loss(self, state: TrainState, losses: torch.Tensor, index: torch.Tensor, loss: torch.Tensor) -> None:
        # kept as tensors: no device synchronisation per step
        self.recent = [*self.recent[-(self.RUNNING - 1):], (losses.detach().float().sum(), int(losses.numel()))]

    def on_step_end(self, state: TrainState) -> None:
        if state.step not in self.steps:
            return
        n = max(sum(c for _, c in self.recent), 1)
        arrays = _captured(self.cfg, state.model, state.data.train_eval, state.dist, self.indices, **self.extra,
                           step=np.int64(state.step), epoch=np.int64(state.epoch),
                           running_loss=np.float64(sum(float(v) for v, _ in self.recent) / n))
        arrays["run_seconds"] = np.float64(time.time() - self.t0)
        if state.dist.is_main:
            save_npz(self.out_dir / f"step_{state.step:05d}.npz", **arrays)
        if state.step >= self.steps[-1]:
            state.stop = True


# ----------------------------------------------------------------------------- the grid
def grid_name(cfg: dict[str, Any]) -> str:
    """<data set>[_sub<n>]_<model>[_w<width>][_<esm.name>]: always derived from the data set and the model,
    so grids of two data sets never share a directory; `esm.name` only adds a tag."""
    d, m = cfg["data"], cfg["model"]
    parts = [dataset_name(cfg), f"sub{d['subset']}" if d["subset"] else "", m["name"],
             f"w{m['width']}" if m["width"] else "", str(cfg["esm"]["name"] or "")]
    return "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", p) for p in parts if p)


def esm_root(cfg: dict[str, Any]) -> Path:
    """<paths.scores>/esm/: every grid's directory, and analyse_esm.py's outputs."""
    return Path(cfg["paths"]["scores"]) / "esm"


def grid_dir(cfg: dict[str, Any]) -> Path:
    """<paths.scores>/esm/<grid_name>/: the spectra of one grid, <condition>_s<seed>/step_XXXXX.npz."""
    return esm_root(cfg) / grid_name(cfg)


def _label(condition: str) -> str:
    return "clean" if condition == "none" else condition


def spectra_dir(cfg: dict[str, Any], condition: str, seed: int) -> Path:
    return grid_dir(cfg) / f"{_label(condition)}_s{seed}"


def run_config(cfg: dict[str, Any], condition: str, seed: int) -> dict[str, Any]:
    """The training config of one grid point: noise.kind=condition (rate 1 for random), both seeds=seed,
    train.max_steps = the last capture step, a fresh run <grid>_<condition>_s<seed> under <pretrained>/esm/."""
    c = copy.deepcopy(cfg)
    c["noise"]["kind"] = condition
    c["noise"]["rate"] = 1.0 if condition == "random" else (0.0 if condition == "none" else c["noise"]["rate"])
    c["noise"]["seed"] = seed
    c["train"]["seed"] = seed
    c["train"]["max_steps"] = max(int(s) for s in cfg["esm"]["steps"])
    c["run"] = f"{grid_name(cfg)}_{_label(condition)}_s{seed}"
    c["resume"] = False  # spectra are taken at steps inside the first epochs: always from scratch
    c["paths"] = dict(c["paths"], pretrained=str(Path(cfg["paths"]["pretrained"]) / "esm"))
    return c


def point_identity(c: dict[str, Any]) -> str:
    """What a grid point's spectra depend on: the run's identity and the spectrum keys (tw_quantile aside)."""
    spec = {k: v for k, v in c["spectrum"].items() if k != "tw_quantile"}
    return hashlib.sha256(json.dumps([identity_hash(c), spec], sort_keys=True).encode()).hexdigest()[:16]


def _decide_point(c: dict[str, Any], out: Path, steps: list[int]) -> tuple[str, str]:
    """Rank 0: ("reuse", "") when every step file is there and of this config, ("train", "") when one is
    missing or unreadable, ("error", message) when they hold another config's spectra."""
    want = [out / f"step_{s:05d}.npz" for s in steps]
    if not all(p.is_file() for p in want):
        return "train", ""
    ident = point_identity(c)
    for p in want:
        try:
            with np.load(p, allow_pickle=False) as z:
                got = str(z["grid_identity"]) if "grid_identity" in z.files else "(none recorded)"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return "train", ""
        if got != ident:
            return "error", (f"{p} holds a spectrum of another config (identity {got}, this one {ident}); "
                             f"pass esm.name=<tag> for a separate grid, or delete {out}")
    return "reuse", ""


@dataclass
class GridPoint:
    """One (condition, seed) of a grid: its run name, spectra directory, step files, weights directory and
    whether this call trained it ("trained") or found it complete ("reused")."""

    run: str
    out: Path
    files: list[Path]
    weights: Path
    status: str


def run_grid(cfg: dict[str, Any]) -> list[GridPoint]:
    """Train every (condition, seed) of the grid and capture its spectra; complete points are reused.

    Rank 0 decides for each point (files complete and of this config, or not) and broadcasts it; when a
    point is retrained it deletes the old run directory and step files, and all ranks wait at a barrier."""
    e = cfg["esm"]
    if not e["steps"] or not e["seeds"] or not e["conditions"]:
        raise UserError("esm.steps, esm.seeds and esm.conditions must be non-empty lists")
    steps = sorted({int(s) for s in e["steps"]})
    if steps[0] < 1:
        raise UserError(f"esm.steps must be optimizer steps >= 1, got {e['steps']}")
    dist = setup()
    points = []
    for condition in e["conditions"]:
        for seed in (int(s) for s in e["seeds"]):
            c = run_config(cfg, condition, seed)
            out, rdir = spectra_dir(cfg, condition, seed), run_dir(c)
            kind, msg = broadcast_object(_decide_point(c, out, steps) if dist.is_main else None)
            if kind == "error":
                raise UserError(msg)
            if kind == "train" and dist.is_main:
                shutil.rmtree(rdir, ignore_errors=True)
                for p in out.glob("step_*.npz"):
                    p.unlink()
            barrier()
            if kind == "train":
                train(c, [SpectrumCallback(c, out, steps, grid=grid_name(cfg), grid_identity=point_identity(c))])
            files = [out / f"step_{s:05d}.npz" for s in steps]
            points.append(GridPoint(c["run"], out, files, rdir, "trained" if kind == "train" else "reused"))
    return points


# ----------------------------------------------------------------------------- analysis
def _read_spectrum(p: Path) -> dict[str, Any]:
    with np.load(p, allow_pickle=False) as z:
        row = {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
    row["path"] = str(p)
    return row


def load_spectra(root: str | Path) -> list[dict[str, Any]]:
    """Every step_XXXXX.npz under `root` (an esm root, or one grid directory) as a dict (numpy scalars
    unwrapped); [] when there is none or `root` does not exist."""
    root = Path(root)
    return [_read_spectrum(p) for p in sorted(root.rglob("step_*.npz"))] if root.is_dir() else []


def esm_values(spectra: list[dict[str, Any]], tw_quantile: float = 0.99) -> list[dict[str, Any]]:
    """One row per captured spectrum: grid, run, dataset, model, condition, seed, step + `ESMResult.as_row()`."""
    rows = []
    for s in spectra:
        res = esm_from_spectrum(s, tw_quantile=tw_quantile)
        rows.append({"grid": spectrum_grid(s), "run": s["run"], "dataset": s["dataset"], "model": s["model"],
                     "condition": "random" if s["noise_kind"] == "random" else "clean",
                     "seed": int(s["seed"]), "step": int(s["step"]), **res.as_row()})
    return rows


def analyse(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Path]]:
    """ESM metric of every spectrum under <paths.scores>/esm/, AUC per (grid, step), the null threshold and
    its accuracy -> summary.csv/.md, esm_values.csv and figures there; returns (summary rows, paths written)."""
    root = esm_root(cfg)
    spectra = load_spectra(root)
    if not spectra:
        raise UserError(f"no spectra under {root}/<grid>/<run>/step_*.npz; run esm_experiment.py first")
    q = cfg["spectrum"]["tw_quantile"]
    values = esm_values(spectra, q)
    summary = summarise_esm(values)
    paths = write_table(root / "esm_values", values, markdown=False)
    paths += write_table(root / "summary", summary)
    paths += all_figures(spectra, values, root, tw_quantile=q)
    return summary, paths


def headline(summary: list[dict[str, Any]]) -> str:
    """The per-(grid, step) AUC of ESM and the threshold accuracies as a markdown table."""
    return markdown_table(summary, HEADLINE)


def main_grid(cfg: dict[str, Any]) -> list[GridPoint]:
    """esm_experiment.py: run the grid, then print its headline numbers and the paths written (rank 0)."""
    points = run_grid(cfg)
    if setup().is_main:
        _print_grid(cfg, points)
    barrier()  # every rank leaves (and tears the process group down) together
    return points


def _print_grid(cfg: dict[str, Any], points: list[GridPoint]) -> None:
    """The grid's headline numbers (its own step files only) and the spectra / weights directories."""
    spectra = [_read_spectrum(f) for p in points for f in p.files]
    summary = summarise_esm(esm_values(spectra, cfg["spectrum"]["tw_quantile"]))
    print(f"grid {grid_name(cfg)}: {len(points)} runs ({sum(p.status == 'trained' for p in points)} trained, "
          f"{sum(p.status == 'reused' for p in points)} reused), {len(spectra)} spectra\n{headline(summary)}", end="")
    print("written:" if any(p.status == "trained" for p in points) else "nothing new written; spectra in:")
    for p in points:
        names = " ".join(f.name for f in p.files)
        print(f"  {p.out}/ {names}" + (f" (weights: {p.weights}/)" if p.status == "trained" else " (reused)"))


def main_analyse(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """analyse_esm.py: analyse every grid under <paths.scores>/esm/, print the headline numbers and paths."""
    summary, paths = analyse(cfg)
    print(headline(summary), end="")
    print("written:\n" + "\n".join(f"  {p}" for p in paths))
    return summary
