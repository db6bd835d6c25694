"""How well each score and combination ranks injected label noise; chooses the report's default ranking.

    python results/report_ranking.py --select RUN [RUN ...] --report RUN [RUN ...] [--out results/report_ranking]

Every run must be trained with injected noise and scored. For each run and each candidate rule
(`utils.report.ranking.SINGLE` + `COMBINED`): precision at k (k = number of noisy labels), recall in the top 1 %,
AUROC. The rule with the highest mean precision at k over the `--select` runs (ties: mean recall in the top 1 %)
is the choice; `--report` runs are only measured, never chosen on. Writes <out>.csv (+ .md) with a `role` column
and prints the choice beside `DEFAULT_RULE` (the two must agree: docs/report.md shows this table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import report_error  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import markdown_table, write_table  # noqa: E402
from utils.report.build import load_inputs  # noqa: E402
from utils.report.ranking import COMBINED, DEFAULT_RULE, SINGLE, evaluate_rules  # noqa: E402
from utils.runs import open_run  # noqa: E402


def rows_of(name: str, role: str, args: argparse.Namespace) -> list[dict]:
    cfg = load_config(None, [f"run={name}", f"paths.pretrained={args.pretrained}",
                             f"paths.scores={args.scores}"])
    run = open_run(cfg)
    got = load_inputs(run, progress=False)
    target = np.asarray(got["curv"]["is_noisy"], bool)
    if not target.any():
        raise UserError(f"run {name} has no injected label noise to rank")
    n = run.cfg["noise"]
    meta = {"run": name, "role": role, "dataset": str(run.record["dataset"]), "noise_kind": n["kind"],
            "noise_rate": n["rate"], "probs": "out-of-sample" if got["sug"].out_of_sample else "in-sample"}
    return [{**meta, **r} for r in evaluate_rules(got["scores"], target, [*SINGLE, *COMBINED])]


def choose(rows: list[dict]) -> tuple[str, list[dict]]:
    """The rule with the highest mean precision at k over the selection rows (ties: recall in the top 1 %)."""
    sel = [r for r in rows if r["role"] == "select"]
    rules = sorted({r["rule"] for r in sel})
    means = [{"rule": u, "mean_precision_at_k": float(np.mean([r["precision_at_k"] for r in sel if r["rule"] == u])),
              "mean_recall_top1pct": float(np.mean([r["recall_top1pct"] for r in sel if r["rule"] == u])),
              "runs": sum(r["rule"] == u for r in sel)} for u in rules]
    means.sort(key=lambda m: (-m["mean_precision_at_k"], -m["mean_recall_top1pct"], m["rule"]))
    return means[0]["rule"], means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--select", nargs="+", required=True, help="runs the rule is chosen on")
    ap.add_argument("--report", nargs="*", default=[], help="runs only measured")
    ap.add_argument("--out", default=str(ROOT / "results/report_ranking"))
    ap.add_argument("--pretrained", default="pretrained")
    ap.add_argument("--scores", default="curv_scores")
    args = ap.parse_args()
    try:
        rows = [r for name in args.select for r in rows_of(name, "select", args)]
        rows += [r for name in args.report for r in rows_of(name, "report", args)]
        chosen, means = choose(rows)
        paths = write_table(args.out, rows) + write_table(args.out + "_selection", means)
    except UserError as e:
        report_error(str(e))
        sys.exit(2)
    print(markdown_table(means[:8]))
    print(f"chosen on the selection runs: {chosen}; the report's default: {DEFAULT_RULE}"
          + ("" if chosen == DEFAULT_RULE else "  <- DIFFERENT: update utils/report/ranking.py and docs/report.md"))
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
