"""The memorization report at ImageNet size: time and peak memory from synthetic run files.

    python benchmarks/report_scale.py [--n 1281167] [--epochs 50] [--classes 1000] [--out /tmp/report_scale]

Writes a synthetic ImageNet-format run (run.json + record.npz through the real `write_run_record`, 1.28 M
relative file names, `train_stats.npz` with loss / correct / margin / other / other_prob for every epoch,
`curvature.npz` with every scored epoch, 51 placeholder checkpoints) and a folder holding only 256 real JPEGs that
the file names cycle over (the report decodes only the images it shows), then times `memorization_report.py`
in a child process and reads its peak resident memory (ru_maxrss). Baseline side by side: the same run at 1/10
of the samples, so the ratio shows how the report scales. Target: <= 120 s and <= 4 GB at full size.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.config import identity_hash, load_config  # noqa: E402
from utils.io import save_npz  # noqa: E402
from utils.runs import checkpoint_path, record_to_numpy, write_run_record  # noqa: E402


def synth_run(out: Path, n: int, epochs: int, k: int, seed: int = 0) -> dict:
    """A trained-and-scored run 'scale' under out/ with realistic score distributions; returns its config."""
    rng = np.random.default_rng(seed)
    data = out / "data"
    files = [f"train/c{i % 16:02d}/img{i:03d}.JPEG" for i in range(256)]
    from PIL import Image

    for f in files:
        p = data / "imagenet" / f
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p, quality=80)
    cfg = load_config(ROOT / "configs/imagenet.yaml", ["run=scale", f"paths.pretrained={out}/pretrained",
                                                      f"paths.scores={out}/curv_scores", f"data.root={data}",
                                                      f"train.epochs={epochs}", "data.image_size=64"])
    given = rng.integers(0, k, n)
    record = {"dataset": "imagenet", "num_classes": k, "in_channels": 3, "image_size": 64,
              "classes": [f"n{c:08d}" for c in range(k)], "noise_kind": "none", "noise_rate": 0.0, "noise_seed": 0,
              "index": torch.arange(n), "given_labels": torch.from_numpy(given), "true_labels": torch.from_numpy(given),
              "is_noisy": torch.zeros(n, dtype=torch.bool), "is_duplicate": torch.zeros(n, dtype=torch.bool),
              "duplicate_of": torch.full((n,), -1), "source_index": torch.arange(n),
              "source_files": [files[i % len(files)] for i in range(n)]}
    rdir = out / "pretrained" / "scale"
    write_run_record(rdir, cfg, record, identity_hash(cfg))
    for e in range(epochs + 1):
        torch.save({"format_version": 2, "epoch": e, "step": 0, "model": {}}, checkpoint_path(rdir, e))
    hard = rng.random(n) ** 3  # per-sample difficulty: losses fall with the epoch, slowest for the hard ones
    ep = np.arange(1, epochs + 1)
    loss = (hard[None, :] * 6 * np.exp(-ep[:, None] / (5 + 40 * hard[None, :]))).astype(np.float32)
    correct = loss < 0.7
    stats = {"epochs": ep, "loss": loss, "correct": correct, "margin": (1.0 - loss).astype(np.float32),
             "other": rng.integers(0, k, (epochs, n)).astype(np.int32),
             "other_prob": (1 - np.exp(-loss)).astype(np.float32) * 0.8,
             "test_loss": np.linspace(3, 1, epochs).astype(np.float32),
             "test_acc": np.linspace(0.3, 0.7, epochs).astype(np.float32), **record_to_numpy(record)}
    del loss, correct
    save_npz(rdir / "train_stats.npz", **stats)
    del stats
    per_epoch = (hard[None, :] * rng.lognormal(0, 1, (epochs, n))).astype(np.float32)
    sc = {**record_to_numpy(record), "epochs": ep, "per_epoch": per_epoch, "curvature": per_epoch.mean(0),
          "hv_norm": np.sqrt(per_epoch).mean(0), "trace": per_epoch.mean(0)}
    save_npz(out / "curv_scores" / "scale" / "curvature.npz", **sc)
    return cfg


def measure(out: Path, n: int, epochs: int, k: int) -> dict:
    t0 = time.time()
    cfg = synth_run(out, n, epochs, k)
    made = time.time() - t0
    cmd = [sys.executable, "-c", (
        "import resource, sys, time; sys.argv = ['memorization_report.py'] + sys.argv[1:]; t = time.time()\n"
        "from utils.cli import run_script\nfrom utils.report.build import main\n"
        "run_script(main, 'configs/imagenet.yaml')\n"
        "print(f'BENCH {time.time() - t:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}')"),
        "run=scale", f"paths.pretrained={cfg['paths']['pretrained']}", f"paths.scores={cfg['paths']['scores']}",
        f"data.root={cfg['data']['root']}"]
    t1 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t1
    if res.returncode != 0:
        sys.exit(f"report failed:\n{res.stderr[-3000:]}")
    line = [x for x in res.stdout.splitlines() if x.startswith("BENCH ")][-1].split()
    return {"n": n, "epochs": epochs, "synth_s": made, "report_s": float(line[1]), "wall_s": wall,
            "peak_gb": int(line[2]) / 2**20, "csv_mb": (out / "curv_scores/scale/report/suspects.csv").stat().st_size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/report_scale")
    args = ap.parse_args()
    rows = []
    for n in (args.n // 10, args.n):
        rows.append(measure(Path(args.out) / f"n{n}", n, args.epochs, args.classes))
        print(rows[-1], flush=True)
    base = rows[0]
    print(f"\n{'samples':>10} {'epochs':>6} {'report s':>9} {'peak GB':>8} {'suspects.csv MB':>16} {'time ratio':>11}")
    for r in rows:
        print(f"{r['n']:>10} {r['epochs']:>6} {r['report_s']:>9.1f} {r['peak_gb']:>8.2f} {r['csv_mb']:>16.1f} "
              f"{r['report_s'] / base['report_s']:>10.2f}x")
    full = rows[-1]
    print(f"target <= 120 s and <= 4 GB at {full['n']} samples: time {'met' if full['report_s'] <= 120 else 'MISSED'}, "
          f"memory {'met' if full['peak_gb'] <= 4 else 'MISSED'}")
    _ = resource  # the child reads its own peak


if __name__ == "__main__":
    main()
