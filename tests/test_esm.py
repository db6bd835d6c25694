"""The ESM pipeline end to end: spectrum capture (write_spectrum, SpectrumCallback) in fp32, a reduced digits
grid that must separate clean from random labels (AUC >= 0.9 at step 500), grid directories derived from data
set + model, reuse / restart of grid points, analysis files, figures and printed summaries, and the notebook
executed headless on that grid and on an empty root."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import utils.spectral.capture as esm_mod
from utils.callbacks import TrainState
from utils.config import load_config
from utils.data import build_data
from utils.distributed import Dist
from utils.errors import UserError
from utils.models import build_model
from utils.runs import list_checkpoints, run_dir
from utils.spectral.capture import SpectrumCallback, compute_spectrum, sample_indices, write_spectrum
from utils.spectral.esm import esm_root, grid_dir, grid_name, load_spectra, main_analyse, main_grid, run_config, run_grid
from utils.spectral.hessian import HessianOperator, batches_from_dataset

from .conftest import ROOT, execute_notebook

torch.set_num_threads(1)

REDUCED = ["model.width=64", "train.lr=0.1", "esm.seeds=[0,1,2]", "esm.steps=[100,500]", "spectrum.top_k=30",
           "spectrum.lanczos_iter=60", "spectrum.slq_probes=2", "spectrum.slq_iter=30", "spectrum.n_samples=256"]


def _paths_of(tmp) -> list[str]:
    return [f"paths.pretrained={tmp}/pretrained", f"paths.scores={tmp}/curv_scores", f"paths.logs={tmp}/logs"]


def _paths(cfg: dict) -> list[str]:
    return [f"paths.{k}={v}" for k, v in cfg["paths"].items()]


def _cfg(tmp, *extra: str) -> dict:
    return load_config(ROOT / "configs/esm/digits_mlp.yaml", [*_paths_of(tmp), *REDUCED, *extra])


GRID = "digits_digits_mlp_w64"  # data set + model + width of the reduced grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esm")
    cfg = _cfg(tmp)
    run_grid(cfg)
    return cfg


def test_reduced_digits_grid_separates_clean_from_random(grid, capsys):
    gdir = grid_dir(grid)
    assert gdir == esm_root(grid) / GRID
    runs = sorted(p.name for p in gdir.iterdir() if p.is_dir())
    assert runs == [f"{c}_s{s}" for c in ("clean", "random") for s in range(3)]
    summary = main_analyse(grid)
    out = capsys.readouterr().out
    by_step = {r["step"]: r for r in summary}
    assert set(by_step) == {100, 500}
    assert by_step[500]["n_clean"] == 3 and by_step[500]["n_random"] == 3
    assert by_step[500]["auc_esm"] >= 0.9
    assert by_step[500]["esm_clean_mean"] > by_step[500]["esm_random_mean"]
    # the one rule (rmt.classify: top-3K participation <= 1.3 K) classifies every run at step 500 here
    assert by_step[500]["threshold"] == pytest.approx(13.0) and by_step[500]["threshold_accuracy"] == 1.0
    root = esm_root(grid)
    for name in ("summary.csv", "summary.md", "esm_values.csv", "spectra_step00500.png", "esm_vs_step.png", "roc.png"):
        assert (root / name).stat().st_size > 0
        assert str(root / name) in out  # the printed list of paths written
    assert "auc_esm" in out and "threshold_accuracy" in out and f"| {GRID} | 500 |" in out
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"auc_esm", "threshold", "threshold_accuracy"} <= set(rows[0])
    assert not {"balance_accuracy", "threshold_median"} & set(rows[0])  # exactly one threshold
    with open(root / "esm_values.csv") as f:
        vals = list(csv.DictReader(f))
    assert len(vals) == 12
    for v in vals:  # training loss / accuracy on the Hessian set and the running loss at every capture
        assert float(v["loss"]) >= 0 and 0 <= float(v["accuracy"]) <= 1 and float(v["running_loss"]) > 0
        assert float(v["run_seconds"]) > 0 and int(float(v["num_classes"])) == 10
        assert v["is_clean"] in ("True", "False") and float(v["participation"]) > 0
    # the runs really are what they claim: random labels are mostly wrong, clean ones are the true labels
    spectra = load_spectra(root)
    assert len(spectra) == 12 and {s["grid"] for s in spectra} == {GRID}
    assert all(s["noise_kind"] in ("none", "random") and s["step"] in (100, 500) for s in spectra)
    loss = {(s["noise_kind"], s["step"]): s["loss"] for s in spectra if s["seed"] == 0}
    assert loss[("none", 500)] < 0.1 < loss[("random", 500)]
    # the grid's runs stop at max(esm.steps): the initialisation and the last epoch are their only checkpoints
    ckpts = list_checkpoints(run_dir(run_config(grid, "none", 0)))
    assert [e for e, _ in ckpts][0] == 0 and len(ckpts) == 2


def test_complete_grid_is_reused_and_another_config_refused(grid):
    points = run_grid(grid)  # every step file is there and of this config: nothing is trained
    assert [p.status for p in points] == ["reused"] * 6
    with pytest.raises(UserError, match="another config.*esm.name=<tag>"):
        run_grid(load_config(ROOT / "configs/esm/digits_mlp.yaml", [*_paths(grid), *REDUCED, "train.lr=0.2"]))
    tagged = load_config(ROOT / "configs/esm/digits_mlp.yaml", [*_paths(grid), *REDUCED, "esm.name=lr02"])
    assert grid_name(tagged) == f"{GRID}_lr02"


def test_step_file_format(grid):
    p = grid_dir(grid) / "clean_s0" / "step_00500.npz"
    with np.load(p, allow_pickle=False) as z:
        assert z["eigenvalues"].shape == (30,) and np.all(np.diff(z["eigenvalues"]) <= 0)  # 3K: what classify needs
        assert z["slq_nodes"].shape == z["slq_weights"].shape == (2, 30)
        assert np.allclose(z["slq_weights"].sum(1), 1.0)
        assert int(z["bulk_dim"]) == int(z["n_params"]) - 30
        assert float(z["trace"]) == pytest.approx(float(z["eigenvalues"].sum() + z["bulk_trace"]))
        assert int(z["step"]) == 500 and int(z["n_samples"]) == 256 and str(z["noise_kind"]) == "none"
        assert str(z["grid"]) == GRID and str(z["run"]) == f"{GRID}_clean_s0"
        assert int(z["num_classes"]) == 10 and float(z["accuracy"]) > 0.9 and float(z["running_loss"]) < 0.2
        assert 0 < float(z["gn_n_eff"]) <= 256 and float(z["run_seconds"]) > 0


def test_grid_directory_depends_on_data_set_and_model():
    def cfg(name: str, *o: str) -> dict:
        return load_config(ROOT / "configs/esm" / name, list(o))

    # two configs that differ only in the data set
    a, b = cfg("cifar10_resnet18.yaml"), cfg("cifar10_resnet18.yaml", "data.name=cifar100")
    assert grid_dir(a) != grid_dir(b) and grid_name(b) == "cifar100_cifar_resnet18"
    assert grid_dir(cfg("cifar100_resnet18.yaml")) == grid_dir(b)
    assert grid_dir(cfg("cifar10_vit_small.yaml")) != grid_dir(cfg("cifar100_vit_small.yaml"))
    # every shipped grid has its own directory and no fake epoch budget (the grid sets train.max_steps)
    names = sorted(p.name for p in (ROOT / "configs/esm").glob("*.yaml"))
    cfgs = [cfg(n) for n in names]
    assert len({grid_dir(c) for c in cfgs}) == len(names)
    assert all("epochs:" not in (ROOT / "configs/esm" / n).read_text() for n in names)
    assert all(run_config(c, "none", 0)["train"]["max_steps"] == max(c["esm"]["steps"]) for c in cfgs)
    # esm.name only adds a tag: it cannot point a CIFAR-100 grid at the CIFAR-10 one
    assert grid_name(cfg("cifar100_resnet18.yaml", "esm.name=cifar10_resnet18")).startswith("cifar100_cifar_resnet18_")
    assert grid_name(cfg("cifar10_dev_cnn.yaml")) == "cifar10-jpeg-dev_digits_cnn_w16"
    assert grid_name(cfg("digits_mlp.yaml", "model.width=64")) != grid_name(cfg("digits_mlp.yaml"))


def test_small_grid_restarts_unfinished_points_and_prints_summary(tmp_path, capsys):
    cfg = _cfg(tmp_path, "esm.seeds=[0]", "esm.steps=[3,5]", "spectrum.n_samples=64", "spectrum.top_k=4",
               "spectrum.lanczos_iter=10", "spectrum.slq_iter=10")
    points = main_grid(cfg)
    out = capsys.readouterr().out
    assert [p.status for p in points] == ["trained", "trained"]
    assert "auc_esm" in out and "threshold_accuracy" in out and "written:" in out
    for p in points:
        assert str(p.out) in out and all(f.is_file() for f in p.files)
    # an unfinished point (a step file lost) is retrained from scratch: its old run directory is removed first
    (points[1].out / "step_00005.npz").unlink()
    again = run_grid(cfg)
    assert [p.status for p in again] == ["reused", "trained"]
    assert all(f.is_file() for p in again for f in p.files)
    main_grid(cfg)
    assert "nothing new written" in capsys.readouterr().out


def test_spectra_are_computed_in_fp32(tmp_path, monkeypatch):
    """compute_spectrum (write_spectrum, SpectrumCallback) runs Lanczos/SLQ with TF32 and autocast off, and
    restores the caller's settings."""
    cfg = _cfg(tmp_path, "spectrum.n_samples=32", "spectrum.top_k=3", "spectrum.lanczos_iter=8",
               "spectrum.slq_iter=8", "spectrum.slq_probes=1")
    data = build_data(cfg)
    model = build_model("digits_mlp", 10, 1, 8, width=6)
    seen = []
    real = esm_mod.lanczos

    def spy(*a, **k):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     torch.is_autocast_enabled("cpu")))
        return real(*a, **k)

    monkeypatch.setattr(esm_mod, "lanczos", spy)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # properties: no monkeypatch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            write_spectrum(cfg, model, data.train_eval, tmp_path / "s.npz")
            cb = SpectrumCallback(cfg, tmp_path / "cb", [1])
            state = TrainState(cfg, Dist(0, 1, 0, torch.device("cpu")), SimpleNamespace(train_eval=data.train_eval),
                               model, model, None, None, step=1)
            cb.on_train_start(state)
            cb.on_step_end(state)
        restored = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(False, False, False)] * 2
    assert restored == (True, True)
    assert state.stop and (tmp_path / "cb" / "step_00001.npz").is_file()


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
    assert c["train"]["seed"] == 3 and c["train"]["max_steps"] == 500 and c["run"] == f"{GRID}_random_s3"
    assert c["resume"] is False and c["train"]["epochs"] == cfg["train"]["epochs"]
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

    with pytest.raises(UserError, match="not deterministic"):
        compute_spectrum(build_model("digits_mlp", 10, 1, 8, 8), Noisy(), {**c2, "spectrum": {**c2["spectrum"],
                                                                                               "n_samples": 20}})


