"""`memorization_report.py run=<run>`: which training examples did the network memorize, on any trained and
scored run, injected noise or not.

Reads the run record, the training statistics and `curv_scores/<run>/curvature.npz`; decodes only the images
it shows. Writes `curv_scores/<run>/report/`: suspects.csv (every sample, ranked; columns in docs/report.md),
suspects.md (the top 50), ranking.csv (runs with injected noise: how each score ranks them), gallery.png,
duplicate_pairs.png, per_class.png, timeline.png and report.html (one self-contained page).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..curvature.analysis import checkpoint_probabilities, load_scores, raw_images, stats_columns
from ..curvature.duplicates import find_conflicting_pairs
from ..data import folder_dir, open_image
from ..errors import UserError
from ..holdout.files import load_holdout
from ..io import atomic_write, markdown_table, write_table, write_text
from ..runs import Run, open_run
from ..scores.catalogue import CATEGORIES, CATEGORY_NAMES
from ..scores.compute import all_scores
from . import figures
from .ranking import DEFAULT_RULE, SINGLE, apply_rule, evaluate_rules, members
from .table import Suggestion, best_epoch, suggestion_from_probs, suggestion_from_stats, suspect_table

FOLDER_DATA = ("imagefolder", "imagenet")


def _fill_predictions(run: Run, stats: dict[str, np.ndarray]) -> None:
    """Runs trained before the statistics kept `other` / `other_prob`: fill them at the last and the best-test
    epoch from those checkpoints (one forward pass each); other epochs stay empty (-1 / NaN)."""
    e_n = stats["loss"].shape
    stats["other"], stats["other_prob"] = np.full(e_n, -1, np.int32), np.full(e_n, np.nan, np.float32)
    for e in {e_n[0] - 1, best_epoch(stats)}:
        epoch = int(stats["epochs"][e])
        if epoch not in run.epochs:
            raise UserError(f"run {run.name}'s statistics lack the predicted classes and epoch {epoch} has no "
                            "checkpoint to recompute them; retrain the run")
        p = checkpoint_probabilities(run, epoch, run.data.train_eval)
        p[np.arange(len(p)), stats["given_label"]] = -1.0
        stats["other"][e], stats["other_prob"][e] = p.argmax(1), p.max(1)


def _suggestion(run: Run, stats: dict[str, np.ndarray], cols: np.ndarray) -> tuple[Suggestion, dict | None]:
    """(suggestion for curv's samples, held-out evidence {"probs" (N, K), "n_out" (N,)} or None) per report.probs:
    `holdout` the holdout stage's files (required), `best` the in-sample best-test-accuracy epoch, `auto` = holdout
    where the run has them, else best. The report never trains: out-of-sample probabilities come from holdout.py."""
    mode = run.cfg["report"]["probs"]
    if mode not in ("auto", "holdout", "best"):
        raise UserError(f"report.probs must be auto, holdout or best, got {mode!r} (out-of-sample probabilities come "
                        f"from their own stage: holdout.py run={run.name})")
    ho = None if mode == "best" else load_holdout(run.scores, run.identity, run.record["given_labels"].numpy(),
                                                   required=mode == "holdout" or bool(run.cfg["report"]["holdout"]),
                                                   name=run.cfg["report"]["holdout"])
    if ho is None:
        return suggestion_from_stats(stats).take(cols), None
    idx = stats["index"][cols]
    probs = ho.mean_probs()[idx]
    sug = suggestion_from_probs(np.nan_to_num(probs, nan=1.0 / probs.shape[1]), stats["given_label"][cols],
                                ho.describe(), True)
    return sug, {"probs": probs, "n_out": ho.n_out[idx], "holdout": ho}


def _sources(run: Run, curv: dict[str, np.ndarray]) -> np.ndarray:
    """Where each sample's image comes from: its file (relative to data.root/data.folder) for folder data,
    `<dataset>:train:<i>` otherwise (i = the source image: a duplicate copy names its original)."""
    src = np.asarray(run.record["source_index"])[np.asarray(curv["index"])]
    if "source_files" in run.record:
        return np.asarray(run.record["source_files"])[src]
    return np.char.add(f"{run.record['dataset']}:train:", src.astype(str))


def _images(run: Run, sources: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Un-normalised images (k, H, W[, 3]) in [0, 1] of the samples at positions `pos`: decoded from their files
    for folder data (only these; the first missing one is an error naming data.root), else from the data set."""
    pos = np.asarray(pos, np.int64)
    if run.cfg["data"]["name"] not in FOLDER_DATA or "source_files" not in run.record:
        return raw_images(run.data.train_eval, pos)
    base = folder_dir(run.cfg)
    size = int(run.record["image_size"])
    paths = [base / str(sources[p]) for p in pos]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"image {missing} of run {run.name} is missing: the images moved? point data.root "
                        f"(now {run.cfg['data']['root'] or '$DATA_ROOT'}) / data.folder at the folder the run was trained on")
    out = []
    for p in paths:
        with open_image(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size)), np.float32) / 255.0)
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


