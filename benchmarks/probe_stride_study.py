"""Probe / stride study: mislabel AUROC of epoch-averaged curvature against probes per epoch and scored-epoch stride.

    python benchmarks/probe_stride_study.py --config configs/digits.yaml [key=value ...] [--methods fd,fd@1e-2,exact]
        [--subset N] [--probes 1,2,5,10] [--strides 1,2,4,8] [--out benchmarks/results]

Reads the run's checkpoints (train it first), scores `--subset` training samples (0 = all; a fixed random
subset otherwise) at every saved epoch with max(--probes) per-sample seeded probes (the scorer's probes),
caches the per-probe values under <paths.scores>/probe_stride_<name>/ (resumable), and writes
<out>/probe_stride_<name>.csv and .png. A setting (n, stride) averages groups of n probes (disjoint groups are the replicates:
10 at n=1, 5 at n=2, ...) over epochs 0, stride, 2*stride, ... (what score.every does).
Cost is in plain-input-gradient units per sample: fd (n + 1) per scored epoch, exact (1 + 2n) (see bench_curvature.py).
A method `fd@H` is the finite difference with step H instead of score.h. The first method listed is the reference:
"within_0.005" compares every row with its n = max(--probes), every-epoch AUROC (the paper's setting for `fd`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import load_config  # noqa: E402
from utils.curvature.estimator import per_probe_curvature, sample_probes  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import save_npz  # noqa: E402
from utils.metrics import auroc  # noqa: E402
from utils.runs import open_run  # noqa: E402

UNITS = {"fd": lambda n: n + 1.0, "exact": lambda n: 1.0 + 2.0 * n}


def parse_method(spec: str, default_h: float) -> tuple[str, float]:
    """'fd' -> ('fd', default_h), 'fd@1e-2' -> ('fd', 0.01), 'exact' -> ('exact', default_h)."""
    name, _, h = spec.partition("@")
    if name not in UNITS:
        raise UserError(f"unknown method {spec!r}; use fd, fd@H or exact")
    return name, float(h) if h else default_h


def per_probe_scores(cfg: dict, methods: list[str], n_max: int, subset: int, cache: Path) -> tuple[dict, np.ndarray, dict]:
    """{method: (E, n_max, P) ||Hv||^2}, epochs (E,), and the subset's record arrays."""
    run = open_run(cfg)
    ckpts, data, cfg = run.ckpts, run.data, run.cfg
    n_all = len(data.train_eval)
    idx = np.arange(n_all) if subset <= 0 or subset >= n_all else np.sort(
        np.random.default_rng(0).choice(n_all, subset, replace=False))
    sc, bs = cfg["score"], cfg["score"]["batch_size"]
    out = {m: [] for m in methods}
    for e, _ in ckpts:
        for m in methods:
            f = cache / f"{m}_epoch_{e:03d}.npz"
            if f.is_file():
                with np.load(f, allow_pickle=False) as z:
                    if z["index"].shape == idx.shape and (z["index"] == idx).all() and z["curvature"].shape[0] >= n_max:
                        out[m].append(z["curvature"][:n_max])
                        continue
            model = run.load_model(e)
            vals = []
            for s in range(0, len(idx), bs):
                ii = torch.from_numpy(idx[s:s + bs])
                batch = [data.train_eval[int(i)] for i in ii]
                x = torch.stack([b[1] for b in batch])
                y = torch.tensor([b[2] for b in batch])
                probes = sample_probes(ii, tuple(x.shape[1:]), n_max, seed=sc["seed"], epoch=e)
                name, h = parse_method(m, sc["h"])
                vals.append(per_probe_curvature(model, x, y, probes, method=name, h=h,
                                                max_rows=sc["max_rows"])["curvature"].float().numpy())
            arr = np.concatenate(vals, 1)
            save_npz(f, index=idx, curvature=arr)
            out[m].append(arr)
            print(f"  {m} epoch {e}: done", flush=True)
    rec = {k: data.record[k].numpy()[idx] for k in ("is_noisy", "given_labels")}
    return {m: np.stack(v) for m, v in out.items()}, np.array([e for e, _ in ckpts]), rec


