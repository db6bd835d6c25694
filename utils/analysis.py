"""Mislabel / duplicate detection tables: curvature against the baselines a reviewer asks for.

Reads `curv_scores/<run>/curvature.npz` (the scoring stage) and `pretrained/<run>/train_stats.npz`
(the training stage) and writes `curv_scores/<run>/analysis/`: auroc.csv, auroc.md, auroc_vs_epoch.csv
and the figures. Every score is oriented "higher = more suspicious". AUROC / AUPRC are scikit-learn's
`roc_auc_score` / `average_precision_score`.

Baselines (all from train_stats.npz, per-sample on the un-augmented train set after each epoch):
- loss (final epoch); cumulative sample loss = sum of the per-epoch losses;
- learning time = first epoch from which the sample stays correctly classified (E + 1 if it is wrong
  at the last epoch);
- in-confidence = mean over epochs of 1 - p(given label) = 1 - exp(-loss); negative margin at the final
  epoch (given-label logit minus the largest other logit, negated);
- Confident Learning (cleanlab): 1 - self-confidence label quality of out-of-sample probabilities
  (digits: K-fold cross-validated MLPs, see `utils.memorization.cv_probabilities`; other data: the
  probabilities of the run's checkpoint with the best test accuracy, which saw every training label),
  plus cleanlab's binary `find_label_issues` flag.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import plots
from .checkpoint import atomic_write, list_checkpoints, load_checkpoint, run_dir, score_dir
from .errors import UserError

SCORE_FILE = "curvature.npz"
MAIN = "curvature (mean over epochs)"


# ----------------------------------------------------------------------------- metrics
def auroc(score: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when the target has a single class."""
    from sklearn.metrics import roc_auc_score

    target = np.asarray(target, bool)
    if target.all() or not target.any():
        return float("nan")
    return float(roc_auc_score(target, np.asarray(score, float)))


def auprc(score: np.ndarray, target: np.ndarray) -> float:
    """Average precision (scikit-learn's step-wise area under precision-recall); NaN without positives."""
    from sklearn.metrics import average_precision_score

    target = np.asarray(target, bool)
    if not target.any():
        return float("nan")
    return float(average_precision_score(target, np.asarray(score, float)))


