"""Every per-sample score and every report category, declared once.

Analysis tables, the report's ranking, `suspects.csv`, the figures and `report.html` all read their names, labels,
colours and descriptions from here; nothing else lists them.

A score is oriented "higher = more suspicious" and reads one kind of input:
- `stats`: the run's training statistics (per epoch: loss, correct, margin, other, other_prob; `utils.runs.load_stats`);
- `curvature`: `curv_scores/<run>/curvature.npz` (the scoring stage);
- `holdout`: `curv_scores/<run>/holdout/` (models that never saw the sample; `utils.holdout`).
Its computation lives with its input (`utils.scores.compute`), chunked over samples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    id: str
    label: str  # display label
    source: str  # stats | curvature | holdout
    description: str


@dataclass(frozen=True)
class Category:
    name: str  # the value in suspects.csv
    short: str  # figure titles
    colour: str  # text colour (figures, page badge)
    background: str  # page badge background
    description: str


SCORES: dict[str, Score] = {s.id: s for s in (
    Score("curvature", "curvature (mean over epochs)", "curvature",
          "mean over scored epochs of the Hutchinson estimate of tr(H^2), H the input Hessian of the loss"),
    Score("curvature_geomean", "curvature (geometric mean over epochs)", "curvature", "spike-robust aggregate"),
    Score("curvature_median", "curvature (median over epochs)", "curvature", "spike-robust aggregate"),
    Score("curvature_official", "curvature (official form: mean ||Hv|| over probes and epochs)", "curvature",
          "the official code's unsquared form"),
    Score("trace", "input-Hessian trace (mean over epochs)", "curvature", "mean tr H"),
    Score("loss_final", "loss (final epoch)", "stats", "cross-entropy of the given label at the last epoch"),
    Score("cumulative_loss", "cumulative sample loss", "stats", "sum over recorded epochs of the loss"),
    Score("learning_time", "learning time", "stats", "first epoch from which the sample stays fitted"),
    Score("in_confidence", "in-confidence (mean 1-p)", "stats", "mean over epochs of 1 - p(given)"),
    Score("neg_margin", "negative margin (final epoch)", "stats", "largest other logit minus the given label's"),
    Score("forgetting", "forgetting events", "stats",
          "count of correct -> incorrect transitions between recorded epochs (Toneva et al. 2019)"),
    Score("confident_learning", "confident learning (1 - label quality)", "holdout",
          "1 - p(given) of the out-of-sample probabilities (cleanlab's self-confidence); in-sample fallback"),
    Score("confident_learning_flag", "confident learning flag (binary)", "holdout", "cleanlab's find_label_issues"),
    Score("cleanlab_issues", "cleanlab find_label_issues, ranked", "holdout",
          "cleanlab's flagged issues first, each group by 1 - self-confidence (what find_label_issues gives a user)"),
    Score("holdout_margin", "out-of-sample margin (max other p - p(given))", "holdout",
          "the largest other class's held-out probability minus the given label's"),
    Score("memorization", "memorization p_in - p_out", "holdout",
          "p(given) of the run's own late epochs minus that of the models that held the sample out"),
)}

NONE = "—"
CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("conflicting duplicate", "dup", "#5b2a91", "#efe6fa",
             "one side of a near-identical pair of training images with different given labels"),
    Category("likely mislabeled", "mislab", "#a3211a", "#fde7e5",
             "the models that never saw it confidently predict another class"),
    Category("ambiguous", "ambig", "#8a4b00", "#fff0d4",
             "the held-out probability is split between the given label and another class"),
    Category("memorized", "memo", "#1f4fa3", "#e3ecfb",
             "fitted in-sample, wrong out-of-sample, and no other class is confident (the long tail)"),
    Category(NONE, "", "#4a5260", "#eceff3", "none of these"),
)}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)


def score_label(score_id: str) -> str:
    """Display label of a score id (`curvature_epoch_12` -> 'curvature @ epoch 12')."""
    if score_id.startswith("curvature_epoch_"):
        return f"curvature @ epoch {int(score_id.rsplit('_', 1)[1])}"
    return SCORES[score_id].label if score_id in SCORES else score_id
