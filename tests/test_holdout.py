"""The holdout stage (holdout.py): who trains on what (exact), each held-out row from the model that never saw the
sample, kill and rerun bit-identical, a quality floor chance cannot reach, the memorization estimate on hand-built
cases, train.init, and labels / exclusions from a CSV (data.labels, data.exclude)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.folds import membership
from utils.holdout.files import FILE, holdout_dir, load_holdout
from utils.holdout.memorization import memorization, p_in, wilson
from utils.holdout.stage import model_config, run_holdout
from utils.io import load_npz
from utils.metrics import precision_at_k
from utils.runs import open_run, run_dir
from utils.train import train

from .conftest import run_script, tiny_cfg, write_image_folder


# ----------------------------------------------------------------------------- membership
def test_folds_hold_each_sample_out_exactly_once_stratified_and_seeded():
    y = np.repeat(np.arange(3), [10, 7, 5])
    m = membership(y, "folds", 3, seed=4)
    assert m.shape == (3, 22) and ((~m).sum(0) == 1).all()
    assert sorted((~m).sum(1)) == [7, 7, 8]
    for c in range(3):
        held = (~m)[:, y == c].sum(1)
        assert held.max() - held.min() <= 1
    assert np.array_equal(m, membership(y, "folds", 3, seed=4)) and not np.array_equal(m, membership(y, "folds", 3, seed=5))


def test_subsets_keep_the_fraction_of_every_class_per_model():
    y = np.repeat(np.arange(4), [40, 20, 10, 6])
    m = membership(y, "subsets", 16, fraction=0.5, seed=1)
    for c, n in zip(range(4), (40, 20, 10, 6)):
        np.testing.assert_array_equal(m[:, y == c].sum(1), np.full(16, round(0.5 * n)))
    assert len({r.tobytes() for r in m}) == 16  # different subsets
    assert 5 <= (~m).sum(0).mean() <= 11  # each sample held out by about half the models
    with pytest.raises(UserError, match="fraction"):
        membership(y, "subsets", 4, fraction=1.0)
    with pytest.raises(UserError, match="folds, subsets"):
        membership(y, "random", 4)


# ----------------------------------------------------------------------------- memorization
def test_memorization_on_hand_built_cases():
    loss = -np.log(np.array([[0.2, 0.5, 0.9], [0.6, 0.5, 0.9], [1.0, 0.5, 0.9], [1.0, 0.5, 0.9]]))
    np.testing.assert_allclose(p_in(loss, late=2), [1.0, 0.5, 0.9])
    np.testing.assert_allclose(p_in(loss, late=3), [(0.6 + 2) / 3, 0.5, 0.9])
    # a memorized sample (fitted in, 0 out), a typical one (fitted both), an unheld one
    m = memorization(np.array([1.0, 0.9, 0.8]), np.array([0.0, 0.9, np.nan]), np.array([4, 4, 0]))
    np.testing.assert_allclose(m["memorization"][:2], [1.0, 0.0])
    assert np.isnan(m["memorization"][2]) and np.isnan(m["lo"][2])
    # Wilson: p = 0 from 4 draws -> [0, z^2 / (n + z^2)]; p = 0.5 from 4 -> symmetric about 0.5
    z = 1.959963984540054
    lo, hi = wilson(np.array([0.0, 0.5, 0.5]), np.array([4, 4, 16]))
    assert lo[0] == 0 and hi[0] == pytest.approx(z * z / (4 + z * z))
    assert lo[1] + hi[1] == pytest.approx(1.0) and hi[1] - lo[1] > hi[2] - lo[2]  # more models, a narrower interval
    np.testing.assert_allclose([m["lo"][0], m["hi"][0]], [1 - z * z / (4 + z * z), 1.0])


# ----------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def folds3(tmp_path_factory):
    """A tiny digits run with 20 % noise and its holdout stage: 3 folds of the run's own recipe."""
    tmp = tmp_path_factory.mktemp("ho")
    cfg = tiny_cfg(tmp, "noise.kind=symmetric", "noise.rate=0.2", "holdout.models=3", "data.subset=600",
                   "train.epochs=20", "train.lr=0.05")
    train(cfg)
    return cfg, run_holdout(cfg, progress=False)


def test_each_row_is_the_prediction_of_the_model_that_never_saw_the_sample(folds3):
    cfg, res = folds3
    run = open_run(cfg)
    given = run.record["given_labels"].numpy()
    ho = load_holdout(run.scores, run.identity, given, required=True)
    mask = membership(given, "folds", 3, seed=0)
    np.testing.assert_array_equal(ho.train_mask, mask)
    assert (ho.n_out == 1).all() and len(ho.sample) == 600 and np.allclose(ho.probs.sum(1), 1, atol=1e-5)
    ds = run.data.train_eval
    for m in range(3):
        mcfg = model_config(run.cfg, run.cfg["holdout"], m)
        rec = load_npz(run_dir(mcfg) / "record.npz")
        held = np.flatnonzero(~mask[m])
        assert np.array_equal(rec["parent_index"], np.flatnonzero(mask[m]))  # trained on exactly its share
        assert np.intersect1d(rec["parent_index"], held).size == 0
        model = open_run(mcfg).load_model(-1)
        with torch.no_grad():
            want = torch.softmax(model(torch.stack([ds[int(i)][1] for i in held])).double(), -1).numpy()
        rows = ho.model == m
        np.testing.assert_array_equal(ho.sample[rows], held)
        np.testing.assert_allclose(ho.probs[rows], want, atol=1e-6)
    z = load_npz(holdout_dir(run.scores) / FILE)
    assert str(z["run_identity"]) == run.identity and len(z["accuracy"]) == 3
    assert (holdout_dir(run.scores) / "models.csv").is_file()


