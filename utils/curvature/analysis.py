"""Mislabel / duplicate detection tables: curvature against the baselines a reviewer asks for.

Opens a run (`utils.runs.open_run`), reads its `curv_scores/<run>/curvature.npz` (scoring stage) and its
training statistics (training stage) and writes `curv_scores/<run>/analysis/`: auroc.csv + auroc.md,
auroc_vs_epoch.csv and the figures. Every score is oriented "higher = more suspicious" and keyed by a
stable identifier (`utils.scores.catalogue.SCORES`); tables carry both. AUROC / AUPRC: `utils.metrics`.

Baselines (from the training statistics, per sample on the un-augmented train set after each epoch):
- loss_final; cumulative_loss = sum of the per-epoch losses;
- learning_time = first epoch from which the sample stays correctly classified (E + 1 if wrong at the end);
- in_confidence = mean over epochs of 1 - p(given label) = 1 - exp(-loss); neg_margin at the final epoch;
- forgetting = correct -> incorrect transitions between recorded epochs (Toneva et al. 2019);
- confident_learning (cleanlab): 1 - self-confidence label quality of the probabilities `analysis.cl_probs` names:
  `holdout` the holdout stage's out-of-sample probabilities (`holdout.py run=<run>`, `utils.holdout`: their one
  owner), `best` the run's checkpoint with the best test accuracy (in-sample: it saw every training label), `auto`
  holdout where the run has them, best otherwise. Plus cleanlab's binary `find_label_issues` flag
  (confident_learning_flag). Score ids and labels: `utils.scores.catalogue`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..evaluate import evaluate
from ..holdout.files import load_holdout
from ..io import load_npz, write_table
from ..metrics import auprc, auroc
from ..runs import Run, open_run
from ..scores.catalogue import score_label as label
from ..scores.compute import cleanlab_ranking, curvature_scores, learning_time, positive_floor  # noqa: F401
from ..scores.compute import training_dynamics as baseline_scores
from . import plots

SCORE_FILE = "curvature.npz"
MAIN = "curvature"
TARGETS = {"mislabeled": "mislabeled (is_noisy)", "duplicate": "injected duplicate (is_duplicate)",
           "duplicate_pair": "duplicate pair (copy or its source)"}


# ----------------------------------------------------------------------------- scores
def confident_learning(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab on (N,) labels and (N, K) probabilities (`utils.scores.compute.cleanlab_ranking`): 'score' =
    1 - self-confidence label quality (N,), 'flagged' = find_label_issues (N,) bool. A one-line UserError when
    cleanlab is not installed."""
    try:
        got = cleanlab_ranking(labels, probs)
    except ImportError:
        raise UserError("Confident Learning needs cleanlab (pip install cleanlab); "
                        "or set analysis.cl_probs=none to skip that column") from None
    return {"score": got["confident_learning"], "flagged": got["confident_learning_flag"].astype(bool)}