def learning_time(correct: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """First epoch from which each sample stays correct: correct (E, N) bool, epochs (E,) -> (N,) float.

    A sample wrong at the last recorded epoch gets epochs[-1] + 1 (never learned)."""
    correct = np.asarray(correct, bool)
    epochs = np.asarray(epochs)
    wrong = ~correct
    # index of the last wrong epoch (-1 if never wrong); learned from the epoch after it
    last_wrong = np.where(wrong.any(0), len(epochs) - 1 - np.argmax(wrong[::-1], axis=0), -1)
    nxt = np.append(epochs, epochs[-1] + 1)
    return nxt[last_wrong + 1].astype(float)


def baseline_scores(stats: dict[str, np.ndarray], cols: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Training-dynamics baselines (name -> (N,), higher = more suspicious) from a train_stats.npz dict."""
    loss, correct, margin = stats["loss"], stats["correct"], stats["margin"]
    if cols is not None:
        loss, correct, margin = loss[:, cols], correct[:, cols], margin[:, cols]
    loss = loss.astype(np.float64)
    return {
        "loss (final epoch)": loss[-1],
        "cumulative sample loss": loss.sum(0),
        "learning time": learning_time(correct, stats["epochs"]),
        "in-confidence (mean 1-p)": (1.0 - np.exp(-loss)).mean(0),
        "negative margin (final epoch)": -margin[-1].astype(np.float64),
    }


def robust_curvature(per_epoch: np.ndarray) -> dict[str, np.ndarray]:
    """Spike-robust aggregates of per-epoch curvature (E, N): geometric mean and median over epochs."""
    pe = np.asarray(per_epoch, np.float64)
    pos = pe[pe > 0]
    floor = pos.min() if pos.size else 1e-30
    return {"curvature (geometric mean over epochs)": np.exp(np.log(np.maximum(pe, floor)).mean(0)),
            "curvature (median over epochs)": np.median(pe, axis=0)}


OFFICIAL = "curvature (official form: mean ||Hv|| over probes and epochs)"
TRACE = "input-Hessian trace (mean over epochs)"


def curvature_scores(sc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every per-sample curvature score of a curvature.npz (N,) float64: the mean of tr(H^2) estimates over epochs
    (the paper's definition), its spike-robust aggregates, the official code's form (mean unsquared ||Hv||, the
    quantity behind the paper's published numbers up to the factor h/B) and the mean tr H, where present."""
    out = {MAIN: sc["curvature"].astype(np.float64), **robust_curvature(sc["per_epoch"])}
    if "hv_norm" in sc:
        out[OFFICIAL] = sc["hv_norm"].astype(np.float64)
    if "trace" in sc:
        out[TRACE] = sc["trace"].astype(np.float64)
    return out


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab on (N,) labels and (N, K) out-of-sample probabilities: 'score' = 1 - self-confidence
    label quality (N,), 'flagged' = find_label_issues (N,) bool."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = find_label_issues(labels, probs, n_jobs=1)
    return {"score": 1.0 - quality, "flagged": np.asarray(flagged, bool)}


def rows_for(scores: dict[str, np.ndarray], target: np.ndarray, target_name: str, group: str = "score",
             epochs: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One table row (target, score, group, epoch, auroc, auprc, n_pos, n) per named score."""
    target = np.asarray(target, bool)
    return [{"target": target_name, "score": name, "group": group, "epoch": (epochs or {}).get(name, ""),
             "auroc": auroc(s, target), "auprc": auprc(s, target), "n_pos": int(target.sum()), "n": len(target)}
            for name, s in scores.items()]


def per_epoch_auroc(per_epoch: np.ndarray, target: np.ndarray) -> np.ndarray:
    """AUROC (E,) of each row of an (E, N) score matrix."""
    return np.array([auroc(row, target) for row in per_epoch])


def format_md(rows: list[dict[str, Any]], notes: dict[str, list[str]] | None = None, title: str = "") -> str:
    """Markdown: one table per target (score | AUROC | AUPRC), notes under each."""
    out = [f"# {title}", ""] if title else []
    for target in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == target]
        out += [f"## {target}: {rs[0]['n_pos']} positives of {rs[0]['n']}", "", "| score | AUROC | AUPRC |", "|---|---:|---:|"]
        out += [f"| {r['score']} | {r['auroc']:.4f} | {r['auprc']:.4f} |" for r in rs]
        out += [""] + [f"- {n}" for n in (notes or {}).get(target, [])] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(rows[0]) if rows else ["target", "score", "group", "epoch", "auroc", "auprc", "n_pos", "n"]

    def fmt(v: Any) -> str:
        return f"{v:.6f}" if isinstance(v, float) else str(v)

    text = ",".join(keys) + "\n" + "".join(",".join(fmt(r[k]).replace(",", ";") for k in keys) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- loading
def load_npz(path: Path, what: str = "") -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {what or 'run the previous stage first'}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_scores(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    return load_npz(score_dir(cfg) / SCORE_FILE, f"score the run first (score_*.py run={cfg['run']})")


def stats_columns(stats: dict[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """Columns of train_stats arrays for the sample indices of a score file (UserError if absent)."""
    sidx = stats["index"]
    pos = np.searchsorted(sidx, index)
    if (pos >= len(sidx)).any() or not np.array_equal(sidx[pos], index):
        raise UserError("the score file holds sample indices that train_stats.npz lacks; rescore the run")
    return pos


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's own resolved config (from its first checkpoint), with this command's paths and data root."""
    ckpts = list_checkpoints(run_dir(cfg))
    if not ckpts:
        return cfg
    stored = copy.deepcopy(load_checkpoint(ckpts[0][1])["config"])
    stored["paths"] = dict(cfg["paths"])
    if cfg["data"]["root"]:
        stored["data"]["root"] = cfg["data"]["root"]
    stored["analysis"] = dict(cfg.get("analysis", {}))
    return stored


def raw_images(ds: Any, idx: np.ndarray) -> np.ndarray:
    """Un-normalised images of samples idx as floats in [0, 1]: (k, H, W) grey or (k, H, W, 3)."""
    scale = float(getattr(ds.transform, "scale", 255.0))
    out = []
    for i in idx:
        im = ds.raw(int(i))
        a = im.float().numpy() / scale if isinstance(im, torch.Tensor) else np.asarray(im, np.float32) / 255.0
        if isinstance(im, torch.Tensor):
            a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
        out.append(np.clip(a, 0, 1))
    return np.stack(out) if out else np.zeros((0, 1, 1))


def train_matrix(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All un-augmented training inputs (N, C, H, W) and given labels (N,)."""
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    return x, torch.as_tensor(ds.given_labels)


@torch.no_grad()
def checkpoint_probabilities(path: Path, ds: Any, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities (N, K) of a checkpoint's model on a dataset (CPU or the first GPU)."""
    from .train import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(load_checkpoint(path), device)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    return torch.cat([torch.softmax(model(x.to(device)).float(), -1).cpu() for _, x, _ in loader]).numpy()


def cl_probabilities(cfg: dict[str, Any], bundle: Any, stats: dict[str, np.ndarray],
                     progress: bool = True) -> tuple[np.ndarray, str]:
    """Probabilities for Confident Learning and a sentence saying where they come from."""
    from .memorization import MLPSpec, cv_probabilities

    a, t, m = cfg["analysis"], cfg["train"], cfg["model"]
    mode = a["cl_probs"]
    if mode == "auto":
        mode = "cv" if cfg["data"]["name"] == "digits" else "best"
    if mode == "cv":
        x, y = train_matrix(bundle.train_eval)
        width = (m["width"] or 128) if m["name"] == "digits_mlp" else 256
        spec = MLPSpec(width, t["epochs"], t["lr"], t["momentum"], t["batch_size"], t["weight_decay"])
        probs = cv_probabilities(x.flatten(1), y, bundle.num_classes, spec, a["cv_folds"], a["seed"], progress)
        return probs, (f"out-of-sample {a['cv_folds']}-fold cross-validated probabilities (stratified folds; an MLP "
                       f"{x[0].numel()}-{width}-{width}-{bundle.num_classes} per fold, {t['epochs']} epochs, lr {t['lr']}, "
                       f"batch {t['batch_size']}, trained on the other folds' given labels)")
    if mode != "best":
        raise UserError(f"analysis.cl_probs must be auto, cv or best, got {mode!r}")
    saved = dict(list_checkpoints(run_dir(cfg)))
    acc = {int(e): float(a_) for e, a_ in zip(stats["epochs"], stats["test_acc"]) if int(e) in saved}
    if not acc:
        raise UserError(f"no saved checkpoint of {run_dir(cfg)} has a test accuracy in train_stats.npz")
    best = max(acc, key=lambda e: (acc[e], e))
    probs = checkpoint_probabilities(saved[best], bundle.train_eval)
    return probs, (f"softmax probabilities of the best-test-accuracy checkpoint (epoch {best}, test acc {acc[best]:.4f}); "
                   "in-sample: that model was trained on these labels")


# ----------------------------------------------------------------------------- the analysis
def targets_of(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The detection targets a score file supports: mislabeled, injected duplicates, duplicate pairs."""
    noisy = scores["is_noisy"].astype(bool)
    dup = scores.get("is_duplicate", np.zeros_like(noisy)).astype(bool)
    out = {}
    if noisy.any() and not np.array_equal(noisy, dup):
        out["mislabeled (is_noisy)"] = noisy
    if dup.any():
        out["injected duplicate (is_duplicate)"] = dup
        sources = np.isin(scores["index"], scores["duplicate_of"][dup])
        out["duplicate pair (copy or its source)"] = dup | sources
    return out


def analyze(cfg: dict[str, Any], progress: bool = True, figures: bool = True) -> dict[str, Any]:
    """Write curv_scores/<run>/analysis/ (tables + figures); returns rows, markdown, paths and arrays."""
    from .data import build_data

    scores = load_scores(cfg)
    stats = load_npz(run_dir(cfg) / "train_stats.npz", f"train the run first (train_*.py run={cfg['run']})")
    cols = stats_columns(stats, scores["index"])
    if not np.array_equal(stats["given_label"][cols], scores["given_label"]):
        raise UserError("curvature.npz and train_stats.npz disagree on the labels; rescore the run")
    rcfg = run_config(cfg)
    out_dir = score_dir(cfg) / "analysis"
    targets = targets_of(scores)
    if not targets:
        raise UserError(f"run {cfg['run']} has no mislabeled or duplicated samples: nothing to detect "
                        "(train with noise.kind=symmetric noise.rate=0.1 or noise.duplicates=N)")
    try:
        bundle = build_data(rcfg)
    except UserError as e:
        raise UserError(f"cannot load the run's data for the analysis ({e})") from None
    if len(bundle.train_eval) != len(stats["index"]):
        raise UserError("the run's data has another size than its train_stats.npz; check data.root / data.subset")

    ep = scores["epochs"]
    per_epoch = scores["per_epoch"].astype(np.float64)
    main_scores = curvature_scores(scores)
    main_scores.update(baseline_scores(stats, cols))
    probs, cl_source = cl_probabilities(rcfg, bundle, stats, progress)
    cl = confident_learning(scores["given_label"], probs[scores["index"]])
    main_scores["confident learning (1 - label quality)"] = cl["score"]
    main_scores["confident learning flag (binary)"] = cl["flagged"].astype(float)

    rows, notes, epoch_rows = [], {}, []
    stat_loss = stats["loss"][:, cols].astype(np.float64)
    for tname, target in targets.items():
        rows += rows_for(main_scores, target, tname)
        au = per_epoch_auroc(per_epoch, target)
        shown = _shown_epochs(ep, au)
        rows += rows_for({f"curvature @ epoch {int(ep[k])}": per_epoch[k] for k in range(len(ep))}, target, tname,
                         "epoch", {f"curvature @ epoch {int(ep[k])}": int(ep[k]) for k in range(len(ep))})
        au_loss = per_epoch_auroc(stat_loss, target)
        epoch_rows += [{"target": tname, "score": "curvature", "epoch": int(e), "auroc": float(v)} for e, v in zip(ep, au)]
        epoch_rows += [{"target": tname, "score": "loss", "epoch": int(e), "auroc": float(v)}
                       for e, v in zip(stats["epochs"], au_loss)]
        f = cl["flagged"]
        prec = float(target[f].mean()) if f.any() else float("nan")
        notes[tname] = [
            f"best single-epoch curvature: epoch {int(ep[np.nanargmax(au)])} (AUROC {np.nanmax(au):.4f}); "
            f"table shows epochs {', '.join(str(int(ep[k])) for k in shown)} (all epochs in auroc.csv)",
            f"Confident Learning: {cl_source}; flagged {int(f.sum())} samples, precision {prec:.3f}, "
            f"recall {float(f[target].mean()):.3f}",
        ]
    md_rows = [r for r in rows if r["group"] != "epoch" or _is_shown(r, rows, ep, targets)]
    title = (f"Curvature analysis: {cfg['run']} ({scores['dataset']}, "
             f"noise {scores['noise_kind']} {float(scores['noise_rate']):g}, "
             f"{len(ep)} scored epochs {int(ep[0])}..{int(ep[-1])})")
    md = format_md(md_rows, notes, title)
    write_csv(rows, out_dir / "auroc.csv")
    write_csv(epoch_rows, out_dir / "auroc_vs_epoch.csv")
    atomic_write(out_dir / "auroc.md", lambda tmp: Path(tmp).write_text(md))
    figs = make_figures(out_dir, scores, main_scores, targets, stats, cols, bundle, cfg["analysis"]["top_k"]) if figures else {}
    return {"rows": rows, "md": md, "out_dir": out_dir, "figures": figs, "scores": main_scores, "targets": targets,
            "cl_source": cl_source}


def _shown_epochs(ep: np.ndarray, au: np.ndarray, k: int = 5) -> list[int]:
    """Up to k evenly spread epoch positions plus the best one (for the markdown table)."""
    pos = set(np.linspace(0, len(ep) - 1, min(k, len(ep))).round().astype(int).tolist())
    if np.isfinite(au).any():
        pos.add(int(np.nanargmax(au)))
    return sorted(pos)


def _is_shown(row: dict[str, Any], rows: list[dict[str, Any]], ep: np.ndarray, targets: dict[str, np.ndarray]) -> bool:
    au = np.array([r["auroc"] for r in rows if r["target"] == row["target"] and r["group"] == "epoch"])
    return int(np.flatnonzero(ep == row["epoch"])[0]) in _shown_epochs(ep, au)


def make_figures(out_dir: Path, scores: dict[str, np.ndarray], main_scores: dict[str, np.ndarray],
                 targets: dict[str, np.ndarray], stats: dict[str, np.ndarray], cols: np.ndarray, bundle: Any,
                 top_k: int) -> dict[str, Path]:
    """The analysis figures for the first target (mislabeled if any, else duplicates)."""
    tname, target = next(iter(targets.items()))
    short = "noisy" if tname.startswith("mislabeled") else "duplicate"
    curv, ep, per_epoch = main_scores[MAIN], scores["epochs"], scores["per_epoch"].astype(np.float64)
    roc = {k: v for k, v in main_scores.items() if "flag" not in k and "trace" not in k and "median" not in k}
    figs = {
        "roc": plots.roc_curves(roc, target, out_dir / "roc.png", f"ROC for {tname}"),
        "hist": plots.curvature_hist(curv, target, out_dir / "curvature_hist.png", ("clean", short)),
        "epochs": plots.curvature_over_epochs(ep, per_epoch, target, out_dir / "curvature_epochs.png", ("clean", short)),
    }
    series = {"curvature @ epoch": (ep, per_epoch_auroc(per_epoch, target)),
              "loss @ epoch": (stats["epochs"], per_epoch_auroc(stats["loss"][:, cols], target))}
    hl = {MAIN: auroc(curv, target), "cumulative sample loss": auroc(main_scores["cumulative sample loss"], target)}
    figs["auroc_epoch"] = plots.auroc_vs_epoch(series, out_dir / "auroc_vs_epoch.png", hl, f"AUROC for {tname} vs epoch")
    order = np.argsort(-curv, kind="stable")[:top_k]
    idx = scores["index"][order]
    figs["topk"] = plots.topk_grid(raw_images(bundle.train_eval, idx), scores["given_label"][order],
                                   scores["true_label"][order], curv[order], bundle.classes, out_dir / "topk_curvature.png")
    for k, t in list(targets.items())[1:]:
        if k.startswith("injected"):
            figs["roc_dup"] = plots.roc_curves(roc, t, out_dir / "roc_duplicates.png", f"ROC for {k}")
    return figs


def main(cfg: dict[str, Any]) -> None:
    """Entry point of analyze_curvature.py: write the tables and figures, print the markdown table."""
    res = analyze(cfg)
    print(res["md"])
    print(f"wrote {res['out_dir']}/auroc.csv, auroc.md and {len(res['figures'])} figures")
