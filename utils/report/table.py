"""The per-sample table of the memorization report, from arrays alone (no model, no images).

Inputs are what the earlier stages wrote: the run record, the training statistics (loss / correct / margin /
other / other_prob per epoch, `utils.runs.load_stats`) and the curvature scores (`curvature.npz`). Everything
is (N,) in the order of the record's `index`. `suspect_table` returns the columns of `suspects.csv`
(docs/report.md documents each), ranked by a rule of `utils.report.ranking`.

Categories (first match wins; thresholds in `report.*`, documented in docs/report.md):
- `conflicting duplicate`: one side of a near-identical pair of training images with different given labels;
- `likely mislabeled`: the suggestion (out-of-sample probabilities where the run has them, else the
  best-test-accuracy epoch's) is another class with probability >= report.mislabeled_prob;
- `ambiguous`: the final model does not predict the given label, and no other class is that confident;
- `atypical / memorized`: fitted at the end but only late (learning time above the 1 - `report.late_fraction`
  quantile of all learning times, and after the first epoch) or with curvature above that quantile of curvature;
- `—` (none of these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..curvature.analysis import baseline_scores, confident_learning, curvature_scores, positive_floor
from .ranking import apply_rule, order

CATEGORIES = ("conflicting duplicate", "likely mislabeled", "ambiguous", "atypical / memorized", "—")
SCORE_COLUMNS = ("cumulative_loss", "confident_learning", "curvature", "curvature_median", "curvature_official",
                 "learning_time", "in_confidence", "loss_final", "neg_margin")


@dataclass
class Suggestion:
    """Where a sample's suggested label comes from: (N,) label, its probability, the given label's probability."""

    label: np.ndarray
    prob: np.ndarray
    given_prob: np.ndarray
    source: str
    out_of_sample: bool


def best_epoch(stats: dict[str, np.ndarray]) -> int:
    """Position (in stats['epochs']) of the highest test accuracy (the later one on ties)."""
    acc = np.asarray(stats["test_acc"], np.float64)
    return int(len(acc) - 1 - np.nanargmax(acc[::-1]))


def predicted_at(stats: dict[str, np.ndarray], e: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class (N,), its probability (N,)) at stats position e, from correct / other / other_prob."""
    given = stats["given_label"]
    correct = stats["correct"][e].astype(bool)
    label = np.where(correct, given, stats["other"][e]).astype(np.int64)
    prob = np.where(correct, np.exp(-stats["loss"][e].astype(np.float64)), stats["other_prob"][e])
    return label, prob


def suggestion_from_stats(stats: dict[str, np.ndarray]) -> Suggestion:
    """In-sample suggestion: the best-test-accuracy epoch's prediction (that model saw these labels)."""
    e = best_epoch(stats)
    label, prob = predicted_at(stats, e)
    return Suggestion(label, prob, np.exp(-stats["loss"][e].astype(np.float64)),
                      f"the prediction of epoch {int(stats['epochs'][e])} (best test accuracy "
                      f"{float(stats['test_acc'][e]):.4f}); in-sample: that model was trained on these labels", False)


def suggestion_from_probs(probs: np.ndarray, given: np.ndarray, source: str, out_of_sample: bool) -> Suggestion:
    """Suggestion from probabilities (N, K): the most probable class and its probability."""
    p = np.asarray(probs, np.float64)
    p = p / p.sum(1, keepdims=True)
    label = p.argmax(1)
    return Suggestion(label, p[np.arange(len(p)), label], p[np.arange(len(p)), given], source, out_of_sample)


def all_scores(stats: dict[str, np.ndarray], curv: dict[str, np.ndarray], cols: np.ndarray,
               sug: Suggestion, probs: np.ndarray | None = None, chunk: int = 65536) -> dict[str, np.ndarray]:
    """Every per-sample score (id -> (N,) float64, higher = more suspicious) of a run: the training-dynamics
    baselines, the curvature aggregates and Confident Learning's 1 - self-confidence (cleanlab's label quality
    from `probs` when given, else 1 - the suggestion's given-label probability, which is the same quantity).
    Computed `chunk` samples at a time, so the (E, N) float64 temporaries stay small at ImageNet size."""
    per_epoch = curv["per_epoch"]
    floor = positive_floor(per_epoch)
    parts = []
    for a in range(0, len(cols), chunk):
        sl = slice(a, a + chunk)
        part = curvature_scores({k: (v[:, sl] if k == "per_epoch" else v[sl]) for k, v in curv.items()
                                 if k in ("per_epoch", "curvature", "hv_norm", "trace")}, floor)
        part.update(baseline_scores(stats, cols[sl]))
        parts.append(part)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    given = stats["given_label"][cols]
    out["confident_learning"] = confident_learning(given, probs)["score"] if probs is not None else 1.0 - sug.given_prob
    return out


