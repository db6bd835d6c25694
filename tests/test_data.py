"""Loaders on tiny files written in the real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch
from torchvision.datasets import cifar

from utils.data import GlobalBatchSampler, build_data, stratified_subset
from utils.distributed import shard_range
from utils.errors import UserError

from .conftest import tiny_cfg, write_image_folder

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar10(root, n_per_batch=20):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, n_per_batch))}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)


def test_cifar10_pickle_batches(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "data")
    # The real torchvision loader parses our files; only its md5 check (of the official archive) is bypassed.
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    cfg = tiny_cfg(tmp_path, "data.name=cifar10", f"data.root={tmp_path}/data", "data.subset=0",
                   "noise.rate=0.1", "noise.duplicates=3")
    b = build_data(cfg)
    assert len(b.train) == 100 + 3 and len(b.test) == 20 and b.classes == CLASSES
    i, x, y = b.train_eval[5]
    assert i == 5 and x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == b.train.given_labels[5]
    assert b.train.is_noisy[:100].sum() == 10 and b.train.is_duplicate.sum() == 3
    # a duplicate shows exactly its source image, with another label
    j = 100
    src = b.train.duplicate_of[j]
    assert torch.equal(b.train_eval[j][1], b.train_eval[src][1]) and b.train.given_labels[j] != b.train.true_labels[j]
    # the augmented view differs from the un-augmented one but keeps the shape
    torch.manual_seed(0)
    assert b.train[5][1].shape == (3, 32, 32)


def test_cifar_missing_says_how_to_get_it(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.name=cifar10", f"data.root={tmp_path}/none", "data.download=false")
    with pytest.raises(UserError, match="data.download=true"):
        build_data(cfg)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_imagefolder(tmp_path, ext):
    write_image_folder(tmp_path / "data" / "mini", ext=ext)
    cfg = tiny_cfg(tmp_path, "data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=mini", "data.subset=0")
    b = build_data(cfg)
    assert b.classes == ["a", "b", "c"] and len(b.train) == 12 and b.in_channels == 3 and b.image_size == 32
    assert list(b.train.true_labels) == [0] * 4 + [1] * 4 + [2] * 4


def test_imagefolder_lazy_and_data_root_env(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data" / "imagenet", ext="jpg")
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    cfg = tiny_cfg(tmp_path, "data.name=imagenet", "data.in_memory=false", "data.image_size=16", "data.subset=0")
    b = build_data(cfg)
    assert b.train_eval[0][1].shape == (3, 16, 16) and b.train[0][1].shape == (3, 16, 16)


def test_missing_and_empty_folders(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=mini")
    with pytest.raises(UserError, match="not found"):
        build_data(cfg)
    write_image_folder(tmp_path / "data" / "mini")
    (tmp_path / "data" / "mini" / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        build_data(cfg)


def test_digits_split_and_record(tmp_path):
    b = build_data(tiny_cfg(tmp_path, "data.subset=0"))
    assert len(b.train) == 1347 and len(b.test) == 450 and b.in_channels == 1 and b.image_size == 8
    r = b.record
    assert r["is_noisy"].sum() == round(0.1 * 1347)
    assert torch.equal(r["is_noisy"], r["given_labels"] != r["true_labels"])
    assert abs(float(torch.stack([b.train_eval[i][1] for i in range(300)]).mean())) < 0.2  # normalised


def test_global_batch_sampler_partitions_batches():
    one = GlobalBatchSampler(103, 10, 0, 1, True, 5)
    two = [GlobalBatchSampler(103, 10, r, 2, True, 5) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(3)
    for b, b0, b1 in zip(one, *two):
        assert sorted(b) == sorted(b0 + b1) and abs(len(b0) - len(b1)) <= 1
    assert sorted(i for b in one for i in b) == list(range(103))
    assert [list(shard_range(10, r, 3)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_subset_is_seeded_and_stratified(tmp_path):
    # a class-sorted folder: the first N images would all be class "a"
    write_image_folder(tmp_path / "data" / "sorted", classes=("a", "b", "c", "d"), n=10)
    base = ["data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=sorted", "noise.rate=0"]
    b = build_data(tiny_cfg(tmp_path, *base, "data.subset=8"))
    assert sorted(np.bincount(b.train.true_labels, minlength=4).tolist()) == [2, 2, 2, 2]
    again = build_data(tiny_cfg(tmp_path, *base, "data.subset=8"))
    other = build_data(tiny_cfg(tmp_path, *base, "data.subset=8", "data.subset_seed=1"))
    assert np.array_equal(b.train.true_labels, again.train.true_labels)
    assert not torch.equal(torch.stack([b.train_eval[i][1] for i in range(8)]),
                           torch.stack([other.train_eval[i][1] for i in range(8)]))
    labels = np.repeat(np.arange(3), [50, 30, 20])
    keep = stratified_subset(labels, 10, 0)
    assert np.bincount(labels[keep]).tolist() == [5, 3, 2] and np.all(np.diff(keep) > 0)


def test_negative_subset_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="data.subset=-3 must be >= 0"):
        build_data(tiny_cfg(tmp_path, "data.subset=-3"))


def test_offline_download_says_how_to_get_it(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import CIFAR10

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", offline)
    cfg = tiny_cfg(tmp_path, "data.name=cifar10", f"data.root={tmp_path}/none", "data.download=true")
    with pytest.raises(UserError, match="offline") as e:
        build_data(cfg)
    assert "cifar-10-python.tar.gz" in str(e.value) and "\n" not in str(e.value)
