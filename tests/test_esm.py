"""The ESM pipeline end to end: spectrum capture (write_spectrum, SpectrumCallback), a reduced digits
grid that must separate clean from random labels (AUC >= 0.9 at step 500), analysis files and
figures, and the notebook executed headless on that run."""

from __future__ import annotations

import csv
import os

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient

from utils.config import load_config
from utils.data import build_data
from utils.esm import analyse, compute_spectrum, esm_root, load_spectra, run_config, sample_indices, write_spectrum
from utils.hessian import HessianOperator, batches_from_dataset
from utils.models import build_model

from .conftest import ROOT

torch.set_num_threads(1)

REDUCED = ["model.width=64", "train.lr=0.1", "esm.seeds=[0,1,2]", "esm.steps=[100,500]", "spectrum.top_k=10",
           "spectrum.lanczos_iter=30", "spectrum.slq_probes=2", "spectrum.slq_iter=30", "spectrum.n_samples=256"]


def _cfg(tmp, *extra: str) -> dict:
    return load_config(ROOT / "configs/esm/digits_mlp.yaml",
                       [f"paths.pretrained={tmp}/pretrained", f"paths.scores={tmp}/curv_scores", f"paths.logs={tmp}/logs",
                        *REDUCED, *extra])


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from utils.esm import run_grid

    tmp = tmp_path_factory.mktemp("esm")
    cfg = _cfg(tmp)
    run_grid(cfg)
    return cfg


def test_reduced_digits_grid_separates_clean_from_random(grid):
    root = esm_root(grid)
    runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert runs == [f"digits_mlp_{c}_s{s}" for c in ("clean", "random") for s in range(3)]
    summary = analyse(grid)
    by_step = {r["step"]: r for r in summary}
    assert set(by_step) == {100, 500}
    assert by_step[500]["n_clean"] == 3 and by_step[500]["n_random"] == 3
    assert by_step[500]["auc_esm"] >= 0.9
    assert by_step[500]["esm_clean_mean"] > by_step[500]["esm_random_mean"]
    # the single balance threshold ESM = 1/2 classifies every run (clean ~0.71, random ~0.37 here)
    assert by_step[500]["balance_accuracy"] == 1.0
    for name in ("summary.csv", "esm_values.csv", "spectra_step00500.png", "esm_vs_step.png", "roc.png"):
        assert (root / name).stat().st_size > 0
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"auc_esm", "threshold_median", "threshold_accuracy"} <= set(rows[0])
    # the runs really are what they claim: random labels are mostly wrong, clean ones are the true labels
    spectra = load_spectra(root)
    assert all(s["noise_kind"] in ("none", "random") and s["step"] in (100, 500) for s in spectra)
    loss = {(s["noise_kind"], s["step"]): s["loss"] for s in spectra if s["seed"] == 0}
    assert loss[("none", 500)] < 0.1 < loss[("random", 500)]


def test_step_file_format(grid):
    p = esm_root(grid) / "digits_mlp_clean_s0" / "step_00500.npz"
    with np.load(p, allow_pickle=False) as z:
        assert z["eigenvalues"].shape == (10,) and np.all(np.diff(z["eigenvalues"]) <= 0)
        assert z["slq_nodes"].shape == z["slq_weights"].shape == (2, 30)
        assert np.allclose(z["slq_weights"].sum(1), 1.0)
        assert int(z["bulk_dim"]) == int(z["n_params"]) - 10
        assert float(z["trace"]) == pytest.approx(float(z["eigenvalues"].sum() + z["bulk_trace"]))
        assert int(z["step"]) == 500 and int(z["n_samples"]) == 256 and str(z["noise_kind"]) == "none"


def test_write_spectrum_matches_dense_hessian(tmp_path):
    cfg = _cfg(tmp_path, "spectrum.n_samples=40", "spectrum.batch_size=16", "spectrum.top_k=4",
               "spectrum.lanczos_iter=250", "spectrum.tol=1e-9", "spectrum.slq_probes=12", "spectrum.slq_iter=20")
    data = build_data(cfg)
    torch.manual_seed(0)
    model = build_model("digits_mlp", 10, 1, 8, width=6, activation="tanh").double()
    model.train()
    out = tmp_path / "spectrum_epoch_003.npz"
    arrays = write_spectrum(cfg, model, data.train_eval, out, epoch=3)
    assert model.training  # mode restored
    with np.load(out, allow_pickle=False) as z:
        assert int(z["epoch"]) == 3 and str(z["run"]) == cfg["run"]
        assert np.allclose(z["eigenvalues"], arrays["eigenvalues"])
    idx = sample_indices(len(data.train_eval), 40, cfg["spectrum"]["seed"])
    op = HessianOperator(model, batches_from_dataset(data.train_eval, idx, 40))
    dense = op.dense()
    exact = torch.linalg.eigvalsh(dense).flip(0).numpy()
    assert np.allclose(arrays["eigenvalues"], exact[:4], rtol=1e-6)
    # Hutchinson on the deflated bulk: unbiased, std <= sqrt(2 / probes) ||H||_F (an indefinite Hessian at init)
    err = abs(float(arrays["trace"]) - float(torch.trace(dense)))
    assert err < 3 * np.sqrt(2 / 12) * float(torch.linalg.matrix_norm(dense))
    assert float(arrays["sq_trace"]) == pytest.approx(float((dense ** 2).sum()), rel=0.5)
    assert int(arrays["n_params"]) == op.dim and int(arrays["n_samples"]) == 40


def test_run_config_and_resampling(tmp_path):
    cfg = _cfg(tmp_path)
    c = run_config(cfg, "random", 3)
    assert c["noise"] == {**cfg["noise"], "kind": "random", "rate": 1.0, "seed": 3}
    assert c["train"]["seed"] == 3 and c["train"]["max_steps"] == 500 and c["run"] == "digits_mlp_random_s3"
    a, b = sample_indices(1000, 100, 0), sample_indices(1000, 100, 0)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100
    assert np.array_equal(sample_indices(50, 0, 0), np.arange(50))
    # compute_spectrum on the augmented set must refuse: two reads differ
    c2 = load_config(None, ["data.name=digits"])
    data = build_data(c2)

    class Noisy:
        def __len__(self):
            return len(data.train_eval)

        def __getitem__(self, i):
            j, x, y = data.train_eval[i]
            return j, x + 0.01 * torch.randn_like(x), y

    from utils.errors import UserError

    with pytest.raises(UserError, match="not deterministic"):
        compute_spectrum(build_model("digits_mlp", 10, 1, 8, 8), Noisy(), {**c2, "spectrum": {**c2["spectrum"],
                                                                                               "n_samples": 20}})


def test_notebook_runs_headless(grid):
    nb = nbformat.read(ROOT / "notebooks" / "spectral_memorization.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "ESM_ROOT": str(esm_root(grid))})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    text = "".join(o.get("text", "") for o in outputs)
    assert "12 spectra from 6 runs" in text