def table(scores: dict, epochs: np.ndarray, noisy: np.ndarray, probes: list[int], strides: list[int]) -> list[dict]:
    """One row per (method, probes, stride); cost and 'within_0.005' relative to the first method's n_max, stride 1."""
    rows = []
    for m, arr in scores.items():  # (E, n_max, P)
        n_max = arr.shape[1]
        for s in strides:
            sel = arr[::s]
            for n in probes:
                reps = [auroc(sel[:, g * n:(g + 1) * n].mean(1).mean(0), noisy) for g in range(n_max // n)]
                rows.append({"method": m, "probes": n, "stride": s, "scored_epochs": len(sel), "replicates": len(reps),
                             "auroc_mean": float(np.mean(reps)), "auroc_min": float(np.min(reps)),
                             "auroc_max": float(np.max(reps)),
                             "grad_units_per_sample": len(sel) * UNITS[parse_method(m, 0.0)[0]](n)})
    first = next(iter(scores))
    ref = next(r for r in rows if r["method"] == first and r["probes"] == max(probes) and r["stride"] == 1)
    for r in rows:
        r["cost_vs_n10_every_epoch"] = r["grad_units_per_sample"] / ref["grad_units_per_sample"]
        r["within_0.005"] = r["auroc_mean"] >= ref["auroc_mean"] - 0.005
    return rows


def choose(rows: list[dict], method: str) -> dict | None:
    """The cheapest row of `method` within 0.005 of the reference (None if there is none)."""
    ok = [r for r in rows if r["method"] == method and r["within_0.005"]]
    return min(ok, key=lambda r: (r["grad_units_per_sample"], -r["auroc_mean"])) if ok else None


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))  # in the order given; the first is the reference
    ref = next(r for r in rows if r["method"] == methods[0] and r["stride"] == 1
               and r["probes"] == max(x["probes"] for x in rows))["auroc_mean"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        mr = [r for r in rows if r["method"] == m]
        for s in sorted({r["stride"] for r in mr}):
            pts = sorted((r["probes"], r["auroc_mean"], r["auroc_min"], r["auroc_max"]) for r in mr if r["stride"] == s)
            n, mean, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(n, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=f"every {s} epoch(s)")
        ax.axhline(ref - 0.005, color="gray", ls="--", lw=1, label=f"{methods[0]} n=10 every epoch - 0.005")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 5, 10], ["1", "2", "5", "10"])
        ax.set_xlabel("probes per scored epoch")
        ax.set_title(f"{title}: {m}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mislabel AUROC of mean curvature")
    fig.text(0.01, 0.005, "points: mean over disjoint probe groups; bars: min-max", fontsize=7, color="gray")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/digits.yaml")
    p.add_argument("--methods", default="fd,exact")
    p.add_argument("--subset", type=int, default=0)
    p.add_argument("--probes", default="1,2,5,10")
    p.add_argument("--strides", default="1,2,4,8")
    p.add_argument("--out", default="benchmarks/results", help="where the CSV and PNG go")
    p.add_argument("--cache", default="", help="per-probe values (default: <paths.scores>/probe_stride_<name>)")
    p.add_argument("--name", default="", help="name of the outputs (default: the run name)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(a.config, a.overrides)
    probes, strides = [int(x) for x in a.probes.split(",")], [int(x) for x in a.strides.split(",")]
    methods = a.methods.split(",")
    out, name = Path(a.out), a.name or cfg["run"]
    cache = Path(a.cache) if a.cache else Path(cfg["paths"]["scores"]) / f"probe_stride_{name}"
    scores, epochs, rec = per_probe_scores(cfg, methods, max(probes), a.subset, cache)
    noisy = rec["is_noisy"]
    rows = table(scores, epochs, noisy, probes, strides)
    csv_path = out / f"probe_stride_{name}.csv"
    with open(csv_path.with_suffix(".tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(csv_path.with_suffix(".tmp"), csv_path)
    n_s = len(noisy)
    plot(rows, out / f"probe_stride_{name}.png", f"{name} ({n_s} samples, {int(noisy.sum())} noisy)")
    print(f"{name} (run {cfg['run']}): {n_s} samples ({int(noisy.sum())} noisy), epochs {epochs.min()}..{epochs.max()}")
    print(f"{'method':6s} {'n':>3s} {'stride':>6s} {'epochs':>6s} {'AUROC':>7s} {'min':>7s} {'max':>7s} {'cost':>6s}")
    for r in rows:
        print(f"{r['method']:6s} {r['probes']:3d} {r['stride']:6d} {r['scored_epochs']:6d} {r['auroc_mean']:7.4f} "
              f"{r['auroc_min']:7.4f} {r['auroc_max']:7.4f} {r['cost_vs_n10_every_epoch']:6.3f}"
              + ("  *" if r["within_0.005"] else ""))
    for m in methods:
        c = choose(rows, m)
        if c is None:
            print(f"no {m} setting is within 0.005 of {methods[0]} n=10 every epoch")
            continue
        print(f"cheapest {m} setting within 0.005 of {methods[0]} n=10 every epoch: n={c['probes']} stride={c['stride']} "
              f"AUROC {c['auroc_mean']:.4f} at {c['cost_vs_n10_every_epoch']:.3f}x the cost")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