def _pairs(run: Run, curv: dict[str, np.ndarray], scores: dict[str, np.ndarray], value: np.ndarray,
           notes: list[str]) -> list[dict[str, Any]]:
    """Conflicting near-duplicates among the top of the ranking and of curvature (pixel space), or [] with a
    note saying why the search was skipped."""
    r = run.cfg["report"]
    n = len(value)
    mode = str(r["duplicates"])
    if mode not in ("auto", "on", "off"):
        raise UserError(f"report.duplicates must be auto, on or off, got {mode!r}")
    in_memory = run.cfg["data"]["name"] not in FOLDER_DATA or (run.cfg["data"]["name"] == "imagefolder"
                                                                 and run.cfg["data"]["in_memory"])
    if mode == "off" or (mode == "auto" and (not in_memory or n > r["dup_max_n"])):
        notes.append("conflicting-duplicate search skipped (report.duplicates="
                     f"{mode}{'' if mode == 'off' else ': data not in memory or over report.dup_max_n samples'})")
        return []
    k = min(r["dup_top"], n)
    cand = np.unique(np.concatenate([np.argsort(-value, kind="stable")[:k],
                                     np.argsort(-scores["curvature"], kind="stable")[:k]]))
    ds = run.data.train_eval
    pixels = raw_images(ds, np.arange(len(ds))).reshape(len(ds), -1)
    pos = np.asarray(curv["index"])
    rows = find_conflicting_pairs(pixels[pos], np.asarray(curv["given_label"]), cand, k=r["dup_neighbors"],
                                  pixel_rms=r["dup_pixel_rms"])
    notes.append(f"conflicting duplicates: searched the top {k} of the ranking and of curvature ({len(cand)} samples), "
                 f"{r['dup_neighbors']} pixel neighbours each, RMS <= {r['dup_pixel_rms']}: {len(rows)} pairs")
    return rows


def _write_csv(path: Path, table: dict[str, np.ndarray]) -> Path:
    """suspects.csv, written atomically (pandas: 1.3 M rows in seconds)."""
    import pandas as pd

    frame = pd.DataFrame(table)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def _epochs_text(ep: list[int]) -> str:
    """'0, 4, 8' or, for many evenly spaced epochs, '0..60 every 1'."""
    steps = {b - a for a, b in zip(ep, ep[1:])}
    return f"{ep[0]}..{ep[-1]} every {steps.pop()}" if len(ep) > 6 and len(steps) == 1 else ", ".join(map(str, ep))


def load_inputs(run: Run, progress: bool = True) -> dict[str, Any]:
    """What a report ranks, from the run's files: curv (curvature.npz), stats (training statistics), cols (their
    columns for curv's samples), sug (suggested labels), held (the held-out evidence or None), scores (id -> (N,))."""
    curv = load_scores(run)
    stats = run.stats()
    cols = stats_columns(stats, curv["index"])
    if not np.array_equal(stats["given_label"][cols], curv["given_label"]):
        raise UserError("curvature.npz and the training statistics disagree on the labels; rescore the run")
    if "other" not in stats:
        _fill_predictions(run, stats)
    sug, held = _suggestion(run, stats, cols)
    scores = all_scores(stats, curv, cols, sug.given_prob, held, run.cfg["report"]["late_epochs"])
    return {"curv": curv, "stats": stats, "cols": cols, "sug": sug, "held": held, "scores": scores}


