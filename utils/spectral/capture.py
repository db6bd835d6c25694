"""Spectrum capture: the parameter-Hessian spectrum of a model over a fixed sample set, per checkpoint (the
scoring loop's `score.spectrum=true`) or at given optimizer steps during training (`SpectrumCallback`).

* `compute_spectrum(model, dataset, cfg, dist)` -> dict of arrays: top-k Lanczos eigenvalues,
  SLQ quadrature (density), tr H and tr H^2 of the mean training loss over a fixed sample set,
  all in full fp32 (`utils.evaluate.fp32`: no TF32, no autocast).
* `write_spectrum(cfg, model, dataset, out_path, dist)`: the same, written atomically to a .npz
  (curv_scores/<run>/spectrum_epoch_XXX.npz).
* `SpectrumCallback`: a `utils.callbacks.Callback` capturing the spectrum at given optimizer steps
  into <dir>/step_XXXXX.npz.
Imports nothing of the training loop (the grid in `utils.spectral.esm` does), so scoring can use it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..callbacks import Callback, TrainState
from ..distributed import Dist, all_reduce_sum
from ..evaluate import fp32
from ..io import save_npz
from ..models import forward
from ..waits import stage
from .hessian import HessianOperator, batches_from_dataset, lanczos, slq

SPECTRUM_VERSION = 1


# ----------------------------------------------------------------------------- capture
def sample_indices(n_total: int, n_samples: int, seed: int) -> np.ndarray:
    """The fixed Hessian sample set: `n_samples` indices of a seeded permutation (sorted); 0 = all."""
    if n_samples <= 0 or n_samples >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[:n_samples])


@stage("spectra")
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
    carry the Gauss-Newton curvature), and num_classes (the logits' width, K). All-reduced sums, so every rank
    gets the global values."""
    acc = torch.zeros(5, dtype=torch.float64, device=op.device)  # correct, sum w, sum w^2, K (per batch), batches
    with fp32(op.device):
        for idx, x, y in op.batches:
            p = torch.softmax(forward(op.model, x, idx).double(), -1)
            w = 1.0 - (p * p).sum(-1)
            acc += torch.stack([(p.argmax(-1) == y).sum().double(), w.sum(), (w * w).sum(), acc.new_tensor(p.shape[-1]),
                                acc.new_tensor(1.0)])
    correct, sw, sw2, k, nb = (float(v) for v in all_reduce_sum(acc))
    return {"accuracy": np.float64(correct / op.n_samples), "gn_weight_mean": np.float64(sw / op.n_samples),
            "gn_n_eff": np.float64(sw * sw / sw2 if sw2 > 0 else 0.0), "num_classes": np.int64(round(k / nb))}


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
