"""The per-sample table of the memorization report, from arrays alone (no model, no images).

Inputs are what the earlier stages wrote: the run record, the training statistics (loss / correct / margin /
other / other_prob per epoch, `utils.runs.load_stats`), the curvature scores (`curvature.npz`) and, where the run
has them, the holdout stage's out-of-sample probabilities (`utils.holdout.files`). Everything is (N,) in the order of
the record's `index`. `suspect_table` returns the columns of `suspects.csv` (docs/report.md documents each), ranked
by a rule of `utils.report.ranking`. Category names, colours and descriptions: `utils.scores.catalogue`.

Categories (first match wins; thresholds in `report.*`, chosen by evidence: docs/report.md):
- `conflicting duplicate`: one side of a near-identical pair of training images with different given labels;
- `likely mislabeled`: the suggestion is another class with probability >= report.mislabeled_prob (held-out
  probabilities where the run has them, else the best-test-accuracy epoch's in-sample prediction);
- `ambiguous`: held out, the given label and another class both have probability >= report.split_prob (in-sample:
  the final model does not predict the given label and no other class is that confident);
- `memorized` (held-out evidence only): fitted by the run at the end, not predicted by the models that held it
  out, and no other class confident (the long tail the network had to memorize);
- `—` (none of these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..scores.catalogue import CATEGORY_NAMES, NONE, SCORES
from .ranking import apply_rule, order

DUPLICATE, MISLABELED, AMBIGUOUS, MEMORIZED = CATEGORY_NAMES[:4]
# score columns of suspects.csv, in the catalogue's order (those the run has)
SCORE_COLUMNS = tuple(s for s in SCORES if s != "confident_learning_flag")


@dataclass
class Suggestion:
    """Where a sample's suggested label comes from: (N,) label, its probability, the given label's probability;
    `probs` (N, K) the out-of-sample probabilities when `out_of_sample`."""

    label: np.ndarray
    prob: np.ndarray
    given_prob: np.ndarray
    source: str
    out_of_sample: bool
    probs: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """The `suggestion_source` column: 'holdout' (models that never saw the sample) or 'in-sample'."""
        return "holdout" if self.out_of_sample else "in-sample"

    def take(self, cols: np.ndarray) -> Suggestion:
        return Suggestion(self.label[cols], self.prob[cols], self.given_prob[cols], self.source, self.out_of_sample,
                          None if self.probs is None else self.probs[cols])


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
    label = np.nan_to_num(p, nan=-1).argmax(1)
    return Suggestion(label, p[np.arange(len(p)), label], p[np.arange(len(p)), given], source, out_of_sample, p)


def categories(*, given: np.ndarray, predicted: np.ndarray, sug: Suggestion, in_pair: np.ndarray,
               mislabeled_prob: float, split_prob: float) -> np.ndarray:
    """Category per sample (N,) (see the module docstring): given / predicted (the run's final prediction) (N,);
    sug: the suggestion (held-out probabilities in `sug.probs` when out of sample); in_pair (N,) bool."""
    n = len(given)
    cat = np.full(n, NONE, dtype=object)
    rows = np.arange(n)
    mislabeled = (sug.label != given) & (sug.prob >= mislabeled_prob)
    if sug.out_of_sample and sug.probs is not None:
        p = np.nan_to_num(sug.probs, nan=0.0)
        pg = p[rows, given]
        other = p.copy()
        other[rows, given] = -1.0
        top_other = other.max(1)
        ambiguous = (pg >= split_prob) & (top_other >= split_prob)
        memorized = (predicted == given) & (sug.label != given) & (top_other < mislabeled_prob)
        steps = ((memorized, MEMORIZED), (ambiguous, AMBIGUOUS), (mislabeled, MISLABELED), (in_pair, DUPLICATE))
    else:  # in-sample evidence cannot tell memorization apart: no sample is called memorized
        ambiguous = predicted != given
        steps = ((ambiguous, AMBIGUOUS), (mislabeled, MISLABELED), (in_pair, DUPLICATE))
    for mask, name in steps:
        cat[mask] = name  # later assignments win: the list runs from the weakest to the strongest evidence
    return cat.astype(str)


def suspect_table(stats: dict[str, np.ndarray], curv: dict[str, np.ndarray], cols: np.ndarray, sug: Suggestion,
                  scores: dict[str, np.ndarray], rule: str, classes: list[str], sources: np.ndarray,
                  pairs: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, np.ndarray]:
    """The columns of suspects.csv (each (N,)), sorted by rank (1 = most suspicious).

    stats: the run's training statistics, `cols` their columns for curv's samples; curv: curvature.npz; sug: the
    suggestion for curv's samples; scores: `utils.scores.compute.all_scores`; sources: (N,) str; pairs:
    conflicting-duplicate rows with keys i, j (positions in curv's order); r: the `report` config section."""
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
    cat = categories(given=given, predicted=predicted, sug=sug, in_pair=in_pair,
                     mislabeled_prob=r["mislabeled_prob"], split_prob=r["split_prob"])
    value = apply_rule(scores, rule)
    ordr = order(value)
    names = np.asarray(classes, dtype=str)
    dup_of = np.asarray(curv.get("duplicate_of", np.full(len(index), -1)))
    table = {
        "rank": np.arange(1, len(index) + 1), "index": index, "source": np.asarray(sources),
        "given_label": given, "given_class": names[given], "predicted_label": predicted,
        "predicted_class": names[predicted], "suggested_label": sug.label, "suggested_class": names[sug.label],
        "suggested_prob": sug.prob, "given_prob": sug.given_prob,
        "suggestion_source": np.full(len(index), sug.kind), "fitted": last, "fitted_epoch": fitted_epoch,
        "category": cat, "duplicate_of": np.where(dup_of >= 0, dup_of, partner), "report_score": value,
        **{k: scores[k] for k in SCORE_COLUMNS if k in scores},
        **{k: scores[k] for k in ("memorization_lo", "memorization_hi") if k in scores},
    }
    if bool(np.asarray(curv.get("is_noisy", [False])).any()):  # known truth (injected noise, a labels file): grading
        table["true_label"] = np.asarray(curv["true_label"])
        table["is_noisy"] = np.asarray(curv["is_noisy"], bool)
    return {k: (v if k == "rank" else np.asarray(v)[ordr]) for k, v in table.items()}
