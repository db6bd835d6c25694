"""The three analysis notebooks run headless (nbclient) on a tiny run; any cell error fails the test."""

from __future__ import annotations

import numpy as np
import pytest

from utils.io import load_npz
from utils.runs import run_dir

from .conftest import execute_notebook
from .test_analysis import make_run, write_scores

NOTEBOOKS = ("analyze_curvature", "duplicates", "memorization_ground_truth")


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    cfg = make_run(tmp, "noise.duplicates=10")
    rec = load_npz(run_dir(cfg) / "train_stats.npz")
    rng = np.random.default_rng(0)
    write_scores(cfg, rec["is_noisy"] * 5.0 + rng.random(len(rec["is_noisy"])))
    return cfg


def _parameters(cfg: dict) -> str:
    overrides = [f"paths.pretrained={cfg['paths']['pretrained']}", f"paths.scores={cfg['paths']['scores']}",
                 "analysis.fz_models=6", "analysis.fz_epochs=2", "analysis.fz_width=16", "analysis.top_k=8",
                 "analysis.dup_top=20"]
    return f"RUN = {cfg['run']!r}\nOVERRIDES = {overrides!r}\n"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(scored_run, name):
    outputs = execute_notebook(name, _parameters(scored_run))
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook should show its figure"
    assert not [o for o in outputs if o.get("name") == "stderr"], "no progress-bar output in the notebook"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_on_a_missing_run_prints_one_line(tmp_path, name):
    outputs = execute_notebook(name, f"RUN = 'no_such_run'\nOVERRIDES = ['paths.pretrained={tmp_path}/p', "
                                     f"'paths.scores={tmp_path}/s']\n", 120)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert text.count("error: no run 'no_such_run'") == 1 and text.strip().count("\n") == 0, text
