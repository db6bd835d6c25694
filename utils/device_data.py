"""Device-resident data (`data.on_device=true`): uint8 images on the training device, batches made there.

For in-memory data sets (CIFAR, in-memory ImageFolder, digits: an `IndexedDataset` holding a uint8 tensor and a
`TensorTransform`), the images (N_src, C, H, W) are copied to the device once. A batch of sample indices (B,)
becomes a float batch (B, C, H, W) on the device by gathers and elementwise arithmetic, without per-sample Python:

- training (`DeviceLoader`): the same global-batch order as `utils.data.make_loader` (`GlobalBatchSampler`, same
  seed and epoch), then a batched random crop (zero padding by `data.crop_pad` pixels, per-sample offsets) and a
  horizontal flip. The offsets and the flip of sample i in epoch e are a counter-based hash of (train.seed, e, i)
  (`utils.hashing`): no generator state, so a resumed run and every rank draw exactly the same augmentation;
- evaluation and scoring (`DeviceDataset.device_batch`, used by `utils.distributed.sharded_map`): un-augmented
  batches, bit-identical to what the DataLoader path gives (the same float operations in the same order).

The augmented views follow the same distribution as `TensorTransform`'s (offsets uniform on [0, 2*pad], flip with
probability 1/2), not the same draws: a run trained with `data.on_device=true` is another run (its identity says so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from .data import DataBundle, GlobalBatchSampler, IndexedDataset, TensorTransform
from .errors import UserError
from .hashing import key_hash, mix_index

_AUG_STREAM = 0xA06  # keeps augmentation hashes apart from other users of utils.hashing


def augment_params(index: torch.Tensor, pad: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets and flips for sample indices (B,) int64: (top (B,), left (B,)) int64 in [0, 2*pad]
    (pixels into the padded image) and flip (B,) bool, on index's device. Disjoint bits of one 32-bit hash of
    (seed, epoch, index) (`utils.hashing.mix_index`)."""
    h = mix_index(key_hash(seed, epoch, _AUG_STREAM), index).view(-1)  # (B,) 32-bit values
    span = 2 * pad + 1
    return (h & 0xFFFF) % span, ((h >> 16) & 0x7FFF) % span, (h >> 31) == 1


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched pad-`pad` crop + horizontal flip of images (B, C, H, W) (any dtype): sample b shows rows
    top[b]..top[b]+H-1 and columns left[b]..left[b]+W-1 of its zero-padded image, mirrored when flip[b]
    (exactly `TensorTransform`'s crop, then flip). One gather, no Python loop over samples."""
    b, c, h, w = images.shape
    x = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    ar_w = torch.arange(w, device=images.device)
    cols = left.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # (B, W)
    rows = top.view(b, 1) + torch.arange(h, device=images.device)  # (B, H)
    flat = rows.view(b, h, 1) * (w + 2 * pad) + cols.view(b, 1, w)  # (B, H, W) into the padded (Hp * Wp) plane
    return x.reshape(b, c, -1).gather(2, flat.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


class DeviceDataset:
    """An `IndexedDataset` with its uint8 images (N_src, C, H, W) on `device`.

    `device_batch(index)` -> (x (B, C, H, W) float32 normalised, y (B,) int64), both on the device. Everything
    else (`len`, `ds[i]`, `raw`, labels, `is_noisy`, ...) is the wrapped dataset's (on the CPU)."""

    def __init__(self, base: IndexedDataset, device: torch.device | str, images: torch.Tensor | None = None) -> None:
        tf = base.transform
        if not isinstance(base.images, torch.Tensor) or not isinstance(tf, TensorTransform):
            raise UserError("data.on_device=true needs an in-memory data set (digits, cifar10/100, or imagefolder with "
                            "data.in_memory=true); set data.on_device=false for file-backed sets such as ImageNet")
        self.base = base
        self.device = torch.device(device)
        self.images = images if images is not None else base.images.to(self.device)  # (N_src, C, H, W) uint8
        self.source = torch.as_tensor(base.source_index, dtype=torch.int64).to(self.device)  # (N,)
        self.labels = torch.as_tensor(base.given_labels, dtype=torch.int64).to(self.device)  # (N,)
        self.mean = tf.mean.view(1, -1, 1, 1).to(self.device)
        self.std = tf.std.view(1, -1, 1, 1).to(self.device)
        self.scale, self.pad, self.augment, self.flip = tf.scale, tf.pad, tf.augment, tf.flip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        return self.base[i]

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not yet set (copy / unpickling)
            raise AttributeError(name)
        return getattr(self.base, name)

    def device_batch(self, index: torch.Tensor, seed: int | None = None, epoch: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample indices (B,) -> (x (B, C, H, W) float32 in the model's input space, y (B,) given labels).

        An augmenting dataset (the training set) needs the (seed, epoch) keys of its crops and flips."""
        index = index.to(self.device, torch.int64)
        x = self.images[self.source[index]].float()  # (B, C, H, W), the uint8 values
        if self.augment:
            if seed is None or epoch is None:
                raise ValueError("an augmenting DeviceDataset needs the seed and epoch of its augmentation")
            top, left, flip = augment_params(index, self.pad, seed, epoch)
            x = crop_flip(x, top, left, flip & self.flip, pad=self.pad)  # exact copies and zeros
        x = x / self.scale  # the same float operations as TensorTransform: bit-identical un-augmented batches
        return (x - self.mean) / self.std, self.labels[index]


class DeviceLoader:
    """Training batches (index (B,), x (B, C, H, W), y (B,)) made on the device from a `DeviceDataset`.

    Batch order: `batch_sampler` (a `GlobalBatchSampler`, as `make_loader` builds it), so `set_epoch`,
    `global_batches()` and the rank's strided share of each global batch are those of the DataLoader path.
    Augmentation keys: (seed, the sampler's epoch, sample index)."""

    def __init__(self, dataset: DeviceDataset, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.dataset, self.seed = dataset, seed
        self.batch_sampler = GlobalBatchSampler(len(dataset), batch_size, rank, world, shuffle, seed)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        s = self.batch_sampler
        mine = [b[s.rank::s.world] for b in s.global_batches()]
        if not mine:
            return
        flat = torch.cat(mine).to(self.dataset.device)  # one host-to-device copy per epoch
        for idx in flat.split([len(m) for m in mine]):
            x, y = self.dataset.device_batch(idx, self.seed, s.epoch)
            yield idx, x, y


def bundle_on_device(data: DataBundle, device: torch.device | str) -> DataBundle:
    """The bundle with train / train_eval / test as `DeviceDataset`s; train and train_eval share one image tensor."""
    train = DeviceDataset(data.train, device)
    same = data.train_eval.images is data.train.images
    train_eval = DeviceDataset(data.train_eval, device, train.images if same else None)
    return dataclasses.replace(data, train=train, train_eval=train_eval, test=DeviceDataset(data.test, device))


def device_loader(data: DataBundle, batch_size: int, *, seed: int, rank: int, world: int,
                  device: torch.device | str) -> tuple[DataBundle, DeviceLoader]:
    """`data.on_device=true` in training: the bundle on the device and its shuffled training loader."""
    data = bundle_on_device(data, device)
    return data, DeviceLoader(data.train, batch_size, shuffle=True, seed=seed, rank=rank, world=world)
