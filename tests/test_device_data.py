"""Device-resident data (`data.on_device`): batch order, hashed crops and flips, eval batches, exact resume."""

import copy

import numpy as np
import pytest
import torch

from utils.config import identity_hash
from utils.curvature.scoring import score_model, score_run
from utils.data import build_data, make_loader
from utils.device_data import DeviceDataset, DeviceLoader, augment_params, bundle_on_device, crop_flip
from utils.distributed import Dist
from utils.errors import UserError
from utils.evaluate import evaluate
from utils.models import build_model
from utils.runs import load_checkpoint, open_run
from utils.train import train

from .conftest import run_script, tiny_cfg, write_image_folder

CPU = Dist(0, 1, 0, torch.device("cpu"))


def _folder_cfg(tmp_path, *overrides):
    if not (tmp_path / "data" / "rand").is_dir():
        write_image_folder(tmp_path / "data" / "rand", n=12, noise=True, size=16)
    return tiny_cfg(tmp_path, "data.name=imagefolder", f"data.root={tmp_path}/data", "data.folder=rand",
                    "data.subset=0", "data.image_size=16", "model.name=digits_cnn", "model.width=4",
                    "train.batch_size=8", "noise.rate=0.1", *overrides)


def _reference(img: torch.Tensor, top: int, left: int, flip: bool, pad: int) -> torch.Tensor:
    """TensorTransform's crop + flip of one image (C, H, W), offsets given."""
    _, h, w = img.shape
    x = torch.nn.functional.pad(img, (pad, pad, pad, pad))[:, top:top + h, left:left + w]
    return x.flip(-1) if flip else x


@pytest.mark.parametrize("world", [1, 2])
def test_same_batches_as_the_dataloader_path(tmp_path, world):
    data = build_data(_folder_cfg(tmp_path, "data.augment=false"))
    dev = bundle_on_device(data, "cpu")
    for rank in range(world):
        ref = make_loader(data.train, 8, shuffle=True, seed=3, rank=rank, world=world)
        got = DeviceLoader(dev.train, 8, shuffle=True, seed=3, rank=rank, world=world)
        assert len(got) == len(ref)
        for epoch in (1, 2):
            ref.batch_sampler.set_epoch(epoch)
            got.set_epoch(epoch)
            assert [b.tolist() for b in got.batch_sampler.global_batches()] == \
                [b.tolist() for b in ref.batch_sampler.global_batches()]
            pairs = list(zip(ref, got, strict=True))
            for (i0, x0, y0), (i1, x1, y1) in pairs:
                assert torch.equal(i0, i1) and torch.equal(y0, y1) and torch.equal(x0, x1)  # un-augmented: bit-identical
            if epoch == 1:
                first = [p[1][0] for p in pairs]
        assert [b[0].tolist() for b in first] != [p[1][0].tolist() for p in pairs]  # reshuffled per epoch


def test_augmentation_is_a_hash_of_seed_epoch_index():
    idx = torch.arange(2000)
    top, left, flip = augment_params(idx, 4, seed=0, epoch=1)
    again = augment_params(idx, 4, seed=0, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip((top, left, flip), again))
    # a sample's draw does not depend on its batch: the reversed batch gives the reversed draws
    rev = augment_params(idx.flip(0), 4, seed=0, epoch=1)
    assert torch.equal(rev[0], top.flip(0)) and torch.equal(rev[2], flip.flip(0))
    assert set(top.tolist()) == set(range(9)) == set(left.tolist())
    assert 0.45 < flip.float().mean() < 0.55 and abs(float(top.float().mean()) - 4) < 0.3
    for other in (augment_params(idx, 4, seed=0, epoch=2), augment_params(idx, 4, seed=1, epoch=1)):
        assert (other[0] != top).float().mean() > 0.8 and (other[2] != flip).float().mean() > 0.4
    assert (top != left).float().mean() > 0.8  # rows and columns drawn independently


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_flip_is_tensor_transforms_crop(pad):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    top, left, flip = augment_params(torch.arange(6), pad, seed=5, epoch=7)
    out = crop_flip(img, top, left, flip, pad)
    for b in range(6):
        assert torch.equal(out[b], _reference(img[b], int(top[b]), int(left[b]), bool(flip[b]), pad))
    if pad == 0:  # flip only: every image is itself or its mirror
        assert not top.any() and not left.any()
        for b in range(6):
            assert torch.equal(out[b], img[b].flip(-1) if flip[b] else img[b])


def test_training_batches_are_the_transforms_crops(tmp_path):
    data = build_data(_folder_cfg(tmp_path, "data.crop_pad=2"))
    tf = data.train.transform
    dev = DeviceDataset(data.train, "cpu")
    idx = torch.tensor([4, 0, 17, 9])
    x, y = dev.device_batch(idx, seed=3, epoch=5)
    top, left, flip = augment_params(idx, 2, seed=3, epoch=5)
    for b, i in enumerate(idx.tolist()):
        raw = data.train.raw(i).float() / tf.scale
        want = (_reference(raw, int(top[b]), int(left[b]), bool(flip[b]), 2) - tf.mean) / tf.std
        assert torch.equal(x[b], want) and int(y[b]) == data.train.given_labels[i]
    assert not torch.equal(x, dev.device_batch(idx, seed=3, epoch=6)[0])
    with pytest.raises(ValueError, match="seed and epoch"):
        dev.device_batch(idx)