def _run_notebook(grid: str, *overrides: str) -> list[dict]:
    """Execute the notebook with its parameters cell replaced; returns the code cells' outputs."""
    outputs = execute_notebook("spectral_memorization", f"GRID = {grid!r}\nCONFIG = 'configs/esm/digits_mlp.yaml'\n"
                               f"OVERRIDES = {list(overrides)!r}\n")
    assert not [o for o in outputs if o.get("name") == "stderr"], "no warnings or progress bars"
    return outputs


def test_notebook_runs_headless(grid):
    outputs = _run_notebook(GRID, f"paths.scores={grid['paths']['scores']}")
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    text = "".join(o.get("text", "") for o in outputs)
    assert "12 spectra from 6 runs" in text


@pytest.mark.parametrize("grid_param", ["", "no_such_grid"])
def test_notebook_on_empty_root_says_so_in_one_line(tmp_path, grid_param):
    (tmp_path / "curv_scores" / "esm").mkdir(parents=True)  # "": an empty root; a grid that is not there: missing
    outputs = _run_notebook(grid_param, f"paths.scores={tmp_path / 'curv_scores'}")
    text = "".join(o.get("text", "") for o in outputs)
    assert text.startswith("no spectra under ") and "esm_experiment.py" in text and text.count("\n") == 1
    assert not any("image/png" in o.get("data", {}) for o in outputs)
