"""The report's ranking: which per-sample score (or combination) puts the memorized / mislabeled samples first.

Every score is oriented "higher = more suspicious". A *rule* is a score identifier (`cumulative_loss`) or a
rank average of several (`rankavg:cumulative_loss+confident_learning`): each member is turned into its rank
fraction in [0, 1] (ties share their mean rank) and the fractions are averaged. Rank averaging needs no scale
calibration between scores measured in different units (losses, epochs, curvatures).

The default rule (`DEFAULT_RULE`) was chosen on runs other than any the report is used on, by precision at k
(k = number of injected noisy labels) and recall in the top 1 %; the table that chose it is in docs/report.md and
`results/report_ranking.csv` (`results/report_ranking.py`).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..errors import UserError
from ..metrics import auroc

# Chosen by results/report_ranking.py on the digits selection runs (seed 0: symmetric, asymmetric and
# instance-dependent noise at 10 %): the highest mean precision at k; docs/report.md "How the ranking was chosen".
DEFAULT_RULE = "in_confidence"
# The candidates measured for that choice: every single score a run can have, and rank averages of the best.
SINGLE = ("cumulative_loss", "confident_learning", "in_confidence", "loss_final", "neg_margin", "learning_time",
          "curvature", "curvature_median", "curvature_official")
COMBINED = ("rankavg:cumulative_loss+confident_learning", "rankavg:cumulative_loss+curvature",
            "rankavg:cumulative_loss+curvature_official", "rankavg:confident_learning+curvature",
            "rankavg:cumulative_loss+confident_learning+curvature",
            "rankavg:cumulative_loss+confident_learning+learning_time",
            "rankavg:cumulative_loss+confident_learning+curvature_official")


def members(rule: str) -> list[str]:
    """The score identifiers a rule reads."""
    return rule.split(":", 1)[1].split("+") if rule.startswith("rankavg:") else [rule]


def rank_fraction(score: np.ndarray) -> np.ndarray:
    """(N,) -> (N,) in (0, 1]: 1 for the highest score, ties share their mean rank; NaN ranks lowest."""
    s = np.asarray(score, np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return rankdata(s, method="average") / len(s)


def apply_rule(scores: dict[str, np.ndarray], rule: str) -> np.ndarray:
    """The rule's value per sample (N,), higher = more suspicious. UserError for an unknown member."""
    need = members(rule)
    missing = [m for m in need if m not in scores]
    if missing:
        raise UserError(f"report.ranking={rule!r} needs the score(s) {', '.join(missing)}, which this run lacks; "
                        f"it has: {', '.join(sorted(scores))}")
    if len(need) == 1:
        return np.asarray(scores[need[0]], np.float64)
    return np.mean([rank_fraction(scores[m]) for m in need], axis=0)


def order(value: np.ndarray) -> np.ndarray:
    """Sample positions (N,) from most to least suspicious (stable: ties keep index order)."""
    v = np.asarray(value, np.float64)
    return np.argsort(-np.where(np.isnan(v), -np.inf, v), kind="stable")


def precision_at_k(value: np.ndarray, target: np.ndarray, k: int | None = None) -> float:
    """Share of positives among the k highest (k defaults to the number of positives)."""
    target = np.asarray(target, bool)
    k = int(target.sum()) if k is None else k
    return float(target[order(value)[:k]].mean()) if k > 0 else float("nan")


def recall_at_fraction(value: np.ndarray, target: np.ndarray, fraction: float = 0.01) -> float:
    """Share of all positives found in the top `fraction` of the ranking (at least one sample)."""
    target = np.asarray(target, bool)
    k = max(1, int(round(fraction * len(target))))
    return float(target[order(value)[:k]].sum() / target.sum()) if target.any() else float("nan")


def evaluate_rules(scores: dict[str, np.ndarray], target: np.ndarray, rules: tuple[str, ...] | list[str]) -> list[dict]:
    """One row per rule whose members the run has: precision at k, recall in the top 1 %, AUROC."""
    rows = []
    for rule in rules:
        if any(m not in scores for m in members(rule)):
            continue
        v = apply_rule(scores, rule)
        rows.append({"rule": rule, "precision_at_k": precision_at_k(v, target),
                     "recall_top1pct": recall_at_fraction(v, target, 0.01), "auroc": auroc(v, target),
                     "k": int(np.asarray(target, bool).sum()), "n": len(v)})
    return rows
