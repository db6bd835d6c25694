"""results/collect.py: score rows of analysed runs, and a second scoring's curvature rows as a variant."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from utils.io import read_table, save_npz, write_table

ROOT = Path(__file__).resolve().parents[1]


def _scored(scores: Path, run: str) -> None:
    save_npz(scores / run / "curvature.npz", is_duplicate=np.zeros(4, bool), noise_kind=np.array("symmetric"),
             noise_rate=np.array(0.1), noise_seed=np.array(3))


def _analysed(scores: Path, run: str, rows: list[tuple[str, float]]) -> None:
    _scored(scores, run)
    (scores / run / "analysis").mkdir(parents=True)
    write_table(scores / run / "analysis" / "auroc", [
        {"group": g, "score": s, "auroc": a, "auprc": a / 2, "target": "mislabeled"}
        for s, a in rows for g in ("score", "epoch")], markdown=False)


def test_collect_adds_the_variants_curvature_rows(tmp_path: Path) -> None:
    fd, exact = tmp_path / "fd", tmp_path / "exact"
    _analysed(fd, "r", [("curvature", 0.9), ("curvature_official", 0.8), ("loss_final", 0.7)])
    _analysed(exact, "r", [("curvature", 0.95), ("curvature_official", 0.85), ("loss_final", 0.7)])
    _analysed(fd, "other", [("curvature", 0.6)])  # no exact scoring: no variant rows
    out = tmp_path / "t.csv"
    subprocess.run([sys.executable, str(ROOT / "results" / "collect.py"), "--out", str(out), "r", "other",
                    "--scores", str(fd), "--variant", f"exact={exact}"], check=True, capture_output=True, cwd=tmp_path)
    got = {(r["run"], r["score"]): r["auroc"] for r in read_table(out)}
    assert got == {("r", "curvature"): 0.9, ("r", "curvature_official"): 0.8, ("r", "loss_final"): 0.7,
                   ("r", "curvature_exact"): 0.95, ("r", "curvature_exact_official"): 0.85, ("other", "curvature"): 0.6}
    assert {r["noise_seed"] for r in read_table(out)} == {3}


def test_collect_names_the_missing_analysis_in_one_line(tmp_path: Path) -> None:
    _scored(tmp_path, "r")
    p = subprocess.run([sys.executable, str(ROOT / "results" / "collect.py"), "--out", str(tmp_path / "t.csv"), "r",
                        "--scores", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith("error:") and "analyze_curvature.py run=r" in p.stderr
    assert not (tmp_path / "t.csv").exists()
