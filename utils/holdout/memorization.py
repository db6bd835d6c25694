"""Memorization as the field defines it (Feldman & Zhang 2020): how much more probable the given label is to a model
that trained on the sample than to models that did not,

    memorization(i) = p_in(i) - p_out(i),

p_in the run's own probability of the given label, averaged over its last `late` recorded epochs (training
statistics: exp(-loss)), p_out the mean probability of the given label of the models that held sample i out
(`utils.holdout.files`). Both in [0, 1], so memorization is in [-1, 1].

The interval: each held-out model's p(given) lies in [0, 1], so its variance is at most p(1 - p); the Wilson score
interval for n_out draws at that variance bounds the 95 % interval of p_out (exact in form for 0/1 predictions, as
in Feldman & Zhang's correctness estimate), and memorization's interval is p_in minus p_out's. It narrows with the
number of models that held the sample out: K folds give one each (wide), `holdout.scheme=subsets` several.
"""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054


def p_in(loss: np.ndarray, late: int = 3) -> np.ndarray:
    """(N,) mean over the last `late` rows of exp(-loss) of a loss matrix (E, N) (the run's per-epoch statistics)."""
    loss = np.asarray(loss, np.float64)
    return np.exp(-loss[-max(1, min(late, len(loss))):]).mean(0)


def wilson(p: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (lo, hi) of a mean p (N,) in [0, 1] from n (N,) draws; n = 0 gives (0, 1)."""
    p, n = np.clip(np.asarray(p, np.float64), 0, 1), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)
    return np.clip(lo, 0, 1), np.clip(hi, 0, 1)


def memorization(p_in_: np.ndarray, p_out: np.ndarray, n_out: np.ndarray) -> dict[str, np.ndarray]:
    """memorization (N,) = p_in - p_out and its 95 % interval (`lo`, `hi`); NaN where no model held the sample out."""
    lo_out, hi_out = wilson(np.nan_to_num(p_out), n_out)
    mem = np.where(n_out > 0, p_in_ - p_out, np.nan)
    return {"memorization": mem, "lo": np.where(n_out > 0, p_in_ - hi_out, np.nan),
            "hi": np.where(n_out > 0, p_in_ - lo_out, np.nan)}