def make_report(cfg: dict[str, Any], progress: bool = True, html: bool = True) -> dict[str, Any]:
    """Build curv_scores/<run>/report/ for a trained and scored run; returns paths, the table and the notes."""
    t0 = time.time()
    run = open_run(cfg)
    r = run.cfg["report"]
    got = load_inputs(run, progress)
    curv, stats, cols, sug, scores = (got[k] for k in ("curv", "stats", "cols", "sug", "scores"))
    rule = DEFAULT_RULE if r["ranking"] == "auto" else r["ranking"]
    out = run.scores / "report"
    notes = [f"ranking: {rule}" + (" (the default, chosen by evidence on other runs: docs/report.md)"
                                   if r["ranking"] == "auto" else " (report.ranking)")]
    if "corrected_from" in run.record:
        notes.append(f"trained on labels corrected from run {run.record['corrected_from']} "
                     f"({run.record.get('labels_changed_from_run', '?')} labels changed, "
                     f"{run.record.get('excluded', 0)} samples removed; data.labels={run.cfg['data']['labels']})")
    ep = [int(e) for e in curv["epochs"]]
    notes.append(f"curvature from {len(ep)} scored epochs ({_epochs_text(ep)}) of the {len(run.epochs)} saved "
                 f"({run.epochs[0]}..{run.epochs[-1]})")
    notes.append(f"suggested labels ({sug.kind}): {sug.source}")
    if "memorization" in scores:
        mem = scores["memorization"]
        notes.append(f"memorization p_in - p_out (p_in: the run's p(given), mean of its last {r['late_epochs']} "
                     f"recorded epochs): {int((scores['memorization_lo'] > 0.5).sum())} samples with a 95 % interval "
                     f"above 0.5, median {np.nanmedian(mem):.3f}")
    value = apply_rule(scores, rule)
    pairs = _pairs(run, curv, scores, value, notes)
    sources = _sources(run, curv)
    classes = list(run.record["classes"])
    table = suspect_table(stats, curv, cols, sug, scores, rule, classes, sources, pairs, r)
    canary, cans = canary_mask(run, curv), None
    if canary.any():  # canaries are never listed: the report measures its own recall on them
        hidden = canary[_pos(curv, table["index"])]
        cans = canary_recall(value[canary], table["report_score"][~hidden], r["top"],
                             int((table["category"][~hidden] == CATEGORY_NAMES[1]).sum()),
                             n_errors=estimated_errors(run, curv, got["held"], canary))
        table = {k: (np.arange(1, int((~hidden).sum()) + 1) if k == "rank" else v[~hidden]) for k, v in table.items()}
        notes.append(cans["note"])
    paths = [_write_csv(out / "suspects.csv", table)]
    top = min(r["top"], len(table["rank"]))
    head = [{k: table[k][i].item() if hasattr(table[k][i], "item") else table[k][i] for k in table} for i in range(top)]
    shown = ["rank", "index", "given_class", "suggested_class", "suggested_prob", "category", *members(rule)]
    paths.append(write_text(out / "suspects.md", markdown_table(head[:50], shown)))
    evaluation = []
    if "is_noisy" in table:
        target = np.asarray(curv["is_noisy"], bool) & ~canary
        keep = ~canary
        evaluation = evaluate_rules({k: v[keep] for k, v in scores.items()}, target[keep],
                                    [rule, *[s for s in SINGLE if s != rule]])
        paths += write_table(out / "ranking", evaluation)
        e0 = evaluation[0]
        notes.append(f"known label errors ({int(target.sum())} labels): the report's ranking has precision at k "
                     f"{e0['precision_at_k']:.3f}, recall in the top 1 % {e0['recall_top1pct']:.3f} (ranking.csv)")
    counts = {c: int((table["category"] == c).sum()) for c in CATEGORY_NAMES}
    figs = _figures(run, out, table, stats, cols, curv, pairs, sources, top)
    paths += list(figs.values())
    if html:
        paths.append(_html(run, out, table, head, rule, counts, notes, pairs, sources, figs, stats, curv, cols, sug,
                           cans))
    return {"table": table, "notes": notes, "counts": counts, "pairs": pairs, "evaluation": evaluation,
            "paths": paths, "out_dir": out, "seconds": time.time() - t0, "rule": rule}


