"""Where the report's suggestions come from, and what that does to the real label errors of a run whose truth is known.

    python results/suggestions.py --run ev_c10n_aggre [--holdout init ...]   -> results/suggestions.csv / .md

For each source (in-sample: the best-test epoch's prediction; the holdout stage's default files; any named variant):
of the run's known label errors, the share whose suggestion is the given label (the report agrees with the error),
the share whose suggestion is the true label, the number the report calls likely mislabeled and how many of those are
errors, and the share of the errors in the top 1 % of the default ranking.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.config import load_config  # noqa: E402
from utils.io import markdown_table, write_table  # noqa: E402
from utils.report.build import load_inputs  # noqa: E402
from utils.report.ranking import DEFAULT_RULE, apply_rule, order  # noqa: E402
from utils.report.table import categories, predicted_at  # noqa: E402
from utils.runs import open_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", default=["ev_c10n_aggre"])
    ap.add_argument("--holdout", nargs="*", default=["init"])
    ap.add_argument("--out", default=str(ROOT / "results/suggestions"))
    a = ap.parse_args()
    rows = []
    for name in a.run:
        for probs, hname in [("best", ""), ("holdout", ""), *[("holdout", h) for h in a.holdout]]:
            if hname and not (Path("curv_scores") / name / f"holdout_{hname}" / "holdout.npz").is_file():
                continue
            cfg = load_config(None, [f"run={name}", f"report.probs={probs}", f"report.holdout={hname}"])
            run = open_run(cfg)
            got = load_inputs(run, progress=False)
            sug, curv, stats, cols = got["sug"], got["curv"], got["stats"], got["cols"]
            given, true = np.asarray(curv["given_label"]), np.asarray(curv["true_label"])
            err = given != true
            r = run.cfg["report"]
            pred = predicted_at(stats, len(stats["epochs"]) - 1)[0][cols]
            cat = categories(given=given, predicted=pred, sug=sug, in_pair=np.zeros(len(given), bool),
                             mislabeled_prob=r["mislabeled_prob"], split_prob=r["split_prob"])
            mis = cat == "likely mislabeled"
            top = order(apply_rule(got["scores"], DEFAULT_RULE))[: max(1, len(given) // 100)]
            src = "in-sample (best-test epoch)" if probs == "best" else f"holdout{' ' + hname if hname else ''}"
            rows.append({"run": name, "suggestions": src, "errors": int(err.sum()),
                         "errors_suggested_given": float((sug.label[err] == given[err]).mean()),
                         "errors_suggested_true": float((sug.label[err] == true[err]).mean()),
                         "likely_mislabeled": int(mis.sum()), "of_which_errors": int((mis & err).sum()),
                         "flagged_errors_suggestion_true": float((sug.label[mis & err] == true[mis & err]).mean())
                         if (mis & err).any() else float("nan"),
                         "errors_in_top1pct": float(err[top].sum() / err.sum())})
    paths = write_table(a.out, rows)
    print(markdown_table(rows))
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
