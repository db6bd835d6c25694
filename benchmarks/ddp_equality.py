"""How far 2 torchrun ranks (gloo, GlobalBatchNorm) train from one process, after 1 optimizer step and after 8.

    python benchmarks/ddp_equality.py [--steps 1 8] [--dtype float64]

The issue-17 case: CIFAR ResNet-18 (width 4, BatchNorm) on 256 digits images, global batch 32, lr 0.05, SGD.
Printed per step count: max |w_2ranks - w_1proc| over every parameter and buffer, relative to the largest
change of the same tensor over the run (the "update"). Both use 1 thread per process. The second column is the
control: ONE process at 1 thread against the same process at 2 threads (no ranks, no BatchNorm sync; only the
summation order inside the kernels differs), which shows how far a rounding-level difference grows on its own."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.runs import list_checkpoints, load_checkpoint  # noqa: E402

ARGS = ["model.name=cifar_resnet18", "model.width=4", "data.subset=256", "train.batch_size=32", "train.lr=0.05",
        "train.epochs=1"]


def train(tmp: Path, run: str, steps: int, nproc: int, threads: int = 1, dtype: str = "float32") -> Path:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                              if nproc > 1 else [])
    cmd += [str(ROOT / "train_digits.py"), *ARGS, f"train.max_steps={steps}", f"run={run}", f"train.dtype={dtype}",
            f"paths.pretrained={tmp}/pre", f"paths.logs={tmp}/logs"]
    res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if res.returncode:
        sys.exit(f"error: {' '.join(cmd[-12:])} failed:\n{res.stderr[-2000:]}")
    return tmp / "pre" / run


def update_error(one: Path, two: Path) -> float:
    """max over tensors of max|two - one| / max over tensors of max|one_end - one_start|."""
    w0 = load_checkpoint(one / "epoch_000.pt")["model"]
    wa = load_checkpoint(list_checkpoints(one)[-1][1])["model"]
    wb = load_checkpoint(list_checkpoints(two)[-1][1])["model"]
    keys = [k for k in wa if wa[k].is_floating_point()]
    den = max(float((wa[k].double() - w0[k].double()).abs().max()) for k in keys)
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in keys) / den


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 6, 7, 8])
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="train.dtype of every run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"{'steps':>5}  {'2 ranks vs 1 process':>20}  {'1 process, 1 vs 2 threads':>25}")
        for s in args.steps:
            one, two = train(tmp, f"one{s}", s, 1, dtype=args.dtype), train(tmp, f"two{s}", s, 2, dtype=args.dtype)
            t2 = train(tmp, f"t{s}", s, 1, 2, dtype=args.dtype)
            print(f"{s:>5}  {update_error(one, two):>20.2e}  {update_error(one, t2):>25.2e}", flush=True)


if __name__ == "__main__":
    main()
