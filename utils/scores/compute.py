"""The computations behind the catalogue's scores (`utils.scores.catalogue`), from the files of earlier stages.

Every function returns {score id: (N,) float64}, higher = more suspicious, for the samples given.
- `training_dynamics`: the run's training statistics (E, N);
- `holdout_scores`: out-of-sample probabilities (N, K) of the holdout stage and the run's p_in;
- `curvature_scores`: the aggregates of a curvature.npz (the scoring stage's file).
"""

from __future__ import annotations

import numpy as np

from ..holdout.memorization import memorization, p_in


def positive_floor(per_epoch: np.ndarray) -> float:
    """The smallest positive per-epoch curvature (the geometric mean's floor for zeros); 1e-30 if none."""
    pos = np.where(per_epoch > 0, per_epoch, np.inf).min(initial=np.inf)
    return float(pos) if np.isfinite(pos) else 1e-30


def curvature_scores(sc: dict[str, np.ndarray], floor: float | None = None) -> dict[str, np.ndarray]:
    """Every per-sample curvature score (id -> (N,) float64) of a curvature.npz: the mean of tr(H^2) estimates
    over epochs (the paper's definition), spike-robust aggregates (geometric mean, median), the official code's
    form (mean unsquared ||Hv||, behind the published numbers up to the factor h/B) and the mean tr H.
    `floor`: the geometric mean's floor (default: `positive_floor` of these samples; pass the whole file's when
    scoring it in column chunks)."""
    pe = np.asarray(sc["per_epoch"], np.float64)
    floor = positive_floor(pe) if floor is None else floor
    out = {"curvature": sc["curvature"].astype(np.float64), "curvature_geomean": np.exp(np.log(np.maximum(pe, floor)).mean(0)),
           "curvature_median": np.median(pe, axis=0)}
    if "hv_norm" in sc:
        out["curvature_official"] = sc["hv_norm"].astype(np.float64)
    if "trace" in sc:
        out["trace"] = sc["trace"].astype(np.float64)
    return out


def learning_time(correct: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """First epoch from which each sample stays correct: correct (E, N) bool, epochs (E,) -> (N,) float.

    A sample wrong at the last recorded epoch gets epochs[-1] + 1 (never learned)."""
    correct = np.asarray(correct, bool)
    epochs = np.asarray(epochs)
    wrong = ~correct
    last_wrong = np.where(wrong.any(0), len(epochs) - 1 - np.argmax(wrong[::-1], axis=0), -1)
    nxt = np.append(epochs, epochs[-1] + 1)
    return nxt[last_wrong + 1].astype(float)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """(N,) number of correct -> incorrect transitions between consecutive recorded epochs of correct (E, N)
    (Toneva et al. 2019; a sample never fitted has none)."""
    c = np.asarray(correct, bool)
    return (c[:-1] & ~c[1:]).sum(0).astype(np.float64)


def training_dynamics(stats: dict[str, np.ndarray], cols: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Training-dynamics scores from the training statistics (loss, correct, margin (E, N)); `cols`: a subset."""
    loss, correct, margin = stats["loss"], stats["correct"], stats["margin"]
    if cols is not None:
        loss, correct, margin = loss[:, cols], correct[:, cols], margin[:, cols]
    loss = loss.astype(np.float64)
    return {"loss_final": loss[-1], "cumulative_loss": loss.sum(0), "learning_time": learning_time(correct, stats["epochs"]),
            "in_confidence": (1.0 - np.exp(-loss)).mean(0), "neg_margin": -margin[-1].astype(np.float64),
            "forgetting": forgetting_events(correct)}


def cleanlab_ranking(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab on (N,) labels and (N, K) probabilities: `confident_learning` = 1 - self-confidence label quality,
    `confident_learning_flag` = find_label_issues (0/1) and `cleanlab_issues` = cleanlab's own ranking (the flagged
    issues first, each group by 1 - self-confidence): what `find_label_issues` gives a user, as a ranking."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    p = np.asarray(probs, np.float64)
    p = p / p.sum(1, keepdims=True)
    bad = 1.0 - get_label_quality_scores(labels, p, method="self_confidence")
    flag = np.asarray(find_label_issues(labels, p, n_jobs=1), bool).astype(np.float64)
    return {"confident_learning": bad, "confident_learning_flag": flag, "cleanlab_issues": flag + bad}


def holdout_scores(given: np.ndarray, probs: np.ndarray, n_out: np.ndarray, p_in: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of out-of-sample probabilities probs (N, K) (mean over the models that held each sample out, n_out (N,))
    and the run's own p(given) p_in (N,): Confident Learning, the held-out margin, memorization and its interval."""
    given = np.asarray(given, np.int64)
    seen = np.asarray(n_out) > 0  # a sample no model held out (possible with few random subsets) gets NaN scores
    p = np.where(seen[:, None], np.asarray(probs, np.float64), 1.0 / np.shape(probs)[1])
    rows = np.arange(len(given))
    pg = p[rows, given]
    other = p.copy()
    other[rows, given] = -np.inf
    out = cleanlab_ranking(given, p)
    mem = memorization(p_in, pg, n_out)
    out.update({"holdout_margin": other.max(1) - pg, "memorization": mem["memorization"],
                "memorization_lo": mem["lo"], "memorization_hi": mem["hi"]})
    return {k: np.where(seen, v, np.nan) for k, v in out.items()}


def all_scores(stats: dict[str, np.ndarray], curv: dict[str, np.ndarray], cols: np.ndarray,
               given_prob: np.ndarray, heldout: dict[str, np.ndarray] | None = None, late: int = 3,
               chunk: int = 65536) -> dict[str, np.ndarray]:
    """Every per-sample score (id -> (N,) float64) of a run, for curv's samples (`cols`: their statistics columns):
    curvature aggregates, training dynamics and, with `heldout` ({"probs": (N, K), "n_out": (N,)}: the holdout
    stage's mean probabilities), the out-of-sample scores; without, `confident_learning` = 1 - `given_prob` (N,) (the
    in-sample suggestion's). Computed `chunk` samples at a time, so (E, N) float64 temporaries stay small."""
    per_epoch = curv["per_epoch"]
    floor = positive_floor(per_epoch)
    parts = []
    for a in range(0, len(cols), chunk):
        sl = slice(a, a + chunk)
        part = curvature_scores({k: (v[:, sl] if k == "per_epoch" else v[sl]) for k, v in curv.items()
                                 if k in ("per_epoch", "curvature", "hv_norm", "trace")}, floor)
        part.update(training_dynamics(stats, cols[sl]))
        parts.append(part)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    given = stats["given_label"][cols]
    if heldout is None:
        out["confident_learning"] = 1.0 - np.asarray(given_prob, np.float64)
        return out
    p_in_ = np.concatenate([p_in(stats["loss"][:, cols[a:a + chunk]], late) for a in range(0, len(cols), chunk)])
    out.update(holdout_scores(given, heldout["probs"], heldout["n_out"], p_in_))
    return out
