"""Curvature scorer speed, side by side on one model and batch: the official scorer vs this project's settings.

    python benchmarks/bench_curvature.py [--width 64] [--batch 64] [--rounds 2] [--threads 1] [--device cpu]

CIFAR ResNet-18 (utils.models cifar_resnet18), 32x32 inputs, eval mode. Timed (interleaved rounds, best of
`--rounds` per setting):
  (a) a faithful re-implementation of the official scorer, n=10 (per probe: forwards of x + v and x, one
      backward of the difference of batch-mean losses) -- utils.curvature.official_curvature;
  (b) input_curvature: exact (one create-graph backward, one double backward per probe) and fd (grad l(x) once,
      then one gradient per probe, k probes per pass), at several probe counts;
  (c) one plain input gradient (forward + backward to the input) of the batch: the unit.
Prints samples/s, gradient units per sample-probe, and ratios against (a), then the per-run cost of the
default (score.n_probes, score.every) against the official configuration (n=10, every epoch), and the
float32 error of each method against float64 with the same probes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import DEFAULTS  # noqa: E402
from utils.curvature.estimator import _input_grad, frozen, input_curvature, official_curvature, rademacher  # noqa: E402
from utils.models import build_model  # noqa: E402


def settings(model, x, y, probes) -> dict[str, tuple[int, Callable[[], object]]]:
    """name -> (probes per sample, callable)."""
    b = len(x)
    out: dict[str, tuple[int, Callable[[], object]]] = {
        "(a) official n=10": (10, lambda: official_curvature(model, x, y, probes=probes)),
        "(c) unit: input gradient": (1, lambda: _input_grad(model, x, y)),
    }
    for n in (1, 2, 10):
        out[f"(b) exact n={n}"] = (n, lambda n=n: input_curvature(model, x, y, method="exact", probes=probes[:n]))
    for n, rows in ((1, b), (2, b), (5, b), (10, b), (10, 4 * b)):
        out[f"(b) fd n={n} rows/pass={rows}"] = (
            n, lambda n=n, rows=rows: input_curvature(model, x, y, method="fd", probes=probes[:n], max_rows=rows))
    return out


def timeit(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def precision(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """float32 vs float64 (same model, same probes) for each method: median relative error of the curvature."""
    probes = rademacher((2, *x.shape), generator=torch.Generator().manual_seed(1))
    m64 = build_model("cifar_resnet18", 10, 3, 32, width=model.fc.in_features // 8)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    print("\nfloat32 error against float64, same probes (median / max relative, 8 samples x 2 probes):")
    for method in ("exact", "fd"):
        a = input_curvature(model, x, y, method=method, probes=probes)["curvature"].double()
        r = input_curvature(m64, x.double(), y, method=method, probes=probes.double())["curvature"]
        rel = (a / r - 1).abs()
        print(f"  {method:5s}: {float(rel.median()):.2e} / {float(rel.max()):.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default="", help="optional: load these weights (a toolkit checkpoint of this model)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = build_model("cifar_resnet18", 10, 3, 32, width=a.width)
    if a.checkpoint:
        from utils.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(Path(a.checkpoint))["model"])
    model = model.to(dev).eval()
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    probes = rademacher((10, *x.shape), generator=torch.Generator().manual_seed(0)).to(dev)
    runs = settings(model, x, y, probes)
    best = {k: float("inf") for k in runs}
    with frozen(model):
        timeit(runs["(c) unit: input gradient"][1])  # warm-up
    for r in range(a.rounds):
        for k, (_, fn) in runs.items():
            best[k] = min(best[k], timeit(fn))
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    unit, off = best["(c) unit: input gradient"], best["(a) official n=10"] / 10
    print(f"\nCIFAR ResNet-18 width {a.width}, batch {a.batch}, 32x32, {a.device}, {a.threads} thread(s), "
          f"best of {a.rounds}; unit = one input gradient = {unit:.3f} s/batch")
    print(f"{'setting':34s} {'s/batch':>8s} {'samples/s':>10s} {'units/sample-probe':>19s} {'per-probe speed vs (a)':>23s}")
    for k, (n, _) in runs.items():
        t = best[k]
        print(f"{k:34s} {t:8.3f} {a.batch / t:10.2f} {t / n / unit:19.2f} {off / (t / n):23.2f}x")
    sc = DEFAULTS["score"]
    n, every = sc["n_probes"], sc["every"]
    key = f"(b) {sc['method']} n={n}" + (" rows/pass=" + str(a.batch) if sc["method"] == "fd" else "")
    if key in best:
        print(f"\nper run: default {sc['method']} n={n} every={every} costs {best[key] / every / unit:.2f} "
              f"units per sample-epoch vs official n=10 every epoch {best['(a) official n=10'] / unit:.2f}: "
              f"{best['(a) official n=10'] / (best[key] / every):.2f}x faster end to end")
    if dev.type == "cpu":
        precision(model, x[:8], y[:8])


if __name__ == "__main__":
    main()
