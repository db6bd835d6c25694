"""Which canaries look like a person's mistakes? Chooses `noise.canary_power` on CIFAR-10N's selection columns
(random1, worse), never on aggre (the validation).

    python results/canary_generator.py --reference ev_c10n_aggre     -> results/canary_generator.{csv,md}

Canaries are drawn among the samples whose base (aggre) label is right and whose reference confused-with class
differs, with probability proportional to confusability ** power (the reference's mean other_prob over its epochs;
power 0 = uniform). On that same population, a single annotator (random1, worse) made real mistakes. For each power
the table gives the Kolmogorov-Smirnov distance between the confusability of those real mistakes and the weighted
draw's, and their mean confusability; the smallest distance wins (a margin under the 95 % critical value of the
two-sample test is a tie, and the tie goes to the smaller power: the simpler draw). Also where the annotator's wrong
label lies in the reference's confusion: the share that is the confused-with class (a canary's target), and the
share among the classes the reference confused the sample with at any epoch (its `other` votes). From the first,
`noise.canary_confused` = q matching it by moments: q + (1 - q) / (K - 1) = the mean share over the two columns (a
canary goes to the confused-with class with probability q, else to a uniformly random other class).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import load_npz, markdown_table, write_table  # noqa: E402
from utils.noise import reference_confusion  # noqa: E402

POWERS = (0.0, 0.5, 1.0, 2.0, 4.0)
COLUMNS = ("random1", "worse")


def weighted_ks(sample: np.ndarray, values: np.ndarray, weight: np.ndarray) -> float:
    """sup_x |F_sample(x) - F_w(x)|: the empirical CDF of `sample` (M,) against the distribution putting mass
    weight / sum(weight) on each of `values` (N,)."""
    grid = np.unique(np.concatenate([sample, values]))
    fs = np.searchsorted(np.sort(sample), grid, side="right") / len(sample)
    order = np.argsort(values, kind="stable")
    cw = np.concatenate([[0.0], np.cumsum(weight[order])]) / weight.sum()
    fw = cw[np.searchsorted(values[order], grid, side="right")]
    return float(np.abs(fs - fw).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="ev_c10n_aggre")
    ap.add_argument("--labels", default=os.path.join(os.environ.get("DATA_ROOT", "../shared/data"),
                                                     "cifar10n/cifar10_dev_human_labels.csv"))
    ap.add_argument("--out", default=str(ROOT / "results/canary_generator"))
    a = ap.parse_args()
    z = load_npz(ROOT / "pretrained" / a.reference / "train_stats.npz", "train the reference first",
                 keys=("other", "other_prob", "true_label", "given_label"))
    conf, confused_with = reference_confusion(z["other"], z["other_prob"])
    with open(a.labels, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file"])  # the ImageFolder order of the run
    classes = sorted({r["clean"] for r in rows})
    col = {c: np.array([classes.index(r[c]) for r in rows]) for c in ("clean", "aggre", *COLUMNS)}
    true = np.asarray(z["true_label"])
    assert np.array_equal(col["clean"], true) and np.array_equal(col["aggre"], np.asarray(z["given_label"])), \
        "the labels file is not in the reference run's order"
    movable = (col["aggre"] == true) & (confused_with != true)  # where noise.canaries can put a canary
    out = []
    for c in COLUMNS:
        human = movable & (col[c] != true)
        m = int(human.sum())
        crit = 1.358 * np.sqrt(1 / m + 1 / movable.sum())  # two-sample KS, 95 %
        target = float((col[c][human] == confused_with[human]).mean())
        voted = np.zeros((len(true), len(classes)), bool)
        voted[np.arange(len(true))[None, :].repeat(len(z["other"]), 0), np.asarray(z["other"])] = True
        in_vote = float(voted[np.flatnonzero(human), col[c][human]].mean())
        for p in POWERS:
            w = conf[movable] ** p
            out.append({"column": c, "power": p, "human_flips": m, "ks": weighted_ks(conf[human], conf[movable], w),
                        "ks_crit95": float(crit), "mean_conf_human": float(conf[human].mean()),
                        "mean_conf_draw": float((w * conf[movable]).sum() / w.sum()), "target_is_confused_with": target,
                        "target_in_votes": in_vote})
    mean_ks = {p: float(np.mean([r["ks"] for r in out if r["power"] == p])) for p in POWERS}
    best = min(mean_ks, key=mean_ks.get)
    crit = max(r["ks_crit95"] for r in out)
    chosen = min(p for p in POWERS if mean_ks[p] - mean_ks[best] <= crit)
    paths = write_table(a.out, out)
    print(markdown_table(out))
    print("mean KS by power: " + ", ".join(f"{p:g}: {v:.3f}" for p, v in mean_ks.items()))
    print(f"smallest: power {best:g}; within {crit:.3f} of it, the smallest power: {chosen:g}")
    share = float(np.mean([r["target_is_confused_with"] for r in out if r["power"] == 0]))
    k = len(classes)
    q = (share - 1 / (k - 1)) / (1 - 1 / (k - 1))
    print(f"wrong label = the confused-with class for {share:.3f} of the mistakes -> noise.canary_confused = {q:.2f}")
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