def categories(*, given: np.ndarray, predicted: np.ndarray, sug: Suggestion, fitted_epoch: np.ndarray,
               first_epoch: int, curvature: np.ndarray, in_pair: np.ndarray, mislabeled_prob: float,
               late_fraction: float) -> np.ndarray:
    """Category per sample (N,) of CATEGORIES (see the module docstring)."""
    n = len(given)
    cat = np.full(n, CATEGORIES[-1], dtype=object)
    fitted = predicted == given
    lt = np.where(fitted_epoch < 0, np.inf, fitted_epoch).astype(np.float64)
    late_cut = np.quantile(lt[np.isfinite(lt)], 1 - late_fraction) if np.isfinite(lt).any() else np.inf
    curv_cut = np.quantile(curvature, 1 - late_fraction)
    atypical = fitted & (((lt > late_cut) & (lt > first_epoch)) | (curvature > curv_cut))
    ambiguous = ~fitted
    mislabeled = (sug.label != given) & (sug.prob >= mislabeled_prob)
    for mask, name in ((atypical, CATEGORIES[3]), (ambiguous, CATEGORIES[2]), (mislabeled, CATEGORIES[1]),
                       (in_pair, CATEGORIES[0])):
        cat[mask] = name  # later assignments win: the list runs from the weakest to the strongest evidence
    return cat.astype(str)


def suspect_table(stats: dict[str, np.ndarray], curv: dict[str, np.ndarray], cols: np.ndarray, sug: Suggestion,
                  scores: dict[str, np.ndarray], rule: str, classes: list[str], sources: np.ndarray,
                  pairs: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, np.ndarray]:
    """The columns of suspects.csv (each (N,)), sorted by rank (1 = most suspicious).

    stats: the run's training statistics, `cols` their columns for curv's samples; curv: curvature.npz; scores:
    `all_scores`; sources: (N,) str; pairs: conflicting-duplicate rows with keys i, j (positions in curv's order);
    r: the `report` config section."""
    index = np.asarray(curv["index"])
    given = stats["given_label"][cols].astype(np.int64)
    last = stats["correct"][-1][cols].astype(bool)
    predicted = predicted_at(stats, len(stats["epochs"]) - 1)[0][cols]
    lt = scores["learning_time"]
    never = lt > stats["epochs"][-1]
    fitted_epoch = np.where(never, -1, lt).astype(np.int64)
    in_pair = np.zeros(len(index), bool)
    partner = np.full(len(index), -1, np.int64)
    for p in pairs:
        in_pair[[p["i"], p["j"]]] = True
        partner[p["i"]], partner[p["j"]] = index[p["j"]], index[p["i"]]
    cat = categories(given=given, predicted=predicted, sug=sug, fitted_epoch=fitted_epoch,
                     first_epoch=int(stats["epochs"][0]), curvature=scores["curvature"], in_pair=in_pair,
                     mislabeled_prob=r["mislabeled_prob"], late_fraction=r["late_fraction"])
    value = apply_rule(scores, rule)
    ordr = order(value)
    names = np.asarray(classes, dtype=str)
    dup_of = np.asarray(curv.get("duplicate_of", np.full(len(index), -1)))
    table = {
        "rank": np.arange(1, len(index) + 1), "index": index, "source": np.asarray(sources),
        "given_label": given, "given_class": names[given], "predicted_label": predicted,
        "predicted_class": names[predicted], "suggested_label": sug.label, "suggested_class": names[sug.label],
        "suggested_prob": sug.prob, "given_prob": sug.given_prob, "fitted": last, "fitted_epoch": fitted_epoch,
        "category": cat, "duplicate_of": np.where(dup_of >= 0, dup_of, partner), "report_score": value,
        **{k: scores[k] for k in SCORE_COLUMNS if k in scores},
    }
    if bool(np.asarray(curv.get("is_noisy", [False])).any()):  # injected noise: the truth, for evaluation
        table["true_label"] = np.asarray(curv["true_label"])
        table["is_noisy"] = np.asarray(curv["is_noisy"], bool)
    return {k: (v if k == "rank" else np.asarray(v)[ordr]) for k, v in table.items()}
