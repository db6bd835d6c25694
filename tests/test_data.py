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


# ----------------------------------------------------------------------------- MNIST (IDX files, torchvision's loader)
def write_mnist_idx(root, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """The four original IDX files (big-endian header, uint8 payload) under root/MNIST/raw/, as torchvision reads them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, :, :14] = 0  # left half dark: a horizontal mirror would be visible
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], ">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x801, n], ">i4").tobytes() + labels.tobytes())
    return raw


def test_mnist_idx_files(tmp_path):
    write_mnist_idx(tmp_path / "data")
    cfg = tiny_cfg(tmp_path, "data.name=mnist", f"data.root={tmp_path}/data", "data.subset=0", "noise.rate=0.1",
                   "noise.duplicates=2")
    b = build_data(cfg)
    assert len(b.train) == 62 and len(b.test) == 20 and b.in_channels == 1 and b.image_size == 28
    assert b.classes == [str(i) for i in range(10)] and b.record["dataset"] == "mnist"
    assert list(b.train.true_labels[:10]) == list(range(10)) and b.train.is_noisy[:60].sum() == 6
    raw = b.train.raw(3)
    assert raw.dtype == torch.uint8 and raw.shape == (1, 28, 28) and raw[:, :, :14].sum() == 0
    x = b.train_eval[3][1]
    assert torch.allclose(x, (raw.float() / 255 - 0.1307) / 0.3081)


def test_mnist_crops_never_mirror(tmp_path):
    write_mnist_idx(tmp_path / "data")
    base = ["data.name=mnist", f"data.root={tmp_path}/data", "data.subset=0"]
    plain = build_data(tiny_cfg(tmp_path, *base, "data.augment=true", "data.crop_pad=0"))
    assert not plain.train.transform.augment  # crop_pad 0: no augmentation at all (flips are never drawn)
    b = build_data(tiny_cfg(tmp_path, *base, "data.augment=true", "data.crop_pad=2"))
    dark = (0 - 0.1307) / 0.3081
    torch.manual_seed(0)
    for _ in range(40):  # a mirrored image would carry its bright half on the left: columns 0..11 stay dark
        assert torch.allclose(b.train[3][1][:, :, :12], torch.tensor(dark))


def test_mnist_missing_and_offline_say_how_to_get_it(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import MNIST

    cfg = tiny_cfg(tmp_path, "data.name=mnist", f"data.root={tmp_path}/none", "data.download=false")
    with pytest.raises(UserError, match="data.download=true") as e:
        build_data(cfg)
    assert "train-images-idx3-ubyte" in str(e.value) and "\n" not in str(e.value)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline, raising=False)
    cfg = tiny_cfg(tmp_path, "data.name=mnist", f"data.root={tmp_path}/none", "data.download=true")
    with pytest.raises(UserError, match="offline") as e:
        build_data(cfg)
    assert "data.download=false" in str(e.value) and "\n" not in str(e.value)
    assert MNIST is not None


def test_mnist_corrupt_idx_is_one_line(tmp_path):
    raw = write_mnist_idx(tmp_path / "data")
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 7)
    cfg = tiny_cfg(tmp_path, "data.name=mnist", f"data.root={tmp_path}/data", "data.subset=0")
    with pytest.raises(UserError, match="corrupt") as e:
        build_data(cfg)
    assert "\n" not in str(e.value)


def test_mnist_device_batches_crop_but_never_mirror(tmp_path):
    from utils.device_data import bundle_on_device

    write_mnist_idx(tmp_path / "data", n_train=40)
    base = ["data.name=mnist", f"data.root={tmp_path}/data", "data.subset=0", "data.augment=true", "data.crop_pad=2"]
    b = bundle_on_device(build_data(tiny_cfg(tmp_path, *base)), "cpu")
    idx = torch.arange(10)
    for epoch in range(5):
        x, _ = b.train.device_batch(idx, seed=0, epoch=epoch)
        assert torch.allclose(x[:, :, :, :12], torch.tensor((0 - 0.1307) / 0.3081))  # crops, never mirrored


def test_mnist_scripts_train_score_and_analyse(tmp_path):
    """train_mnist.py -> score_mnist_checkpoint.py run=<name>: the run record carries the data set."""
    from .conftest import run_script

    write_mnist_idx(tmp_path / "data", n_train=60)
    out = [f"paths.pretrained={tmp_path}/p", f"paths.scores={tmp_path}/s", f"paths.logs={tmp_path}/l"]
    r = run_script("train_mnist.py", "run=m", "data.subset=0", "model.name=digits_mlp", "model.width=16",
                   "train.epochs=2", "train.milestones=[]", *out, env={"DATA_ROOT": str(tmp_path / "data")})
    assert r.returncode == 0, r.stderr
    r = run_script("score_mnist_checkpoint.py", "run=m", *out, env={"DATA_ROOT": str(tmp_path / "data")})
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s" / "m" / "curvature.npz") as z:
        assert z["curvature"].shape == (60,) and str(z["dataset"]) == "mnist" and z["is_noisy"].sum() == 6