def test_a_quality_floor_chance_cannot_reach(folds3):
    """20 % symmetric noise: ranking by held-out 1 - p(given) puts label errors first far above the 0.2 of chance."""
    cfg, _ = folds3
    run = open_run(cfg)
    given = run.record["given_labels"].numpy()
    ho = load_holdout(run.scores, run.identity, given, required=True)
    p = ho.mean_probs()
    noisy = run.record["is_noisy"].numpy()
    prec = precision_at_k(1 - p[np.arange(len(given)), given], noisy)
    assert prec >= 0.6, prec
    # and the held-out suggestion names the true label of most errors it is confident about
    sure = noisy & (p.max(1) >= 0.5) & (p.argmax(1) != given)
    assert sure.sum() >= 30 and (p.argmax(1)[sure] == run.record["true_labels"].numpy()[sure]).mean() >= 0.8


def test_a_second_call_reuses_the_models_and_refuses_stale_ones(folds3):
    cfg, res = folds3
    path = holdout_dir(open_run(cfg).scores) / FILE
    before = load_npz(path)
    stamps = [(run_dir(model_config(open_run(cfg).cfg, cfg["holdout"], m)) / "resume.pt").stat().st_mtime_ns
              for m in range(3)]
    run_holdout(cfg, progress=False)
    after = load_npz(path)
    assert all(np.array_equal(before[k], after[k]) for k in ("probs", "sample", "train_mask"))
    assert stamps == [(run_dir(model_config(open_run(cfg).cfg, cfg["holdout"], m)) / "resume.pt").stat().st_mtime_ns
                      for m in range(3)]


def test_killed_and_rerun_is_bit_identical(tmp_path):
    over = ["data.subset=200", "train.epochs=4", "holdout.models=2", "noise.rate=0.2"]
    paths = lambda d: [f"paths.pretrained={d}/p", f"paths.scores={d}/s", f"paths.logs={d}/l"]  # noqa: E731
    for d in ("a", "b"):
        out = run_script("train_digits.py", "run=k", *over, *paths(tmp_path / d))
        assert out.returncode == 0, out.stderr
    clean = run_script("holdout.py", "run=k", *paths(tmp_path / "a"))
    assert clean.returncode == 0, clean.stderr
    # the second model's training is killed (SIGKILL) mid-way: 100 samples, batch 64 -> 2 steps an epoch, 8 a model
    killed = run_script("holdout.py", "run=k", *paths(tmp_path / "b"), env={"TOOLKIT_FAULT": "kill:step:13"})
    assert killed.returncode == -9 and not (tmp_path / "b/s/k/holdout" / FILE).exists()
    again = run_script("holdout.py", "run=k", *paths(tmp_path / "b"))
    assert again.returncode == 0 and "resuming" in again.stdout + again.stderr, again.stderr
    a, b = load_npz(tmp_path / "a/s/k/holdout" / FILE), load_npz(tmp_path / "b/s/k/holdout" / FILE)
    for k in ("probs", "sample", "model", "train_mask", "accuracy", "identity"):
        assert np.array_equal(a[k], b[k]), k
    assert "written:" in clean.stdout and "held-out accuracy" in clean.stdout


def test_subsets_mlp_and_init(tmp_path):
    cfg = tiny_cfg(tmp_path, "holdout.method=mlp", "holdout.scheme=subsets", "holdout.models=6", "train.epochs=5")
    train(cfg)
    res = run_holdout(cfg, progress=False)
    assert res["n_out"].mean() == pytest.approx(3.0, abs=0.2) and "6 MLPs" in res["source"]
    # train.init: a holdout model starts from another run's final weights (here: a run on other digits)
    other = tiny_cfg(tmp_path, "run=other", "data.subset=0", "train.epochs=2")
    train(other)
    cfg2 = tiny_cfg(tmp_path, "holdout.init=other", "holdout.train.epochs=1", "holdout.models=2", "train.epochs=2",
                    "run=tiny2")
    train(cfg2)
    run_holdout(cfg2, progress=False)
    m0 = model_config(open_run(cfg2).cfg, cfg2["holdout"], 0)
    start = open_run(m0).checkpoint(0)["model"]
    final_other = open_run(other).checkpoint(-1)["model"]
    assert all(torch.equal(start[k], final_other[k]) for k in final_other)
    assert open_run(m0).cfg["train"]["init_identity"] == open_run(other).identity
    with pytest.raises(UserError, match="unknown config key 'train.epoch'"):
        run_holdout(tiny_cfg(tmp_path, "holdout.train.epoch=1", "train.epochs=5"), progress=False)
    with pytest.raises(UserError, match="holdout.models=1"):
        run_holdout(tiny_cfg(tmp_path, "holdout.models=1", "train.epochs=5"), progress=False)