def canary_mask(run: Run, curv: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) bool in curv's order: the run's canaries (noise.canaries), all False for a run without."""
    if "is_canary" not in run.record:
        return np.zeros(len(curv["index"]), bool)
    return run.record["is_canary"].numpy()[np.asarray(curv["index"])]


def estimated_errors(run: Run, curv: dict[str, np.ndarray], held: dict | None,
                     canary: np.ndarray) -> tuple[float, float, float] | None:
    """The number of label errors among the non-canary samples (canary (N,) bool, curv's order), with a 95 % interval,
    from the held-out models by the Rogan-Gladen estimator of a prevalence seen through an imperfect test:
    E = N (AP + Sp - 1) / (Se + Sp - 1). The test flags a sample whose held-out most probable class is not its label;
    AP is the share of samples it flags, Se (sensitivity) the share of canaries it flags (Wilson interval over the
    canaries), Sp (specificity) the held-out models' mean test accuracy (Wilson interval over the test set). The
    interval takes the extremes of Se and Sp (AP's own sampling error is left out). None without held-out evidence or
    canaries held out; the estimate is fragile when AP + Sp - 1 is small (held-out models near the noise level)."""
    from ..holdout.memorization import wilson

    if held is None or not canary.any():
        return None
    seen = np.asarray(held["n_out"]) > 0
    flag = np.nanargmax(np.nan_to_num(held["probs"], nan=-1.0), 1) != np.asarray(curv["given_label"])
    if not seen[canary].any():
        return None
    n, ap, se = int((seen & ~canary).sum()), flag[seen & ~canary].mean(), flag[seen & canary].mean()
    sp = float(np.mean(held["holdout"].test_accuracy))
    se_lo, se_hi = (float(v[0]) for v in wilson(np.array([se]), np.array([int((seen & canary).sum())])))
    sp_lo, sp_hi = (float(v[0]) for v in wilson(np.array([sp]), np.array([len(run.data.test)])))

    def rg(se_: float, sp_: float) -> float:
        d = se_ + sp_ - 1.0
        return float(np.clip(n * (ap + sp_ - 1.0) / d, 0, n)) if d > 0 else float(n)

    return rg(se, sp), rg(se_hi, sp_lo), rg(se_lo, sp_hi)


def canary_recall(canary_values: np.ndarray, listed_values: np.ndarray, *ks: int,
                  n_errors: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """The report's recall at k estimated on its canaries: the share of canaries (values (C,)) that rank above the
    k-th listed sample (listed_values (N,), sorted from the top), with the Wilson 95 % interval of C draws, per k.
    With `n_errors` (an estimate of the real label errors among the listed samples and its interval,
    `estimated_errors`), also the expected real errors in the top k: recall at k x n_errors, lower bounds times lower
    bounds, upper times upper, at most k."""
    from ..holdout.memorization import wilson

    c = len(canary_values)
    rows, expected = {}, {}
    for k in sorted({int(k) for k in ks if k > 0}):
        cut = listed_values[min(k, len(listed_values)) - 1]
        found = int((canary_values >= cut).sum())
        lo, hi = wilson(np.array([found / c]), np.array([c]))
        rows[k] = (found / c, float(lo[0]), float(hi[0]))
        if n_errors is not None:
            expected[k] = tuple(min(v * e, k) for v, e in zip(rows[k], n_errors))
    text = "; ".join(f"recall at {k}: {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for k, v in rows.items())
    summary = "; ".join(f"top {k}: {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" + (
        f", about {expected[k][0]:.0f} [{expected[k][1]:.0f}, {expected[k][2]:.0f}] real errors" if expected else "")
        for k, v in rows.items())
    note = (f"canaries: {c} hidden label flips (noise.canaries), never listed; estimated {text} (the share of canaries "
            "ranked above the k-th listed sample, Wilson 95 %)")
    if n_errors is not None:
        note += (f"; of about {n_errors[0]:.0f} [{n_errors[1]:.0f}, {n_errors[2]:.0f}] label errors among the listed "
                 "samples (the held-out models' disagreement, corrected by their sensitivity on the canaries and "
                 "their test accuracy: Rogan-Gladen), expected real errors in the top " +
                 "; ".join(f"{k}: {v[0]:.0f} [{v[1]:.0f}, {v[2]:.0f}]" for k, v in expected.items()))
    return {"recall": rows, "expected": expected, "n_errors": n_errors, "note": note, "summary": summary}


def _pos(curv: dict[str, np.ndarray], index: Any) -> np.ndarray:
    """Positions in the score file's order (sorted by index) of sample indices."""
    return np.searchsorted(np.asarray(curv["index"]), np.asarray(index, np.int64))


def _figures(run: Run, out: Path, table: dict[str, np.ndarray], stats: dict[str, np.ndarray], cols: np.ndarray,
             curv: dict[str, np.ndarray], pairs: list[dict[str, Any]], sources: np.ndarray, top: int) -> dict[str, Path]:
    r = run.cfg["report"]
    g = min(r["gallery"], len(table["rank"]))
    figs = {"gallery": figures.gallery(_images(run, sources, _pos(curv, table["index"][:g])),
                                       table, out / "gallery.png")}
    shown = pairs[:24]
    cls, index = list(run.record["classes"]), np.asarray(curv["index"])
    figs["duplicate_pairs"] = figures.duplicate_pairs(
        _images(run, sources, [p["i"] for p in shown]), _images(run, sources, [p["j"] for p in shown]),
        [(f"#{index[p['i']]} {cls[p['given_i']][:8]}",
          f"#{index[p['j']]} {cls[p['given_j']][:8]}\nRMS {p['pixel_rms']:.3f}") for p in shown],
        out / "duplicate_pairs.png")
    figs["per_class"] = figures.per_class(table, cls, top, out / "per_class.png")
    correct = stats["correct"][:, cols]
    top_pos = cols[_pos(curv, table["index"][:top])]
    noisy = np.asarray(curv["is_noisy"], bool)
    clean = correct[:, ~noisy].mean(1) if noisy.any() else None
    figs["timeline"] = figures.timeline(stats["epochs"], stats["correct"][:, top_pos].mean(1), correct.mean(1),
                                        stats["test_acc"], clean, top, out / "timeline.png")
    return figs


def _html(run: Run, out: Path, table: dict[str, np.ndarray], head: list[dict[str, Any]], rule: str,
          counts: dict[str, int], notes: list[str], pairs: list[dict[str, Any]], sources: np.ndarray,
          figs: dict[str, Path], stats: dict[str, np.ndarray], curv: dict[str, np.ndarray], cols: np.ndarray,
          sug: Suggestion, cans: dict[str, Any] | None = None) -> Path:
    """report.html: the top rows with thumbnails and histories, the pairs, the figures (utils/report/html.py)."""
    from .html import thumbnail_uri, write_report_html

    index = np.asarray(curv["index"])
    pairs = [{**p, "a": int(index[p["i"]]), "b": int(index[p["j"]])} for p in pairs[:24]]
    want = sorted({int(h["index"]) for h in head} | {p["a"] for p in pairs} | {p["b"] for p in pairs})
    imgs = _images(run, sources, _pos(curv, want))
    thumbs = {i: thumbnail_uri(im) for i, im in zip(want, imgs)}
    cls = list(run.record["classes"])
    c, d = run.cfg, run.record
    last = {k: float(stats[k][-1]) for k in ("test_acc",)}
    summary = [("run", run.name), ("data", f"{d['dataset']}: {len(table['rank'])} training samples, {len(cls)} classes"),
               ("noise", f"{c['noise']['kind']} {c['noise']['rate']:g}" if c["noise"]["kind"] != "none" else "none injected"),
               ("model", f"{c['model']['name']} (width {c['model']['width'] or 'default'})"),
               ("training", f"{c['train']['epochs']} epochs; final train fit {float(stats['correct'][-1].mean()):.4f}, "
                            f"test accuracy {last['test_acc']:.4f}"),
               ("ranking", rule), ("categories", ", ".join(f"{k}: {v}" for k, v in counts.items()))]
    pair_rows = [{"a": p["a"], "b": p["b"], "label_a": cls[p["given_i"]], "label_b": cls[p["given_j"]],
                  "distance": float(p["pixel_rms"])} for p in pairs]
    if c["data"]["labels"]:
        summary.insert(3, ("labels", f"{Path(c['data']['labels']).name}, column {c['data']['labels_column']}: "
                                     f"{d.get('labels_changed', '?')} differ from the data set's own"))
    if "corrected_from" in d:
        summary.insert(1, ("corrected from", f"run {d['corrected_from']}: {d.get('labels_changed_from_run', '?')} "
                                             f"labels changed, {d.get('excluded', 0)} removed"))
    if cans:  # the report's recall on this run, measured on its canaries (canary_recall)
        summary.append(("recall (canaries)", cans["summary"]))
    columns = list(table)
    banner = "" if sug.out_of_sample else (
        "Suggestions and categories are in-sample: they come from a checkpoint trained on the very labels they judge, "
        "which in the memorization regime agrees with a wrong label. Run holdout.py run=" + run.name +
        " for out-of-sample suggestions, the likely-mislabeled and memorized categories and the memorization score.")
    return write_report_html(out / "report.html", title=f"Memorization report: {run.name}", summary=summary,
                             notes=notes, columns=columns, rows=head, thumbs=thumbs, classes=cls,
                             categories=[asdict(c) for c in CATEGORIES.values()], pairs=pair_rows, figures=figs,
                             run_name=run.name, run_identity=run.identity, banner=banner,
                             history=histories(stats, cols, _pos(curv, [h["index"] for h in head]),
                                               [int(h["suggested_label"]) for h in head]))


def histories(stats: dict[str, np.ndarray], cols: np.ndarray, pos: np.ndarray, suggested: list[int]) -> dict[int, dict]:
    """Per shown sample (positions `pos` in curv's order): epochs, p(given) and p(suggested class) per recorded epoch
    (NaN where the statistics do not hold it: p(suggested) is known where the suggestion was the top other class, or
    is the given label), the fitted epoch and the epochs of forgetting events (correct -> incorrect)."""
    from ..scores.compute import learning_time

    out = {}
    ep = [int(e) for e in stats["epochs"]]
    for p, s in zip(pos, suggested):
        c = cols[p]
        given = int(stats["given_label"][c])
        pg = np.exp(-stats["loss"][:, c].astype(np.float64))
        if s == given:
            ps = pg
        else:
            ps = np.where(stats["other"][:, c] == s, stats["other_prob"][:, c], np.nan) if "other" in stats else \
                np.full(len(ep), np.nan)
        correct = stats["correct"][:, c].astype(bool)
        lt = int(learning_time(correct[:, None], stats["epochs"])[0])
        forgot = [ep[e + 1] for e in range(len(ep) - 1) if correct[e] and not correct[e + 1]]
        out[int(stats["index"][c])] = {"epochs": ep, "p_given": [round(float(v), 4) for v in pg],
                                       "p_other": [None if not np.isfinite(v) else round(float(v), 4) for v in ps],
                                       "fitted_epoch": lt if lt <= ep[-1] else -1, "forgetting": forgot}
    return out


def main(cfg: dict[str, Any]) -> None:
    """Entry point of memorization_report.py: build the report, print the top 10, the counts and the paths."""
    res = make_report(cfg)
    t = res["table"]
    print("\n".join(res["notes"]))
    print(f"{'rank':>5} {'index':>7}  {'given':>10} -> {'suggested':<10} {'p':>5}  category")
    for i in range(min(10, len(t["rank"]))):
        print(f"{t['rank'][i]:>5} {t['index'][i]:>7}  {t['given_class'][i][:10]:>10} -> {t['suggested_class'][i][:10]:<10} "
              f"{t['suggested_prob'][i]:5.2f}  {t['category'][i]}")
    print("categories: " + ", ".join(f"{k} {v}" for k, v in res["counts"].items()))
    print(f"report built in {res['seconds']:.1f} s; written: " + ", ".join(str(p) for p in res["paths"]))
