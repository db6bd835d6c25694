"""The fix table: test accuracy of each arm against the run trained on the noisy labels and the oracle.

    python results/fix_table.py      -> results/fix_table.csv / .md  (runs of results/evidence_more.sh fix,
                                        results/evidence_cifar.sh none train-only, results/fix_digits.sh,
                                        results/mnist_loop.sh)

gap recovered = (arm - noisy) / (oracle - noisy), the fraction of the test-accuracy gap between the noisy labels and
the true ones that the arm closes. A data set whose runs' logs are not on this machine keeps its rows of the
existing table (logs/ is not in git).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import markdown_table, read_table, write_table  # noqa: E402

SETS = [("cifar10n_aggre", "ev_c10n_aggre", "ev_c10n_none", {a: f"ev_fix_{a}" for a in ("accept", "remove", "random")})]
SETS += [(f"digits_instance_s{s}", f"ev_digits_instance_s{s}", f"ev_fixd_oracle_s{s}",
          {a: f"ev_fixd_{a}_s{s}" for a in ("accept", "remove", "random")}) for s in range(3)]
SETS += [(f"mnist5k_instance_s{s}", f"ev_m5k_inst_s{s}", f"ev_fixm5k_oracle_s{s}",
          {a: f"ev_fixm5k_{a}_s{s}" for a in ("accept", "remove", "random")}) for s in range(3)]


def test_acc(run: str) -> float | None:
    p = ROOT / "logs" / f"{run}.jsonl"
    return float(json.loads(p.read_text().splitlines()[-1])["test_acc"]) if p.is_file() else None


def main() -> None:
    rows = []
    table = ROOT / "results/fix_table.csv"
    before = read_table(table) if table.is_file() else []
    for name, noisy, oracle, arms in SETS:
        base, top = test_acc(noisy), test_acc(oracle)
        if base is None or top is None:
            rows += [r for r in before if r["data"] == name]
            continue
        for arm, run in {"noisy labels": noisy, **arms, "oracle": oracle}.items():
            acc = test_acc(run)
            if acc is None:
                continue
            rows.append({"data": name, "arm": arm, "run": run, "test_acc": acc,
                         "gap_recovered": (acc - base) / (top - base) if top != base else float("nan")})
    paths = write_table(ROOT / "results/fix_table", rows)
    print(markdown_table(rows))
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
