"""noise.kind=instance end to end: a tiny digits reference run on clean labels, an instance-noise run made from its
training statistics, what the run record keeps, and one error line per wrong reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from utils.config import identity_hash
from utils.data import build_data
from utils.errors import UserError
from utils.io import load_npz, save_npz
from utils.noise import instance_labels, reference_confusion
from utils.runs import open_run, run_dir
from utils.train import train

from .conftest import run_script, tiny_cfg


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory):
    """A tiny digits reference run on the clean labels (seed 1) and a noisy run, shared by the tests."""
    tmp = tmp_path_factory.mktemp("inst")
    train(tiny_cfg(tmp, "run=ref", "noise.kind=none", "noise.rate=0", "train.seed=1"))
    train(tiny_cfg(tmp, "run=noisyref", "train.epochs=1"))  # digits.yaml: 10 % symmetric noise
    return tmp


def _inst(tmp, *o: str) -> dict:
    return tiny_cfg(tmp, "run=inst", "noise.kind=instance", "noise.rate=0.1", "noise.reference=ref", *o)


def test_instance_run_flips_the_most_confusable_and_records_its_reference(ref_dir, tmp_path):
    for sub in ("pretrained/ref",):
        shutil.copytree(ref_dir / sub, tmp_path / sub)
    cfg = _inst(tmp_path)
    train(cfg)
    z = load_npz(tmp_path / "pretrained/ref/train_stats.npz")
    conf, cls = reference_confusion(z["other"], z["other_prob"])
    expected = instance_labels(z["true_label"], conf, cls, 0.1)
    rec = load_npz(run_dir(cfg) / "record.npz")
    assert np.array_equal(rec["given_labels"], expected) and np.array_equal(rec["true_labels"], z["true_label"])
    flipped = rec["given_labels"] != rec["true_labels"]
    assert flipped.sum() == 30  # exactly round(0.1 * 300)
    assert conf[flipped].min() >= conf[~flipped].max()  # the most confusable ones
    assert np.array_equal(rec["given_labels"][flipped], cls[flipped])  # to the class the reference confuses them with
    head = json.loads((run_dir(cfg) / "run.json").read_text())
    ref_ident = json.loads((tmp_path / "pretrained/ref/run.json").read_text())["identity"]
    assert head["config"]["noise"]["reference"] == "ref" and head["config"]["noise"]["reference_identity"] == ref_ident
    assert head["data"]["noise_reference"] == "ref" and head["data"]["noise_reference_identity"] == ref_ident
    assert head["data"]["noise_rule"].startswith("instance: ")
    other = {**cfg, "noise": {**cfg["noise"], "reference_identity": "0" * 16}}
    assert identity_hash(other) != head["identity"] == identity_hash(cfg)
    # the reference retrained with another config under the same name: this run's identity changes with it
    shutil.rmtree(tmp_path / "pretrained/ref")
    train(tiny_cfg(tmp_path, "run=ref", "noise.kind=none", "noise.rate=0", "train.seed=2", "train.epochs=1"))
    with pytest.raises(UserError, match="noise.reference_identity"):
        train(_inst(tmp_path))
    # a later stage opens the run from its record alone (the reference is not read again)
    shutil.rmtree(tmp_path / "pretrained/ref")
    run = open_run(_inst(tmp_path))
    assert np.array_equal(run.data.record["given_labels"].numpy(), expected)


def _broken(ref_dir, tmp_path, name, change):
    """A copy of the reference run under another name, changed by `change(directory)`."""
    d = tmp_path / "pretrained" / name
    shutil.copytree(ref_dir / "pretrained/ref", d)
    change(d)
    return d


def test_wrong_references_are_one_line_errors(ref_dir, tmp_path):
    shutil.copytree(ref_dir / "pretrained/noisyref", tmp_path / "pretrained/noisyref")

    def drop(*keys):
        def change(d):
            z = load_npz(d / "train_stats.npz")
            save_npz(d / "train_stats.npz", **{k: v for k, v in z.items() if k not in keys})
        return change

    def permute(d):
        z = load_npz(d / "train_stats.npz")
        save_npz(d / "train_stats.npz", **{**z, "true_label": z["true_label"][::-1].copy()})

    _broken(ref_dir, tmp_path, "old", drop("other", "other_prob"))
    _broken(ref_dir, tmp_path, "unfinished", lambda d: (d / "train_stats.npz").unlink())
    _broken(ref_dir, tmp_path, "shuffled", permute)
    cases = {"": "needs noise.reference=<run>", "nope": "reference run 'nope' not found",
             "noisyref": "was trained on noisy labels", "old": "before the training statistics kept other",
             "unfinished": "is not trained to the end", "shuffled": "trained on other data",
             "inst": "names this run itself"}
    for name, match in cases.items():
        with pytest.raises(UserError, match=match):
            build_data(_inst(tmp_path, f"noise.reference={name}"))
    shutil.copytree(ref_dir / "pretrained/ref", tmp_path / "pretrained/ref")
    with pytest.raises(UserError, match=r"other data \(data.subset: 300 there, 200 here\)"):
        build_data(_inst(tmp_path, "data.subset=200"))
    res = run_script("train_digits.py", f"paths.pretrained={tmp_path}/pretrained", "run=x", "noise.kind=instance",
                     "noise.rate=0.1", "data.subset=300", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: noise.kind=instance needs")


def test_instance_noise_with_canaries_and_exclusions_reopens_from_its_record(ref_dir, tmp_path):
    """The record keeps the noise step's labels (noise_labels), so a later stage rebuilds exactly the trained labels
    when canaries, a labels file and exclusions sit on top of instance noise (and a fold model of it too)."""
    shutil.copytree(ref_dir / "pretrained/ref", tmp_path / "pretrained/ref")
    drop = tmp_path / "drop.csv"
    drop.write_text("index,remove\n3,1\n7,1\n")
    cfg = _inst(tmp_path, "noise.canaries=0.05", "noise.canary_reference=ref", f"data.exclude={drop}")
    train(cfg)
    rec = load_npz(run_dir(cfg) / "record.npz")
    assert len(rec["noise_labels"]) == 300 and len(rec["given_labels"]) == 298 and rec["is_canary"].sum() == 15
    run = open_run(_inst(tmp_path))
    assert np.array_equal(run.data.record["given_labels"].numpy(), rec["given_labels"])
    assert np.array_equal(run.data.record["is_canary"].numpy(), rec["is_canary"])
    fold = _inst(tmp_path, "run=fold", "noise.canaries=0.05", "noise.canary_reference=ref", f"data.exclude={drop}",
                 "data.folds=2")
    train(fold)
    f = open_run(_inst(tmp_path, "run=fold"))
    assert np.array_equal(f.data.record["given_labels"].numpy(), load_npz(run_dir(fold) / "record.npz")["given_labels"])