def rows_for(scores: dict[str, np.ndarray], target: np.ndarray, target_id: str, group: str = "score",
             epochs: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One table row (target, score id, label, group, epoch, auroc, auprc, n_pos, n) per score."""
    target = np.asarray(target, bool)
    return [{"target": target_id, "score": sid, "label": label(sid), "group": group, "epoch": (epochs or {}).get(sid, ""),
             "auroc": auroc(s, target), "auprc": auprc(s, target), "n_pos": int(target.sum()), "n": len(target)}
            for sid, s in scores.items()]


def per_epoch_auroc(per_epoch: np.ndarray, target: np.ndarray) -> np.ndarray:
    """AUROC (E,) of each row of an (E, N) score matrix."""
    return np.array([auroc(row, target) for row in per_epoch])


def format_md(rows: list[dict[str, Any]], notes: dict[str, list[str]] | None = None, title: str = "") -> str:
    """Markdown: one table per target (score | AUROC | AUPRC), notes under each."""
    out = [f"# {title}", ""] if title else []
    for target in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == target]
        out += [f"## {TARGETS.get(target, target)}: {rs[0]['n_pos']} positives of {rs[0]['n']}", "",
                "| score | id | AUROC | AUPRC |", "|---|---|---:|---:|"]
        out += [f"| {r['label']} | `{r['score']}` | {r['auroc']:.4f} | {r['auprc']:.4f} |" for r in rs]
        out += [""] + [f"- {n}" for n in (notes or {}).get(target, [])] + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- inputs
def stats_columns(stats: dict[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """Columns of the training statistics for the sample indices of a score file (UserError if absent)."""
    sidx = stats["index"]
    pos = np.searchsorted(sidx, index)
    if (pos >= len(sidx)).any() or not np.array_equal(sidx[pos], index):
        raise UserError("the score file holds sample indices that the training statistics lack; rescore the run")
    return pos


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


def checkpoint_probabilities(run: Run, epoch: int, ds: Any, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities (N, K) of a saved epoch's model on a dataset (`utils.evaluate.evaluate`: fp32)."""
    model = run.load_model(epoch, run.dist.device)
    return torch.softmax(evaluate(model, ds, run.dist, batch_size, keep_logits=True)["logits"], -1).numpy()


def cl_probabilities(run: Run, stats: dict[str, np.ndarray], progress: bool = True) -> tuple[np.ndarray, str]:
    """Probabilities (N, C) for Confident Learning and a sentence saying where they come from (`analysis.cl_probs`):
    `holdout` the holdout stage's out-of-sample probabilities (`utils.holdout`, the one owner; `holdout.py run=...`),
    `best` the checkpoint with the best test accuracy (in-sample: it saw every training label), `auto` = holdout
    where the run has them, else best."""
    mode = run.cfg["analysis"]["cl_probs"]
    if mode not in ("auto", "holdout", "best"):
        raise UserError(f"analysis.cl_probs must be auto, holdout, best or none, got {mode!r} (cross-validated "
                        f"probabilities now come from their own stage: holdout.py run={run.name})")
    given = run.record["given_labels"].numpy()
    ho = None if mode == "best" else load_holdout(run.scores, run.identity, given, required=mode == "holdout")
    if ho is not None:
        return ho.mean_probs(), ho.describe()
    saved = set(run.epochs)
    acc = {int(e): float(a_) for e, a_ in zip(stats["epochs"], stats["test_acc"]) if int(e) in saved}
    if not acc:
        raise UserError(f"no saved checkpoint of {run.dir} has a test accuracy in its training statistics")
    best = max(acc, key=lambda e: (acc[e], e))
    probs = checkpoint_probabilities(run, best, run.data.train_eval)
    return probs, (f"softmax probabilities of the best-test-accuracy checkpoint (epoch {best}, test acc {acc[best]:.4f}); "
                   "in-sample: that model was trained on these labels")


def targets_of(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The detection targets (id -> (N,) bool) a score file supports: mislabeled, duplicates, duplicate pairs."""
    noisy = scores["is_noisy"].astype(bool)
    dup = scores.get("is_duplicate", np.zeros_like(noisy)).astype(bool)
    out = {}
    if noisy.any() and not np.array_equal(noisy, dup):
        out["mislabeled"] = noisy
    if dup.any():
        out["duplicate"] = dup
        out["duplicate_pair"] = dup | np.isin(scores["index"], scores["duplicate_of"][dup])
    return out


# ----------------------------------------------------------------------------- the analysis
def all_scores(run: Run, scores: dict[str, np.ndarray], stats: dict[str, np.ndarray], cols: np.ndarray,
               progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every detection score (id -> (N,)) of a scored run and Confident Learning's details."""
    out = curvature_scores(scores)
    out.update(baseline_scores(stats, cols))
    if run.cfg["analysis"]["cl_probs"] == "none":
        return out, {}
    probs, source = cl_probabilities(run, stats, progress)
    cl = confident_learning(scores["given_label"], probs[scores["index"]])
    out["confident_learning"] = cl["score"]
    out["confident_learning_flag"] = cl["flagged"].astype(float)
    return out, {**cl, "source": source}


def load_scores(run: Run) -> dict[str, np.ndarray]:
    """The run's curvature.npz (one-line errors: not scored yet, corrupt, another format or project)."""
    return load_npz(run.scores / SCORE_FILE, f"score the run first (score_<dataset>_checkpoint.py run={run.name})",
                    require=("curvature", "epochs"))


def analyze(cfg: dict[str, Any], progress: bool = True, figures: bool = True) -> dict[str, Any]:
    """Write curv_scores/<run>/analysis/ (tables + figures); returns rows, markdown, paths and arrays."""
    run = open_run(cfg)
    scores = load_scores(run)
    stats = run.stats()
    cols = stats_columns(stats, scores["index"])
    if not np.array_equal(stats["given_label"][cols], scores["given_label"]):
        raise UserError("curvature.npz and the training statistics disagree on the labels; rescore the run")
    targets = targets_of(scores)
    if not targets:
        raise UserError(f"run {run.name} has no mislabeled or duplicated samples: nothing to detect "
                        "(train with noise.kind=symmetric noise.rate=0.1 or noise.duplicates=N)")
    if len(run.data.train_eval) != len(stats["index"]):
        raise UserError("the run's data has another size than its training statistics; check data.root")
    out_dir = run.scores / "analysis"
    ep, per_epoch = scores["epochs"], scores["per_epoch"].astype(np.float64)
    main_scores, cl = all_scores(run, scores, stats, cols, progress)
    rows, notes, epoch_rows = [], {}, []
    stat_loss = stats["loss"][:, cols].astype(np.float64)
    for tid, target in targets.items():
        rows += rows_for(main_scores, target, tid)
        au = per_epoch_auroc(per_epoch, target)
        ids = {f"curvature_epoch_{int(e)}": int(e) for e in ep}
        rows += rows_for(dict(zip(ids, per_epoch)), target, tid, "epoch", ids)
        epoch_rows += [{"target": tid, "score": "curvature", "epoch": int(e), "auroc": float(v)} for e, v in zip(ep, au)]
        epoch_rows += [{"target": tid, "score": "loss", "epoch": int(e), "auroc": float(v)}
                       for e, v in zip(stats["epochs"], per_epoch_auroc(stat_loss, target))]
        notes[tid] = [f"best single-epoch curvature: epoch {int(ep[np.nanargmax(au)])} (AUROC {np.nanmax(au):.4f}); "
                      f"table shows epochs {', '.join(str(int(ep[k])) for k in _shown_epochs(ep, au))} "
                      "(all epochs in auroc.csv)"]
        if cl:
            f = cl["flagged"]
            prec = float(target[f].mean()) if f.any() else float("nan")
            notes[tid].append(f"Confident Learning: {cl['source']}; flagged {int(f.sum())} samples, precision "
                              f"{prec:.3f}, recall {float(f[target].mean()):.3f}")
        else:
            notes[tid].append("Confident Learning skipped (analysis.cl_probs=none)")
    md_rows = [r for r in rows if r["group"] != "epoch" or _is_shown(r, rows, ep)]
    title = (f"Curvature analysis: {run.name} ({scores['dataset']}, noise {scores['noise_kind']} "
             f"{float(scores['noise_rate']):g}, {len(ep)} scored epochs {int(ep[0])}..{int(ep[-1])})")
    md = format_md(md_rows, notes, title)
    paths = write_table(out_dir / "auroc", rows, markdown=md) + write_table(out_dir / "auroc_vs_epoch", epoch_rows,
                                                                            markdown=False)
    figs = make_figures(out_dir, scores, main_scores, targets, stats, cols, run.data, run.cfg["analysis"]["top_k"]) \
        if figures else {}
    return {"rows": rows, "md": md, "out_dir": out_dir, "figures": figs, "scores": main_scores, "targets": targets,
            "cl_source": cl.get("source", ""), "paths": paths + list(figs.values())}


def _shown_epochs(ep: np.ndarray, au: np.ndarray, k: int = 5) -> list[int]:
    """Up to k evenly spread epoch positions plus the best one (for the markdown table)."""
    pos = set(np.linspace(0, len(ep) - 1, min(k, len(ep))).round().astype(int).tolist())
    if np.isfinite(au).any():
        pos.add(int(np.nanargmax(au)))
    return sorted(pos)


def _is_shown(row: dict[str, Any], rows: list[dict[str, Any]], ep: np.ndarray) -> bool:
    au = np.array([r["auroc"] for r in rows if r["target"] == row["target"] and r["group"] == "epoch"])
    return int(np.flatnonzero(ep == row["epoch"])[0]) in _shown_epochs(ep, au)


def make_figures(out_dir: Path, scores: dict[str, np.ndarray], main_scores: dict[str, np.ndarray],
                 targets: dict[str, np.ndarray], stats: dict[str, np.ndarray], cols: np.ndarray, bundle: Any,
                 top_k: int) -> dict[str, Path]:
    """The analysis figures for the first target (mislabeled if any, else duplicates); the ROC figures show
    every score of the table."""
    tid, target = next(iter(targets.items()))
    short = "noisy" if tid == "mislabeled" else "duplicate"
    curv, ep, per_epoch = main_scores[MAIN], scores["epochs"], scores["per_epoch"].astype(np.float64)
    shown = {label(k): v for k, v in main_scores.items()}
    figs = {
        "roc": plots.roc_curves(shown, target, out_dir / "roc.png", f"ROC for {TARGETS[tid]}", main=label(MAIN)),
        "hist": plots.curvature_hist(curv, target, out_dir / "curvature_hist.png", ("clean", short)),
        "epochs": plots.curvature_over_epochs(ep, per_epoch, target, out_dir / "curvature_epochs.png", ("clean", short)),
    }
    series = {"curvature @ epoch": (ep, per_epoch_auroc(per_epoch, target)),
              "loss @ epoch": (stats["epochs"], per_epoch_auroc(stats["loss"][:, cols], target))}
    hl = {label(MAIN): auroc(curv, target), label("cumulative_loss"): auroc(main_scores["cumulative_loss"], target)}
    figs["auroc_epoch"] = plots.auroc_vs_epoch(series, out_dir / "auroc_vs_epoch.png", hl,
                                               f"AUROC for {TARGETS[tid]} vs epoch")
    order = np.argsort(-curv, kind="stable")[:top_k]
    idx = scores["index"][order]
    figs["topk"] = plots.topk_grid(raw_images(bundle.train_eval, idx), scores["given_label"][order],
                                   scores["true_label"][order], curv[order], bundle.classes, out_dir / "topk_curvature.png")
    if "duplicate" in targets and tid != "duplicate":
        figs["roc_dup"] = plots.roc_curves(shown, targets["duplicate"], out_dir / "roc_duplicates.png",
                                           f"ROC for {TARGETS['duplicate']}", main=label(MAIN))
    return figs


def main(cfg: dict[str, Any]) -> None:
    """Entry point of analyze_curvature.py: write the tables and figures, print the markdown and the paths."""
    res = analyze(cfg)
    print(res["md"])
    print("written: " + ", ".join(str(p) for p in res["paths"]))

