"""The evidence behind the report's defaults: its ranking, its category thresholds and the holdout stage's cost.

    python results/report_ranking.py [--boot 1000] [--out results/evidence]   (after results/evidence_runs.sh etc.)

The split, written before anything was measured (commit "evidence split"): the defaults are chosen on SELECT only;
REPORT is measured, never chosen on. CIFAR-10N aggre (real human label errors, 910 of 10,000) is on the report side.
- SELECT: digits with 10 % symmetric, asymmetric and instance-dependent noise, seeds 0-2 (9 runs); MNIST 10k subset
  with the three kinds (3 runs); CIFAR-10N random1 and worse on CIFAR-10 dev (2 runs).
- REPORT: CIFAR-10N aggre on CIFAR-10 dev.

Writes <out>_ranking.csv (run x rule: precision at k with its paired-bootstrap 95 % interval, recall in the top 1 %,
AUROC), <out>_selection.csv (mean over the selection runs, the interval of each rule's difference to the best, the
cost tier, the choice), <out>_thresholds.csv (report.mislabeled_prob and report.split_prob: what each value flags)
<out>_cost.csv (holdout settings against their cost and quality, for every run that has the variants) and
<out>_report_diffs.csv (on the report runs: the default's precision at k minus cleanlab's and each training-dynamics
score's, with paired-bootstrap intervals).

Choice rules. Ranking: the highest mean precision at k over the selection runs; every rule whose paired-bootstrap
interval of the difference to it includes 0 is tied, and a tie goes to the cheaper rule (cost tier: 0 = training
statistics and curvature, which the report reads anyway; 1 = needs the holdout stage), then the higher mean.
mislabeled_prob: the smallest value at which the flagged true errors' suggestion equals the true label for >= 90 %
(mean over the selection runs). split_prob: the smallest value at which the true label of >= 90 % of the samples the
`ambiguous` category flags is one of the two classes it names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import report_error  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import markdown_table, read_table, write_table  # noqa: E402
from utils.metrics import bootstrap_precision_at_k, interval, precision_at_k  # noqa: E402
from utils.report.build import load_inputs  # noqa: E402
from utils.report.ranking import COMBINED, DEFAULT_RULE, SINGLE, apply_rule, evaluate_rules, members  # noqa: E402
from utils.runs import open_run  # noqa: E402
from utils.scores.catalogue import SCORES  # noqa: E402

KINDS = ("symmetric", "asymmetric", "instance")
SELECT = [f"ev_digits_{k}_s{s}" for s in range(3) for k in KINDS] + [f"ev_mnist_{k}" for k in KINDS] + \
         ["ev_c10n_random1", "ev_c10n_worse"]
REPORT = ["ev_c10n_aggre"]
VARIANTS = ("", "f2_half", "s4_half", "f3_23", "f5", "mlp", "init")  # holdout.name of the cost table's settings
MIS_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SPLIT_GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def family(name: str) -> str:
    return "digits" if "digits" in name else "mnist" if "mnist" in name else "cifar10n"


def cost_tier(rule: str) -> int:
    return int(any(SCORES[m].source == "holdout" for m in members(rule)))


def open_inputs(name: str, args: argparse.Namespace, holdout: str = "") -> tuple[dict, object]:
    cfg = load_config(None, [f"run={name}", f"paths.pretrained={args.pretrained}", f"paths.scores={args.scores}",
                             f"report.holdout={holdout}"])
    run = open_run(cfg)
    return load_inputs(run, progress=False), run


def thresholds(got: dict, run: object) -> list[dict]:
    """What each report.mislabeled_prob / split_prob value flags on one run with held-out evidence."""
    sug, curv = got["sug"], got["curv"]
    given, true = np.asarray(curv["given_label"]), np.asarray(curv["true_label"])
    noisy = given != true
    p = np.nan_to_num(sug.probs, nan=0.0)
    rows = []
    for t in MIS_GRID:
        flag = (sug.label != given) & (sug.prob >= t)
        err = flag & noisy
        rows.append({"key": "mislabeled_prob", "value": t, "flagged": int(flag.sum()),
                     "precision": float(noisy[flag].mean()) if flag.any() else np.nan,
                     "recall": float(err.sum() / max(noisy.sum(), 1)),
                     "suggestion_true": float((sug.label[err] == true[err]).mean()) if err.any() else np.nan})
    idx = np.arange(len(given))
    pg = p[idx, given]
    other = p.copy()
    other[idx, given] = -1
    top = other.argmax(1)
    for s in SPLIT_GRID:
        amb = (pg >= s) & (other.max(1) >= s)
        rows.append({"key": "split_prob", "value": s, "flagged": int(amb.sum()),
                     "precision": float(noisy[amb].mean()) if amb.any() else np.nan, "recall": np.nan,
                     "suggestion_true": float(((true == given) | (true == top))[amb].mean()) if amb.any() else np.nan})
    return rows


def cost_rows(name: str, args: argparse.Namespace) -> list[dict]:
    """One row per holdout variant the run has: nominal cost, seconds, held-out accuracy, ranking quality."""
    out = []
    run_seconds = None
    for v in VARIANTS:
        d = Path(args.scores) / name / (f"holdout_{v}" if v else "holdout")
        if not (d / "holdout.npz").is_file():
            continue
        got, run = open_inputs(name, args, v)
        if run_seconds is None:
            log = Path(run.cfg["paths"]["logs"]) / f"{name}.jsonl"
            run_seconds = sum(json.loads(line)["time"] for line in log.read_text().splitlines())
        ho = got["held"]["holdout"]
        s = ho.settings
        frac = ho.train_mask.mean(1)
        epochs = s["recipe"]["epochs"]
        target = np.asarray(got["curv"]["is_noisy"], bool)
        sug, true = got["sug"], np.asarray(got["curv"]["true_label"])
        cl = got["scores"]["confident_learning"]
        boot = bootstrap_precision_at_k({"cl": cl}, target, args.boot, 0)["cl"]
        models = read_table(d / "models.csv")
        secs = sum(float(r["seconds"]) for r in models)
        out.append({"run": name, "variant": v or "default", "method": s["method"], "scheme": s["scheme"],
                    "models": s["models"], "epochs": epochs, "init": s["init"],
                    "nominal_cost": float((frac * epochs).sum() / run.cfg["train"]["epochs"]) if s["method"] == "recipe"
                    else np.nan, "seconds": secs, "run_seconds": run_seconds,
                    "heldout_acc_true": float(np.mean([r["heldout_acc_true"] for r in models])),
                    "p_at_k_cl": precision_at_k(cl, target), "p_at_k_cl_lo": interval(boot)[0],
                    "p_at_k_cl_hi": interval(boot)[1],
                    "p_at_k_default": precision_at_k(apply_rule(got["scores"], DEFAULT_RULE), target),
                    "suggestion_true_on_errors": float((sug.label[target] == true[target]).mean()),
                    "mean_n_out": float(ho.n_out.mean())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results/evidence"))
    ap.add_argument("--pretrained", default="pretrained")
    ap.add_argument("--scores", default="curv_scores")
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    rules = [*SINGLE, *COMBINED]
    try:
        rows, boots, thr, cost, diffs = [], {}, [], [], []
        for role, names in (("select", SELECT), ("report", REPORT)):
            for name in names:
                if not (Path(args.scores) / name / "holdout" / "holdout.npz").is_file():
                    print(f"run {name} has no holdout files yet: skipped")
                    continue
                got, run = open_inputs(name, args)
                target = np.asarray(got["curv"]["is_noisy"], bool)
                meta = {"run": name, "role": role, "family": family(name), "k": int(target.sum())}
                rows += [{**meta, **r} for r in evaluate_rules(got["scores"], target, rules, args.boot)]
                vals = {r: apply_rule(got["scores"], r) for r in rules if all(m in got["scores"] for m in members(r))}
                b = bootstrap_precision_at_k(vals, target, args.boot, 1)
                if role == "select":
                    boots[name] = b
                else:  # the targets: the default against cleanlab and every single training-dynamics score
                    for other in ("cleanlab_issues", "confident_learning", *[r for r in SINGLE if SCORES[r].source ==
                                                                              "stats" and r != DEFAULT_RULE]):
                        lo, hi = interval(b[DEFAULT_RULE] - b[other])
                        diffs.append({"run": name, "rule": DEFAULT_RULE, "against": other,
                                      "diff": precision_at_k(vals[DEFAULT_RULE], target) - precision_at_k(vals[other], target),
                                      "ci_lo": lo, "ci_hi": hi, "excludes_0": not lo <= 0 <= hi})
                if got["held"] is not None:
                    thr += [{**meta, **t} for t in thresholds(got, run)]
                cost += cost_rows(name, args)
        sel = [n for n in SELECT if n in boots]
        common = [r for r in rules if all(r in boots[n] for n in sel)]
        mean = {r: np.mean([boots[n][r] for n in sel], axis=0) for r in common}
        point = {r: float(np.mean([x["precision_at_k"] for x in rows if x["rule"] == r and x["role"] == "select"]))
                 for r in common}
        best = max(common, key=lambda r: point[r])
        selection = []
        for r in common:
            lo, hi = interval(mean[best] - mean[r])
            selection.append({"rule": r, "mean_precision_at_k": point[r], "ci_lo": interval(mean[r])[0],
                              "ci_hi": interval(mean[r])[1], "diff_to_best_lo": lo, "diff_to_best_hi": hi,
                              "tied_with_best": bool(lo <= 0 <= hi) or r == best, "cost_tier": cost_tier(r),
                              "runs": len(sel)})
        tied = [s for s in selection if s["tied_with_best"]]
        chosen = min(tied, key=lambda s: (s["cost_tier"], -s["mean_precision_at_k"]))["rule"]
        for s in selection:
            s["chosen"] = s["rule"] == chosen
        selection.sort(key=lambda s: -s["mean_precision_at_k"])
        paths = write_table(args.out + "_ranking", rows) + write_table(args.out + "_selection", selection)
        if thr:
            paths += write_table(args.out + "_thresholds", thr)
        if diffs:
            paths += write_table(args.out + "_report_diffs", diffs)
        if cost:
            paths += write_table(args.out + "_cost", cost)
    except UserError as e:
        report_error(str(e))
        sys.exit(2)
    print(markdown_table(selection[:12], ["rule", "mean_precision_at_k", "ci_lo", "ci_hi", "diff_to_best_lo",
                                          "diff_to_best_hi", "tied_with_best", "cost_tier", "chosen"]))
    for key, grid in (("mislabeled_prob", MIS_GRID), ("split_prob", SPLIT_GRID)):
        sel_thr = [t for t in thr if t["key"] == key and t["role"] == "select"]
        for v in grid:
            acc = np.nanmean([t["suggestion_true"] for t in sel_thr if t["value"] == v]) if sel_thr else np.nan
            print(f"{key}={v}: mean suggestion / two-class accuracy over the selection runs {acc:.3f}")
    print(f"chosen on the selection runs: {chosen}; the report's default: {DEFAULT_RULE}"
          + ("" if chosen == DEFAULT_RULE else "  <- DIFFERENT: update utils/report/ranking.py and docs/report.md"))
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