def test_eval_passes_are_bit_identical_on_device(tmp_path):
    data = build_data(_folder_cfg(tmp_path))
    dev = bundle_on_device(data, "cpu")
    assert dev.train_eval.images is dev.train.images and not dev.train_eval.augment
    torch.manual_seed(0)
    model = build_model("digits_cnn", 3, 3, 16, width=4)
    a = evaluate(model, data.train_eval, CPU, batch_size=7, keep_logits=True)
    b = evaluate(model, dev.train_eval, CPU, batch_size=7, keep_logits=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert dev.test[2][0] == 2 and np.array_equal(dev.train_eval.is_noisy, data.train_eval.is_noisy)


def test_file_backed_sets_are_refused(tmp_path):
    write_image_folder(tmp_path / "data" / "imagenet", ext="jpg")
    data = build_data(tiny_cfg(tmp_path, "data.name=imagenet", f"data.root={tmp_path}/data", "data.in_memory=false",
                               "data.image_size=16", "data.subset=0"))
    with pytest.raises(UserError, match="in-memory"):
        DeviceDataset(data.train, "cpu")


def test_identity_keeps_dataloader_runs_and_separates_device_runs(tmp_path):
    cfg = _folder_cfg(tmp_path)
    old = copy.deepcopy(cfg)
    del old["data"]["on_device"], old["train"]["compile"]
    assert identity_hash(cfg) == identity_hash(old)
    assert identity_hash(_folder_cfg(tmp_path, "data.on_device=true")) != identity_hash(cfg)
    assert identity_hash(_folder_cfg(tmp_path, "train.compile=true")) == identity_hash(cfg)


def test_on_device_training_resumes_bit_identically(tmp_path):
    full = train(_folder_cfg(tmp_path, "data.on_device=true", "train.epochs=2", "run=full"))
    train(_folder_cfg(tmp_path, "data.on_device=true", "train.epochs=1", "run=split"))
    split = train(_folder_cfg(tmp_path, "data.on_device=true", "train.epochs=2", "run=split"))
    a, b = load_checkpoint(full / "epoch_002.pt")["model"], load_checkpoint(split / "epoch_002.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    dl = train(_folder_cfg(tmp_path, "train.epochs=1", "run=dataloader"))  # the other path: another run
    e1 = load_checkpoint(full / "epoch_001.pt")["model"]
    assert not all(torch.equal(e1[k], v) for k, v in load_checkpoint(dl / "epoch_001.pt")["model"].items())
    with np.load(full / "train_stats.npz") as z:
        assert z["loss"].shape == (2, 36) and np.isfinite(z["loss"]).all()


def test_device_run_scores_match_the_dataloader_path(tmp_path):
    cfg = _folder_cfg(tmp_path, "data.on_device=true", "train.epochs=1", "score.online=true", "run=scored")
    train(cfg)
    f = tmp_path / "curv_scores" / "scored" / "epoch_001.npz"
    with np.load(f) as z:
        online = z["curvature"]
    f.unlink()
    score_run(cfg)  # the offline scorer of a device run scores from device batches too
    with np.load(f) as z:
        offline = z["curvature"]
    run = open_run(cfg)
    plain = score_model(run.load_model(1), {"train": run.data.train_eval}, cfg["score"], 1, CPU)["curvature"]
    assert np.array_equal(online, offline) and np.array_equal(online, plain) and np.isfinite(plain).all()


def test_two_ranks_draw_the_same_augmentation_as_one_process(tmp_path):
    """Hashed crops and flips: 2 torchrun ranks train what 1 process trains, augmentation on (the DataLoader path's
    per-worker random draws cannot do that)."""
    write_image_folder(tmp_path / "data" / "rand", n=16, noise=True, size=16)
    args = [f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs", "data.name=imagefolder",
            f"data.root={tmp_path}/data", "data.folder=rand", "data.augment=true", "data.crop_pad=2", "data.image_size=16",
            "data.on_device=true", "model.name=digits_cnn", "model.width=4", "train.epochs=1", "train.batch_size=16",
            "train.lr=0.05", "noise.rate=0"]
    for run, nproc in (("one", 0), ("two", 2)):
        res = run_script("train_cifar10.py", *args, f"run={run}", cwd=tmp_path, nproc=nproc)
        assert res.returncode == 0, res.stderr[-2000:]
    wa = load_checkpoint(tmp_path / "pre/one/epoch_001.pt")["model"]
    wb = load_checkpoint(tmp_path / "pre/two/epoch_001.pt")["model"]
    w0 = load_checkpoint(tmp_path / "pre/one/epoch_000.pt")["model"]
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
