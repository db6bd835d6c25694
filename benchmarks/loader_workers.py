"""DataLoader worker choices measured (issue 27): throughput of an evaluation pass and a training epoch.

    DATA_ROOT=/work/shared/data python benchmarks/loader_workers.py [--folder cifar10-jpeg-dev] [--images 2000]
                                                                      [--workers 4] [--image-size 32]

Workers forked from a process that runs other threads (tqdm's monitor, gloo, OpenMP) can inherit a held lock
and never reach their worker loop: the evaluation pass then waits forever (issue 27). The choices compared, each
in a fresh process, on an ImageFolder of JPEGs decoded by the workers (`data.in_memory=false`):
- `fork (today)`: new workers every pass, forked from the training process (what the toolkit did);
- `forkserver` / `spawn`: new workers every pass, forked from a single-threaded server (`utils.data.worker_context`:
  torch, utils.data and torchvision's transforms preloaded) / each started as a fresh interpreter;
- `fork, persistent` / `forkserver, persistent`: workers created at the first pass and kept;
- `no workers`: the main process decodes.
Every choice runs two evaluation passes (the test split, batch 512, as `sharded_map`) and two training epochs (a
stratified subset of `--images`, batch 128, augmented, as `make_loader`); the first pass of a kind includes
starting the workers (and the fork server), the second is what every later epoch costs. Only the loader is
timed (the batches are touched, no model), so the table shows the data path's cost. Writes
benchmarks/results/loader_workers.csv (images/s and the ratio against `fork (today)`, pass by pass).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHOICES = {  # name: (start method, persistent workers, number of workers or None for --workers)
    "fork (today)": ("fork", False, None),
    "forkserver": ("forkserver", False, None),
    "spawn": ("spawn", False, None),
    "fork, persistent": ("fork", True, None),
    "forkserver, persistent": ("forkserver", True, None),
    "no workers": ("", False, 0),
}
PASSES = ("eval 1", "eval 2", "train 1", "train 2")


def measure(choice: str, a: argparse.Namespace) -> dict[str, tuple[int, float]]:
    """{pass: (images, seconds)} of one choice, measured in this process."""
    import torch
    from torch.utils.data import DataLoader

    from utils.config import load_config
    from utils.data import GlobalBatchSampler, build_data
    from utils.workers import worker_context

    method, persistent, n = CHOICES[choice]
    workers = a.workers if n is None else n
    cfg = load_config(ROOT / "configs/cifar10.yaml", ["data.name=imagefolder", f"data.folder={a.folder}",
                                                     "data.in_memory=false", f"data.image_size={a.image_size}",
                                                     f"data.subset={a.images}"])
    data = build_data(cfg)
    ctx = worker_context(workers) if method == "forkserver" else method if workers else None  # the library's
    kw = dict(num_workers=workers, persistent_workers=persistent and workers > 0, multiprocessing_context=ctx)
    test = torch.utils.data.Subset(data.test, range(min(a.images, len(data.test))))

    def eval_loader() -> DataLoader:
        return DataLoader(test, batch_size=512, shuffle=False, **kw)

    sampler = GlobalBatchSampler(len(data.train), 128, shuffle=True, seed=0)
    train_loader = DataLoader(data.train, batch_sampler=sampler, **kw)
    keep = eval_loader()
    out = {}
    for name in PASSES:
        torch.manual_seed(int(name[-1]))
        sampler.set_epoch(int(name[-1]))
        loader = train_loader if name.startswith("train") else keep if persistent else eval_loader()
        t0, seen = time.perf_counter(), 0
        for _, x, _ in loader:
            seen += len(x)
            x.sum()
        out[name] = (seen, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="cifar10-jpeg-dev", help="ImageFolder under $DATA_ROOT (train/, test/)")
    ap.add_argument("--images", type=int, default=2000, help="images per pass (training subset, test prefix)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=32, help="decoded images are resized to this (CIFAR: 32)")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: measure this choice, print JSON
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/loader_workers.csv"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a)))
        return
    args = [f"--folder={a.folder}", f"--images={a.images}", f"--workers={a.workers}", f"--image-size={a.image_size}"]
    res = {}
    for choice in CHOICES:  # each in a fresh process: no fork server or worker outlives its choice
        p = subprocess.run([sys.executable, __file__, *args, "--one", choice], capture_output=True, text=True,
                           check=False)
        if p.returncode:
            sys.exit(f"{choice}: exit {p.returncode}\n{p.stderr[-3000:]}")
        res[choice] = json.loads(p.stdout.strip().splitlines()[-1])
    rate = {c: {k: n / s for k, (n, s) in r.items()} for c, r in res.items()}
    base = rate["fork (today)"]
    print(f"{a.folder}: {a.images} images per pass, {a.workers} workers, images resized to {a.image_size}; "
          "images/s (x fork today)")
    print(f"{'choice':<24}" + "".join(f"{k:>20}" for k in PASSES))
    rows = []
    for c, r in rate.items():
        print(f"{c:<24}" + "".join(f"{r[k]:>11.0f} ({r[k] / base[k]:4.2f}x)" for k in PASSES))
        rows += [[c, k, res[c][k][0], f"{res[c][k][1]:.3f}", f"{r[k]:.1f}", f"{r[k] / base[k]:.3f}"] for k in PASSES]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["choice", "pass", "images", "seconds", "images_per_s", "ratio_vs_fork_today"])
        w.writerows(rows)
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
