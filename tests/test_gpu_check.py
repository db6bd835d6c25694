"""benchmarks/gpu_check.py --smoke: the GPU check's whole code path on the CPU, on a tiny random ImageFolder."""

import json
import os
import subprocess
import sys

from .conftest import ROOT

KEYS = {"device", "torch", "train_images_per_s", "score_images_per_s", "fd_rel_error_vs_fp64", "auroc_curvature", "epochs",
        "wall_s", "dataloader_train_images_per_s", "dataloader_score_images_per_s", "precision", "throughput"}


def test_gpu_check_smoke_writes_the_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DATA_ROOT": str(tmp_path / "absent")}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--smoke", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "out/summary.json").read_text())
    assert KEYS <= set(s) and s["smoke"] and s["epochs"] == 2 and not any("failed" in n for n in s["notes"])
    assert set(s["fd_rel_error_vs_fp64"]) == {"h=1e-2", "h=1e-3"} and max(s["fd_rel_error_vs_fp64"].values()) < 1e-3
    assert s["train_images_per_s"] > 0 and s["dataloader_train_images_per_s"] > 0 and 0 <= s["auroc_curvature"] <= 1
    rows = {(r["quantity"], r["precision"]): r["rel_error"] for r in s["precision"]["rows"]}
    assert rows[("Hessian-vector product (HessianOperator)", "fp32, TF32 off")] < 1e-4
    md = (tmp_path / "out/summary.md").read_text()
    assert "## Precision against float64" in md and "curvature (mean over epochs)" in md and "absent" in md
