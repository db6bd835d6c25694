"""Which timm ViT fits an ESM grid on this CPU (issue 26, part 4): the cost of one training step and of one
Hessian-vector product, and the grid they add up to, for the seeds' ViT-Small/16 and smaller timm ViTs, side by
side with the registry's ViT that the earlier grids used (the baseline).

    python benchmarks/timm_vit_cost.py [--threads 2] [--image-size 32] [--channels 3] [--repeats 3]

Each model is built as the ESM configs build it (`utils.models.build_model`, patch 4 on 32x32 = 64 tokens, 10
classes, no pretrained weights) and timed on random inputs: a training step (AdamW, batch 32) averaged over
`--repeats` steps after one warm-up, and a Hessian-vector product of the mean loss over 256 samples (the
Hessian set of configs/esm/cifar10_dev_*vit.yaml, one batch) by the spectra's own operator
(`utils.spectral.hessian.HessianOperator`, gradient graph cached: one extra backward per product), averaged over
`--repeats` products. ViT-Small/16's cached graph for 256 samples does not fit this machine's 24 GiB (the OOM
killer ended the first try), so its product is timed without the cache: forward, gradient graph and product each
time (`cached_graph` = False in the CSV); the spectra, which always cache, cannot hold it here at all.
The grid estimate is what configs/esm/cifar10_dev_vit.yaml asks for: 6 runs of 2000 steps,
each with 3 captures of 60 Lanczos + 2 x 20 SLQ products (evaluation and I/O not counted). Writes
benchmarks/results/timm_vit_cost.csv; prints the table with every figure's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.io import write_table  # noqa: E402
from utils.models import build_model  # noqa: E402
from utils.spectral.hessian import HessianOperator  # noqa: E402

# (label, model.name, model.width, model.kwargs, gradient graph cached as the spectra cache it)
CANDIDATES = [
    ("registry vit_small w24 (baseline)", "vit_small", 24, {}, True),
    ("timm test_vit (w64, depth 6)", "timm:test_vit", 0, {"patch_size": 4}, True),
    ("timm vit_tiny_patch16_224 (w192, depth 12)", "timm:vit_tiny_patch16_224", 0, {"patch_size": 4}, True),
    ("timm vit_small_patch16_224 (w384, depth 12)", "timm:vit_small_patch16_224", 0, {"patch_size": 4}, False),
]
STEPS, RUNS, CAPTURES, PRODUCTS = 2000, 6, 3, 60 + 2 * 20


def time_model(name: str, width: int, kwargs: dict, cache: bool, size: int, channels: int,
               repeats: int) -> dict[str, float]:
    """Seconds per training step (batch 32) and per Hessian-vector product (256 samples) of one model."""
    torch.manual_seed(0)
    model = build_model(name, 10, channels, size, width=width, kwargs=kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    x, y = torch.randn(32, channels, size, size), torch.randint(0, 10, (32,))
    for i in range(repeats + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step = (time.perf_counter() - t0) / repeats
    op = HessianOperator(model, [(torch.randn(256, channels, size, size), torch.randint(0, 10, (256,)))],
                         cache_graph=cache, check=False)
    v = torch.randn(op.dim)
    t0 = time.perf_counter()
    for _ in range(repeats):
        op.matvec(v)
    hvp = (time.perf_counter() - t0) / repeats
    return {"params_M": sum(p.numel() for p in params) / 1e6, "cached_graph": cache, "step_s": step, "hvp_s": hvp,
            "grid_h": RUNS * (STEPS * step + CAPTURES * PRODUCTS * hvp) / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, name, width, kwargs, cache in CANDIDATES:
        r = time_model(name, width, kwargs, cache, args.image_size, args.channels, args.repeats)
        rows.append({"model": label, "name": name, **r})
        print(f"  {label}: {r['step_s'] * 1e3:.0f} ms/step, {r['hvp_s']:.2f} s/product", flush=True)
    base = rows[0]
    print(f"\n{args.threads} thread(s), {args.image_size}x{args.image_size}x{args.channels}, patch 4; grid = "
          f"{RUNS} runs x ({STEPS} steps + {CAPTURES} captures x {PRODUCTS} products)")
    print("| model | parameters (M) | step (ms) | ratio | product (s) | ratio | grid (h) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params_M']:.3f} | {r['step_s'] * 1e3:.0f} | {r['step_s'] / base['step_s']:.1f}x"
              f" | {r['hvp_s']:.2f} | {r['hvp_s'] / base['hvp_s']:.1f}x | {r['grid_h']:.2f}"
              f" | {r['grid_h'] / base['grid_h']:.1f}x |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    paths = write_table(out / "timm_vit_cost", rows, markdown=False)
    print("written:\n" + "\n".join(f"  {p}" for p in paths))


if __name__ == "__main__":
    main()
