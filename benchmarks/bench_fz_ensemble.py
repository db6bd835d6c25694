"""Feldman–Zhang trainer: M MLPs trained together (batched matmuls) vs the same M models trained one by one
(nn.Sequential + torch.optim.SGD), same data, subsets and recipe. Prints seconds and the speed-up ratio.

python benchmarks/bench_fz_ensemble.py [M] [epochs] [width]   (digits, 64-width-width-10, batch 64, one thread)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import load_config  # noqa: E402
from utils.curvature.ensemble import MLPSpec, train_ensemble, train_matrix  # noqa: E402
from utils.curvature.memorization import subset_masks  # noqa: E402
from utils.data import build_data  # noqa: E402


def one_by_one(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, spec: MLPSpec, k: int) -> None:
    for m in range(masks.shape[0]):
        torch.manual_seed(m)
        net = nn.Sequential(nn.Linear(x.shape[1], spec.width), nn.ReLU(), nn.Linear(spec.width, spec.width), nn.ReLU(),
                            nn.Linear(spec.width, k))
        opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum)
        sub = torch.nonzero(masks[m]).squeeze(1)
        for _ in range(spec.epochs):
            for idx in sub[torch.randperm(len(sub))].split(spec.batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()


def main() -> None:
    torch.set_num_threads(1)
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    bundle = build_data(load_config(Path(__file__).resolve().parents[1] / "configs/digits.yaml"))
    x, y = train_matrix(bundle.train_eval)
    x = x.flatten(1)
    spec = MLPSpec(width=width, epochs=epochs, lr=0.1, batch_size=64)
    masks = torch.from_numpy(subset_masks(len(y), m, 0.7, 0))
    t0 = time.perf_counter()
    one_by_one(x, y, masks, spec, 10)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_ensemble(x, y, masks, spec, 10, progress=False)
    t_batched = time.perf_counter() - t0
    print(f"{m} MLPs 64-{width}-{width}-10 x {epochs} epochs on digits (70 % subsets): one by one {t_loop:.2f} s, "
          f"batched {t_batched:.2f} s, speed-up {t_loop / t_batched:.2f}x")


if __name__ == "__main__":
    main()