# ----------------------------------------------------------------------------- labels from a file
def _write(path, rows, header=("index", "file", "label", "remove")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def test_labels_and_exclusions_from_a_csv_by_index(tmp_path):
    f = _write(tmp_path / "d.csv", [{"index": 0, "file": "", "label": "7", "remove": 0},
                                    {"index": 3, "file": "", "label": "2", "remove": 1},
                                    {"index": 5, "file": "", "label": 4, "remove": "true"}])
    base = tiny_cfg(tmp_path, "noise.kind=none", "noise.rate=0", "run=base")
    train(base)
    cfg = tiny_cfg(tmp_path, "noise.kind=none", "noise.rate=0", f"data.labels={f}", f"data.exclude={f}", "run=fixed")
    train(cfg)
    run, b = open_run(cfg), open_run(base)
    given, bg = run.record["given_labels"].numpy(), b.record["given_labels"].numpy()
    assert len(given) == 298 and given[0] == 7  # samples 3 and 5 removed
    np.testing.assert_array_equal(given[1:], np.delete(bg, [0, 3, 5]))
    assert run.record["excluded"] == 2 and run.record["labels_sha256"] and run.record["labels_rows"] == 3
    assert int(run.record["is_noisy"].sum()) == int(bg[0] != 7)  # the data set's own labels stay the truth
    f.write_text(f.read_text().replace("7", "8"))
    with pytest.raises(UserError, match="changed since run fixed was trained"):
        _ = open_run(cfg).data
    with pytest.raises(UserError, match="label 'x' is neither a class name"):
        train(tiny_cfg(tmp_path, f"data.labels={_write(tmp_path / 'e.csv', [{'index': 1, 'label': 'x'}], ('index', 'label'))}",
                       "run=bad"))
    with pytest.raises(UserError, match="index 999 is outside"):
        train(tiny_cfg(tmp_path, f"data.labels={_write(tmp_path / 'f.csv', [{'index': 999, 'label': '1'}], ('index', 'label'))}",
                       "run=bad2"))
    with pytest.raises(UserError, match="no column 'aggre'"):
        train(tiny_cfg(tmp_path, f"data.labels={f}", "data.labels_column=aggre", "run=bad3"))


def test_labels_by_file_with_a_named_column_and_decisions_from_a_run(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=4)
    over = ("data.name=imagefolder", f"data.root={root}", "data.image_size=8", "data.subset=0", "train.epochs=1",
            "noise.kind=none", "noise.rate=0", "model.name=digits_mlp")
    f = _write(tmp_path / "h.csv", [{"file": "train/a/1.png", "human": "c"}, {"file": "train/b/0.png", "human": "a"}],
               ("file", "human"))
    cfg = tiny_cfg(tmp_path, *over, f"data.labels={f}", "data.labels_column=human", "run=h")
    train(cfg)
    rec = open_run(cfg).record
    files = list(np.asarray(rec["source_files"])[rec["source_index"].numpy()])  # each sample's file
    assert rec["given_labels"][files.index("train/a/1.png")] == 2 and rec["given_labels"][files.index("train/b/0.png")] == 0
    assert int(rec["is_noisy"].sum()) == 2 and rec["labels_changed"] == 2
    # decisions made on run h (its labels are the base): one relabel, one removal; the record names run h
    d = _write(tmp_path / "dec.csv", [{"index": files.index("train/c/3.png"), "file": "train/c/3.png", "label": "a",
                                       "remove": 0, "decision": "relabel", "from_run": "h", "from_identity": "x"},
                                      {"index": 0, "file": "train/a/0.png", "label": "a", "remove": 1,
                                       "decision": "remove", "from_run": "h", "from_identity": "x"}],
               ("index", "file", "label", "remove", "decision", "from_run", "from_identity"))
    fixed = tiny_cfg(tmp_path, *over, f"data.labels={d}", f"data.exclude={d}", "run=fixed")
    train(fixed)
    r2 = open_run(fixed).record
    assert r2["corrected_from"] == "h" and r2["labels_changed_from_run"] == 1 and r2["excluded"] == 1
    f2 = list(np.asarray(r2["source_files"])[r2["source_index"].numpy()])
    assert "train/a/0.png" not in f2 and r2["given_labels"][f2.index("train/a/1.png")] == 2  # h's label kept
    assert r2["given_labels"][f2.index("train/c/3.png")] == 0
    assert os.path.basename(str(open_run(fixed).cfg["data"]["labels"])) == "dec.csv"
