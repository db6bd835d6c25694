"""fd scoring: one probe per forward/backward pass against all probes stacked into one pass (`score.max_rows`).

    python benchmarks/bench_max_rows.py [--model cifar_resnet18] [--width 16] [--batch 128] [--probes 4]
                                        [--rounds 5] [--threads 1]

Same model, batch and probes; the settings run interleaved, round after round, and each reports its median
seconds per batch. `max_rows = batch` puts one probe in each pass (B rows); `max_rows = 0` stacks every probe
into one pass (probes x B rows). Prints samples/s and the ratio against the one-probe-per-pass setting, and
checks that both give the same numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.curvature.estimator import input_curvature, rademacher  # noqa: E402
from utils.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(a.model, 10, 3, 32, a.width).eval()
    x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))
    probes = rademacher((a.probes, *x.shape), generator=torch.Generator().manual_seed(1))
    cases = {"one probe per pass (max_rows=batch)": a.batch, f"stacked: {a.probes} probes per pass (max_rows=0)": 0}
    times: dict[str, list[float]] = {k: [] for k in cases}
    out = {}
    for _ in range(a.rounds + 1):  # the first round warms up and is dropped
        for name, rows in cases.items():
            t0 = time.perf_counter()
            out[name] = input_curvature(model, x, y, method="fd", h=1e-2, probes=probes, max_rows=rows)["curvature"]
            times[name].append(time.perf_counter() - t0)
    a_, b_ = out.values()
    torch.testing.assert_close(a_, b_, rtol=1e-4, atol=0)
    base = statistics.median(times[next(iter(cases))][1:])
    print(f"{a.model} width {a.width}, batch {a.batch}, {a.probes} probes, {a.threads} thread(s), "
          f"{a.rounds} interleaved rounds (median)")
    for name, ts in times.items():
        t = statistics.median(ts[1:])
        print(f"  {name:<45} {a.batch / t:8.1f} samples/s   {base / t:5.2f}x")


if __name__ == "__main__":
    main()
