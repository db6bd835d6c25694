"""Canaries against real human errors: does the report's recall at k, estimated on its canaries, match its true recall
on the run's known label errors?

    bash results/evidence_more.sh canary        # CIFAR-10N aggre + 1 % canaries (reference: the aggre run)
    python results/canary_validation.py --run ev_c10n_aggre_can --base ev_c10n_aggre   -> results/canary_validation.csv

For k in 100, 200, 500, E and 2E (E: the run's known label errors, not canaries): the share of canaries ranked above
the k-th listed (non-canary) sample, with its Wilson 95 % interval, against the share of the known errors in the top k
listed; where the run has its holdout stage, the report's expected real errors in the top k against the true count;
and the cost of the canaries in test accuracy (the canary run against the base run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.config import load_config  # noqa: E402
from utils.io import markdown_table, write_table  # noqa: E402
from utils.report.build import canary_mask, canary_recall, estimated_errors, load_inputs  # noqa: E402
from utils.report.ranking import DEFAULT_RULE, apply_rule, order  # noqa: E402
from utils.runs import open_run  # noqa: E402


def test_acc(name: str) -> float:
    return float(json.loads(Path(f"logs/{name}.jsonl").read_text().splitlines()[-1])["test_acc"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="ev_c10n_aggre_can")
    ap.add_argument("--base", default="ev_c10n_aggre")
    ap.add_argument("--out", default=str(ROOT / "results/canary_validation"))
    a = ap.parse_args()
    run = open_run(load_config(None, [f"run={a.run}"]))
    got = load_inputs(run, progress=False)
    canary = canary_mask(run, got["curv"])
    human = np.asarray(got["curv"]["is_noisy"], bool) & ~canary
    value = apply_rule(got["scores"], DEFAULT_RULE)
    listed = order(value)
    listed = listed[~canary[listed]]
    e = int(human.sum())
    ks = sorted({100, 200, 500, e, 2 * e})
    got_est = canary_recall(value[canary], value[listed], *ks, n_errors=estimated_errors(run, got["curv"], got["held"], canary))
    rows = []
    for k in ks:
        true = float(human[listed[:k]].sum() / e)
        r, lo, hi = got_est["recall"][k]
        row = {"k": k, "canary_recall": r, "canary_lo": lo, "canary_hi": hi, "true_recall": true,
               "agrees": lo <= true <= hi, "canaries": int(canary.sum()), "known_errors": e}
        if got_est["expected"]:
            x, xlo, xhi = got_est["expected"][k]
            row.update(expected_errors=x, expected_lo=xlo, expected_hi=xhi, true_errors=int(human[listed[:k]].sum()),
                       estimated_total=got_est["n_errors"][0], estimated_lo=got_est["n_errors"][1],
                       estimated_hi=got_est["n_errors"][2])
        rows.append(row)
    meta = {"test_acc_with_canaries": test_acc(a.run), "test_acc_base": test_acc(a.base)}
    paths = write_table(a.out, [{**r, **meta} for r in rows])
    print(markdown_table(rows))
    print(f"test accuracy with canaries {meta['test_acc_with_canaries']:.4f}, without {meta['test_acc_base']:.4f}")
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
