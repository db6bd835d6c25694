"""Feldman–Zhang memorization on small data, by training many MLPs at once.

mem(i) = P[model correct on i | i in its training subset] - P[correct on i | i not in it],
estimated from M models trained on random subsets (Feldman & Zhang 2020). The M models are
trained *together*: their weights are stacked into (M, in, out) tensors and every step is one
batched matmul per layer, so M = 200 two-layer MLPs on digits train in about a minute on one
CPU core. Model m sees only the samples where `masks[m]` is True, in its own shuffled order.

The same engine gives Confident Learning its out-of-sample probabilities on digits
(`cv_probabilities`: K models, model k trained on every fold but k, predicting fold k).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class MLPSpec:
    """A `in -> width -> width -> classes` ReLU MLP (the digits_mlp shape) and its SGD recipe."""

    width: int = 256
    epochs: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0


Params = list[torch.Tensor]  # [W1 (M,D,H), b1 (M,1,H), W2 (M,H,H), b2 (M,1,H), W3 (M,H,K), b3 (M,1,K)]


def init_params(m: int, d_in: int, width: int, k: int, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> Params:
    """M independent initialisations, each distributed as torch.nn.Linear's default (U(+-1/sqrt(fan_in)))."""
    params = []
    for fan_in, fan_out in ((d_in, width), (width, width), (width, k)):
        bound = 1.0 / np.sqrt(fan_in)
        w = (torch.rand(m, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(m, 1, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        params += [w.to(dtype), b.to(dtype)]
    return params


def ensemble_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits (M, B, K) of the M models for inputs x (M, B, D) (one batch per model) or (B, D) (shared)."""
    w1, b1, w2, b2, w3, b3 = params
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(w1.shape[0], -1, -1)
    h = torch.relu(torch.baddbmm(b1, x, w1))
    h = torch.relu(torch.baddbmm(b2, h, w2))
    return torch.baddbmm(b3, h, w3)


def epoch_order(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's visiting order: (M, L) sample indices and (M, L) validity, L = the largest subset.

    Row m lists model m's subset in a fresh random order, padded at the end (valid=False) when its
    subset is smaller than the largest one.
    """
    m, n = masks.shape
    keys = torch.rand(m, n, generator=generator, dtype=torch.float64)
    keys = torch.where(masks, keys, torch.full_like(keys, 2.0))  # out-of-subset samples sort last
    order = keys.argsort(dim=1)
    length = int(masks.sum(1).max())
    order = order[:, :length]
    valid = torch.gather(masks, 1, order)
    return order, valid


def train_ensemble(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, spec: MLPSpec, num_classes: int, seed: int = 0,
                   progress: bool = True, desc: str = "ensemble", bar: tqdm | None = None) -> Params:
    """Train M MLPs, model m on the samples where masks[m] (M, N) is True; x (N, D), y (N,) int64.

    Each model runs plain minibatch SGD (momentum, weight decay) with mean cross-entropy over its
    own batch, exactly as M separate `torch.optim.SGD` runs would (the summed loss decouples); a model
    whose subset is smaller than the largest skips the padded steps at the end of each epoch.
    """
    g = torch.Generator().manual_seed(seed)
    m = masks.shape[0]
    params = [p.requires_grad_() for p in init_params(m, x.shape[1], spec.width, num_classes, g, x.dtype)]
    bufs = [torch.zeros_like(p) for p in params]
    length = int(masks.sum(1).max())
    steps = -(-length // spec.batch_size)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=spec.epochs * steps, desc=desc, disable=not progress, dynamic_ncols=True)
    for _ in range(spec.epochs):
        order, valid = epoch_order(masks, g)
        for s in range(steps):
            idx = order[:, s * spec.batch_size:(s + 1) * spec.batch_size]
            w = valid[:, s * spec.batch_size:(s + 1) * spec.batch_size].to(x.dtype)
            logits = ensemble_logits(params, x[idx])
            losses = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].reshape(-1), reduction="none")
            per_model = (losses.view_as(w) * w).sum(1) / w.sum(1).clamp_min(1)
            grads = torch.autograd.grad(per_model.sum(), params)
            _sgd_step(params, grads, bufs, w.sum(1) > 0, spec)
            bar.update(1)
    if own_bar:
        bar.close()
    return [p.detach() for p in params]


@torch.no_grad()
def _sgd_step(params: Params, grads: tuple[torch.Tensor, ...], bufs: list[torch.Tensor], active: torch.Tensor,
              spec: MLPSpec) -> None:
    """torch.optim.SGD's update (coupled weight decay, momentum buffer starting at the first gradient), applied
    only to the models with a sample in this step (a model whose subset is used up must not coast on momentum)."""
    on = active.view(-1, 1, 1)
    for p, g, b in zip(params, grads, bufs):
        g = g + spec.weight_decay * p if spec.weight_decay else g
        b.copy_(torch.where(on, spec.momentum * b + g, b))
        p.sub_(torch.where(on, spec.lr * b, torch.zeros_like(b)))


@torch.no_grad()
def predict(params: Params, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Logits (M, N, K) of every model on every sample of x (N, D)."""
    return torch.cat([ensemble_logits(params, x[i:i + batch]) for i in range(0, len(x), batch)], dim=1)


# ----------------------------------------------------------------------------- Feldman–Zhang
def subset_masks(n: int, m: int, fraction: float, seed: int) -> np.ndarray:
    """(M, N) bool: row m holds exactly round(fraction * N) True entries, drawn uniformly."""
    rng = np.random.default_rng(seed)
    size = int(round(fraction * n))
    masks = np.zeros((m, n), bool)
    for r in range(m):
        masks[r, rng.permutation(n)[:size]] = True
    return masks


def fz_from_correct(correct: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Feldman–Zhang estimate from per-model correctness (M, N) and training masks (M, N).

    Returns mem (N,) = p_in - p_out, p_in, p_out, n_in, n_out; mem is NaN where a sample was
    never (or always) in a training subset.
    """
    correct, masks = np.asarray(correct, float), np.asarray(masks, bool)
    n_in, n_out = masks.sum(0), (~masks).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(n_in > 0, (correct * masks).sum(0) / n_in, np.nan)
        p_out = np.where(n_out > 0, (correct * ~masks).sum(0) / n_out, np.nan)
    return {"mem": p_in - p_out, "p_in": p_in, "p_out": p_out, "n_in": n_in, "n_out": n_out}


def feldman_zhang(x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: MLPSpec, n_models: int = 200,
                  fraction: float = 0.7, seed: int = 0, chunk: int = 100, progress: bool = True) -> dict[str, Any]:
    """Train `n_models` MLPs on random `fraction` subsets of (x (N, D), y (N,)) and estimate mem (N,).

    Models train in chunks of `chunk` (memory); one progress bar counts all steps. Returns the
    arrays of `fz_from_correct` plus masks (M, N), correct (M, N) and seconds.
    """
    t0 = time.time()
    masks = subset_masks(len(y), n_models, fraction, seed)
    steps = -(-int(masks.sum(1).max()) // spec.batch_size) * spec.epochs
    chunks = [range(i, min(i + chunk, n_models)) for i in range(0, n_models, chunk)]
    bar = tqdm(total=steps * len(chunks), desc=f"FZ {n_models} models", disable=not progress, dynamic_ncols=True)
    correct = np.zeros((n_models, len(y)), bool)
    for c, rows in enumerate(chunks):
        mk = torch.from_numpy(masks[rows.start:rows.stop])
        params = train_ensemble(x, y, mk, spec, num_classes, seed=seed * 1000 + c + 1, bar=bar)
        correct[rows.start:rows.stop] = (predict(params, x).argmax(-1) == y).numpy()
    bar.close()
    out = fz_from_correct(correct, masks)
    return {**out, "masks": masks, "correct": correct, "seconds": time.time() - t0}


def cv_probabilities(x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: MLPSpec, folds: int = 5,
                     seed: int = 0, progress: bool = True) -> np.ndarray:
    """Out-of-sample class probabilities (N, K): stratified K-fold, model k trained on all folds but k."""
    from sklearn.model_selection import StratifiedKFold

    yn = y.numpy()
    counts = np.bincount(yn, minlength=num_classes)
    n_splits = int(min(folds, counts[counts > 0].min())) if (counts > 0).any() else folds
    n_splits = max(n_splits, 2)
    split = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(yn)), yn)
    test_sets = [te for _, te in split]
    masks = np.ones((len(test_sets), len(yn)), bool)
    for k, te in enumerate(test_sets):
        masks[k, te] = False
    params = train_ensemble(x, y, torch.from_numpy(masks), spec, num_classes, seed=seed, progress=progress,
                            desc=f"{len(test_sets)}-fold CV")
    probs = torch.softmax(predict(params, x), -1).numpy()
    out = np.zeros((len(yn), num_classes))
    for k, te in enumerate(test_sets):
        out[te] = probs[k, te]
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine similarity, Pearson and Spearman correlation of two score vectors (N,) (NaNs dropped)."""
    from scipy.stats import pearsonr, spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"cosine": cos, "pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]), "n": int(ok.sum())}


# ----------------------------------------------------------------------------- the run-level command
def fz_spec(cfg: dict[str, Any]) -> MLPSpec:
    """The FZ models' recipe: analysis.fz_* keys, 0 meaning the run's own value."""
    a, t, m = cfg["analysis"], cfg["train"], cfg["model"]
    width = a["fz_width"] or ((m["width"] or 128) if m["name"] == "digits_mlp" else 256)
    return MLPSpec(width, a["fz_epochs"] or t["epochs"], a["fz_lr"] or t["lr"], t["momentum"],
                   a["fz_batch_size"] or t["batch_size"], t["weight_decay"])


def run_fz(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Estimate FZ memorization for a run's training set -> curv_scores/<run>/fz_memorization.npz; compare with
    the run's scores when curvature.npz exists (analysis/fz_similarity.{csv,md}, analysis/fz_binned.png).

    An existing fz_memorization.npz made with the same settings and labels is reused."""
    from . import plots
    from .analysis import (
        SCORE_FILE,
        baseline_scores,
        curvature_scores,
        load_npz,
        run_config,
        stats_columns,
        train_matrix,
        write_csv,
    )
    from .checkpoint import atomic_write, record_to_numpy, run_dir, save_npz, score_dir
    from .data import build_data

    rcfg = run_config(cfg)
    a = rcfg["analysis"]
    spec = fz_spec(rcfg)
    bundle = build_data(rcfg)
    x, y = train_matrix(bundle.train_eval)
    x = x.flatten(1)
    path = score_dir(cfg) / "fz_memorization.npz"
    settings = {"n_models": a["fz_models"], "fraction": a["fz_fraction"], "width": spec.width, "epochs": spec.epochs,
                "lr": spec.lr, "batch_size": spec.batch_size, "seed": a["seed"]}
    res = None
    if path.is_file():
        old = load_npz(path)
        if all(float(old[k]) == float(v) for k, v in settings.items()) and np.array_equal(old["given_label"], y.numpy()):
            res = old
    if res is None:
        out = feldman_zhang(x, y, bundle.num_classes, spec, a["fz_models"], a["fz_fraction"], a["seed"], a["fz_chunk"], progress)
        res = {**out, **{k: np.array(v) for k, v in settings.items()}, **record_to_numpy(bundle.record)}
        res["seconds"] = np.array(out["seconds"])
        save_npz(path, **res)
    summary: dict[str, Any] = {"path": path, "mem": res["mem"], "seconds": float(res["seconds"]), "settings": settings}
    noisy = res["is_noisy"].astype(bool)
    lines = [f"# Feldman–Zhang memorization vs scores: {cfg['run']}", "",
             f"- {settings['n_models']} MLPs {x.shape[1]}-{spec.width}-{spec.width}-{bundle.num_classes} on random "
             f"{settings['fraction']:.0%} subsets, {spec.epochs} epochs, lr {spec.lr}, batch {spec.batch_size} "
             f"({float(res['seconds']):.0f} s to train)",
             f"- mean mem: mislabeled {np.nanmean(res['mem'][noisy]) if noisy.any() else float('nan'):.3f}, "
             f"clean {np.nanmean(res['mem'][~noisy]):.3f}; mean models out of / in each sample's subset "
             f"{res['n_out'].mean():.1f} / {res['n_in'].mean():.1f}"]
    score_path = score_dir(cfg) / SCORE_FILE
    if score_path.is_file():
        sc = load_npz(score_path)
        mem = res["mem"][sc["index"]]
        cands = curvature_scores(sc)
        stats_path = run_dir(cfg) / "train_stats.npz"
        if stats_path.is_file():
            stats = load_npz(stats_path)
            cands.update(baseline_scores(stats, stats_columns(stats, sc["index"])))
        rows = [{"score": k, **similarity(mem, v)} for k, v in cands.items()]
        write_csv(rows, score_dir(cfg) / "analysis" / "fz_similarity.csv")
        lines += ["", "| score | cosine | Pearson | Spearman |", "|---|---:|---:|---:|"]
        lines += [f"| {r['score']} | {r['cosine']:.4f} | {r['pearson']:.4f} | {r['spearman']:.4f} |" for r in rows]
        summary["similarity"] = rows[0]
        summary["rows"] = rows
        summary["figure"] = plots.fz_binned(mem, sc["curvature"].astype(float), score_dir(cfg) / "analysis" / "fz_binned.png",
                                            a["fz_bins"], rows[0])
    else:
        lines.append(f"- no {score_path}: score the run to compare curvature with mem")
    md = "\n".join(lines) + "\n"
    atomic_write(score_dir(cfg) / "analysis" / "fz_similarity.md", lambda t: Path(t).write_text(md))
    summary["md"] = md
    return summary


def main(cfg: dict[str, Any]) -> None:
    """Entry point of fz_memorization.py."""
    res = run_fz(cfg)
    print(res["md"])
    print(f"wrote {res['path']}")
