"""Feldman–Zhang memorization: mem(i) = P[correct on i | i in the training subset] - P[correct | not in it],
estimated from M models trained on random subsets (Feldman & Zhang 2020), all trained at once as one batched
ensemble (`utils.curvature.ensemble`, on the GPU when there is one), and compared with the run's scores."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..io import load_npz, save_npz, write_table
from ..runs import Run, open_run, record_to_numpy
from . import plots
from .analysis import SCORE_FILE, baseline_scores, curvature_scores, label, stats_columns
from .ensemble import MLPSpec, default_device, predict, train_ensemble, train_matrix


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
    x, y = x.to(default_device()), y.to(default_device())
    masks = subset_masks(len(y), n_models, fraction, seed)
    steps = -(-int(masks.sum(1).max()) // spec.batch_size) * spec.epochs
    chunks = [range(i, min(i + chunk, n_models)) for i in range(0, n_models, chunk)]
    bar = tqdm(total=steps * len(chunks), desc=f"FZ {n_models} models", disable=not progress, dynamic_ncols=True)
    correct = np.zeros((n_models, len(y)), bool)
    for c, rows in enumerate(chunks):
        mk = torch.from_numpy(masks[rows.start:rows.stop])
        params = train_ensemble(x, y, mk, spec, num_classes, seed=seed * 1000 + c + 1, bar=bar)
        correct[rows.start:rows.stop] = (predict(params, x).argmax(-1) == y).cpu().numpy()
    bar.close()
    out = fz_from_correct(correct, masks)
    return {**out, "masks": masks, "correct": correct, "seconds": time.time() - t0}


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


def _compare(run: Run, res: dict[str, Any], a: dict[str, Any], lines: list[str], summary: dict[str, Any]) -> None:
    """Similarity of mem with every score of the run (when it is scored) -> fz_similarity.csv, fz_binned.png."""
    score_path = run.scores / SCORE_FILE
    if not score_path.is_file():
        lines.append(f"- no {score_path}: score the run to compare curvature with mem")
        return
    sc = load_npz(score_path)
    mem = res["mem"][sc["index"]]
    cands = curvature_scores(sc)
    if (run.dir / "train_stats.npz").is_file() or (run.dir / "stats").is_dir():
        stats = run.stats()
        cands.update(baseline_scores(stats, stats_columns(stats, sc["index"])))
    rows = [{"score": k, "label": label(k), **similarity(mem, v)} for k, v in cands.items()]
    out = run.scores / "analysis"
    lines += ["", "| score | cosine | Pearson | Spearman |", "|---|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['cosine']:.4f} | {r['pearson']:.4f} | {r['spearman']:.4f} |" for r in rows]
    summary["similarity"], summary["rows"] = rows[0], rows
    summary["paths"] += write_table(out / "fz_similarity", rows, markdown="\n".join(lines) + "\n")
    summary["figure"] = plots.fz_binned(mem, sc["curvature"].astype(float), out / "fz_binned.png", a["fz_bins"], rows[0])
    summary["paths"].append(summary["figure"])


def run_fz(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Estimate FZ memorization for a run's training set -> curv_scores/<run>/fz_memorization.npz; compare with
    the run's scores when curvature.npz exists (analysis/fz_similarity.{csv,md}, analysis/fz_binned.png).

    An existing fz_memorization.npz made with the same settings and labels is reused."""
    run = open_run(cfg)
    a, spec, bundle = run.cfg["analysis"], fz_spec(run.cfg), run.data
    x, y = train_matrix(bundle.train_eval)
    x = x.flatten(1)
    path = run.scores / "fz_memorization.npz"
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
    summary: dict[str, Any] = {"path": path, "mem": res["mem"], "seconds": float(res["seconds"]), "settings": settings,
                               "paths": [path]}
    noisy = res["is_noisy"].astype(bool)
    lines = [f"# Feldman–Zhang memorization vs scores: {run.name}", "",
             f"- {settings['n_models']} MLPs {x.shape[1]}-{spec.width}-{spec.width}-{bundle.num_classes} on random "
             f"{settings['fraction']:.0%} subsets, {spec.epochs} epochs, lr {spec.lr}, batch {spec.batch_size} "
             f"({float(res['seconds']):.0f} s to train)",
             f"- mean mem: mislabeled {np.nanmean(res['mem'][noisy]) if noisy.any() else float('nan'):.3f}, "
             f"clean {np.nanmean(res['mem'][~noisy]):.3f}; mean models out of / in each sample's subset "
             f"{res['n_out'].mean():.1f} / {res['n_in'].mean():.1f}"]
    _compare(run, res, a, lines, summary)
    summary["md"] = "\n".join(lines) + "\n"
    return summary


def main(cfg: dict[str, Any]) -> None:
    """Entry point of fz_memorization.py: prints the table and every path written."""
    res = run_fz(cfg)
    print(res["md"])
    print("written: " + ", ".join(str(p) for p in res["paths"]))
