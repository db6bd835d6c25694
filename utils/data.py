"""Dataset registry, transforms and indexed samples.

Every training sample yields `(index, image, given_label)`; `index` is the sample's position
in the training set (duplicates are appended after the originals) and is what every score
file is keyed by. Images come out normalised, in the model's input space.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UserError
from .faults import fault_point
from .label_steps import training_labels
from .noise import INSTANCE_RULE

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet", "imagefolder")


# ----------------------------------------------------------------------------- transforms
class TensorTransform:
    """uint8 (C,H,W) -> float (C,H,W): optional pad-`pad` random crop (pad=0: none) + horizontal flip (`flip`;
    off for digits, which a mirror would turn into other symbols), then normalise."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], augment: bool, scale: float = 255.0,
                 pad: int = 4, flip: bool = True):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment, self.scale, self.pad, self.flip = augment, scale, pad, flip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float() / self.scale
        if self.augment:
            _, h, w = x.shape
            p = self.pad
            if p > 0:
                x = torch.nn.functional.pad(x, (p, p, p, p))
                i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
                x = x[:, i:i + h, j:j + w]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std


def _imagenet_transform(augment: bool, size: int) -> Callable:
    from torchvision import transforms as T

    if augment:
        ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# ----------------------------------------------------------------------------- the indexed dataset
class IndexedDataset(Dataset):
    """Samples `(index, image, given_label)`; also exposes `true_labels`, `is_noisy`, `is_duplicate`.

    `images` is either a tensor (N_src, C, H, W) or a list of file paths (decoded lazily);
    `source_index[i]` says which source image sample i shows (duplicates repeat a source).
    """

    def __init__(self, images: torch.Tensor | list[str], source_index: np.ndarray, given_labels: np.ndarray,
                 true_labels: np.ndarray, transform: Callable, is_duplicate: np.ndarray | None = None,
                 duplicate_of: np.ndarray | None = None) -> None:
        self.images, self.source_index, self.transform = images, source_index, transform
        self.given_labels = np.asarray(given_labels, dtype=np.int64)
        self.true_labels = np.asarray(true_labels, dtype=np.int64)
        n = len(self.given_labels)
        self.is_noisy = self.given_labels != self.true_labels
        self.is_duplicate = np.zeros(n, bool) if is_duplicate is None else is_duplicate
        self.duplicate_of = np.full(n, -1, np.int64) if duplicate_of is None else duplicate_of

    def __len__(self) -> int:
        return len(self.given_labels)

    def raw(self, i: int) -> Any:
        """The un-transformed image of sample i (uint8 tensor or PIL image)."""
        src = int(self.source_index[i])
        if isinstance(self.images, torch.Tensor):
            return self.images[src]
        with open_image(self.images[src]) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        fault_point("worker")  # the fault suite's DataLoader worker kill (nothing unless $TOOLKIT_FAULT says so)
        return i, self.transform(self.raw(i)), int(self.given_labels[i])

    def with_transform(self, transform: Callable) -> IndexedDataset:
        """Same samples and labels, another transform (e.g. the un-augmented one for scoring)."""
        other = object.__new__(IndexedDataset)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other


@dataclass
class DataBundle:
    train: IndexedDataset  # augmented (for training)
    train_eval: IndexedDataset  # the same samples, un-augmented (stats, scoring)
    test: IndexedDataset
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    record: dict[str, Any]  # the per-sample record stored in checkpoints and score files


# ----------------------------------------------------------------------------- raw sources
def data_root(cfg: dict[str, Any]) -> Path:
    return Path(cfg["data"]["root"] or os.environ.get("DATA_ROOT", "") or "data")


def _load_digits() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    idx = np.arange(len(x))
    tr, te = train_test_split(idx, test_size=0.25, stratify=d.target, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    return x[tr], d.target[tr], x[te], d.target[te], [str(i) for i in range(10)]


def _load_cifar(name: str, root: Path, download: bool) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, list[str]]:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    sets = []
    for train in (True, False):
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError:
            raise UserError(f"{name} not found or corrupt under {root / folder}; run once with data.download=true "
                            "on a machine with a network, or point data.root / $DATA_ROOT at it") from None
        except OSError as e:  # URLError and socket errors: no network
            raise UserError(f"downloading {name} to {root} failed ({type(e).__name__}: offline?); download "
                            f"{cls.url} elsewhere, unpack it to {root / folder}, and run with data.download=false") from None
        sets.append((torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), np.asarray(ds.targets)))
    (xtr, ytr), (xte, yte) = sets
    return xtr, ytr, xte, yte, list(ds.classes)


def _load_mnist(root: Path, download: bool) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, list[str]]:
    """torchvision's own MNIST loader: the four IDX files under `root/MNIST/raw/` (60,000 / 10,000, original order)."""
    from torchvision import datasets

    sets = []
    for train in (True, False):
        try:
            ds = datasets.MNIST(str(root), train=train, download=download)
        except (RuntimeError, ValueError, AssertionError) as e:  # torchvision: not found / failed download / bad IDX
            if download and "downloading" in str(e).lower():
                raise UserError(f"downloading MNIST to {root} failed (offline?); copy the four IDX files "
                                f"(train-images-idx3-ubyte, ...) to {root / 'MNIST' / 'raw'} and run with "
                                "data.download=false") from None
            raise UserError(f"MNIST not found or corrupt under {root / 'MNIST' / 'raw'} (the four IDX files "
                            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                            "t10k-labels-idx1-ubyte); run once with data.download=true on a machine with a network, "
                            "or point data.root / $DATA_ROOT at the folder holding MNIST/") from None
        except OSError as e:  # URLError and socket errors: no network
            raise UserError(f"downloading MNIST to {root} failed ({type(e).__name__}: offline?); copy the four IDX "
                            f"files to {root / 'MNIST' / 'raw'} and run with data.download=false") from None
        sets.append((ds.data.unsqueeze(1).contiguous(), ds.targets.numpy()))  # (N, 1, 28, 28) uint8
    (xtr, ytr), (xte, yte) = sets
    return xtr, ytr, xte, yte, [str(i) for i in range(10)]


def _scan_folder(split_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """ImageFolder scan with clear errors for a missing directory or an empty class folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not split_dir.is_dir():
        raise UserError(f"image folder {split_dir} not found; it must hold one sub-folder per class "
                        "(set data.root / $DATA_ROOT and data.folder)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image folder {split_dir} has no class sub-folders")
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(str(f) for f in (split_dir / c).iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise UserError(f"class folder {split_dir / c} holds no images; add images or remove the folder")
        paths += files
        labels += [k] * len(files)
    return paths, np.asarray(labels), classes


def open_image(path: str | Path) -> Any:
    """PIL image of a file; a missing or unreadable file is one UserError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UserError(f"image {path} is missing: the data moved? point data.root / $DATA_ROOT (and data.folder) "
                        "at the folder the run was trained on") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not a readable image ({type(e).__name__}); remove it from the image folder "
                        "or replace it with the image") from None


def _decode_all(paths: list[str], size: int) -> torch.Tensor:
    from PIL import Image

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(paths):
        with open_image(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out


def folder_dir(cfg: dict[str, Any]) -> Path:
    d = cfg["data"]
    folder = d["folder"] or ("imagenet" if d["name"] == "imagenet" else "")
    return data_root(cfg) / folder if folder else data_root(cfg)


def _test_split(base: Path) -> Path:
    for name in ("test", "val"):
        if (base / name).is_dir():
            return base / name
    raise UserError(f"image folder {base} needs a test/ or val/ split beside train/")


# ----------------------------------------------------------------------------- build
def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of `n` of `labels` (N,).

    Each class keeps its share of `n` (largest remainders), drawn at random with `seed`."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / counts.sum()
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[: n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == c), t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(keep))


def build_data(cfg: dict[str, Any], recorded_labels: np.ndarray | None = None) -> DataBundle:
    """Load the configured dataset, apply label noise and duplicates, and build the datasets.

    noise.kind=instance reads the reference run (and fills in `noise.reference_identity` of `cfg`) unless
    `recorded_labels` (N,), the run record's given labels, are passed (later stages). data.folds > 1 leaves the
    fold data.holdout_fold out of the training set (`record['parent_index']`: each kept sample's position in the
    whole training set)."""
    d, nz = cfg["data"], cfg["noise"]
    name = d["name"]
    if name not in DATASETS:
        raise UserError(f"unknown data.name {name!r}; known: {', '.join(DATASETS)}")
    if name == "digits":
        xtr, ytr, xte, yte, classes = _load_digits()
        mean, std = (4.88 / 16,), (6.02 / 16,)  # digits pixel statistics, images scaled to [0, 1]
        mk = lambda aug: TensorTransform(mean, std, augment=False, scale=16.0)  # noqa: E731
    elif name == "mnist":
        xtr, ytr, xte, yte, classes = _load_mnist(data_root(cfg), d["download"])
        # augmentation: pad-`crop_pad` random crops only (0 = none); never a mirror (a flipped 2 is no digit)
        mk = lambda aug: TensorTransform(MNIST_MEAN, MNIST_STD, aug and d["crop_pad"] > 0, pad=d["crop_pad"],  # noqa: E731
                                         flip=False)
    elif name in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte, classes = _load_cifar(name, data_root(cfg), d["download"])
        mk = lambda aug: TensorTransform(CIFAR_MEAN[name], CIFAR_STD[name], aug, pad=d["crop_pad"])  # noqa: E731
    else:
        base = folder_dir(cfg)
        ptr, ytr, classes = _scan_folder(base / "train")
        pte, yte, classes_te = _scan_folder(_test_split(base))
        if classes_te != classes:
            raise UserError(f"train/ and test/ of {base} have different class folders")
        if name == "imagefolder" and d["in_memory"]:
            size = d["image_size"] or 32
            xtr, xte = _decode_all(ptr, size), _decode_all(pte, size)
            mean, std = CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]
            mk = lambda aug: TensorTransform(mean, std, aug, pad=d["crop_pad"])  # noqa: E731
        else:
            xtr, xte = ptr, pte
            size = d["image_size"] or 224
            mk = lambda aug: _imagenet_transform(aug, size)  # noqa: E731
    if d["subset"] < 0:
        raise UserError(f"data.subset={d['subset']} must be >= 0 (0 = the whole training set)")
    if 0 < d["subset"] < len(ytr):
        keep = stratified_subset(np.asarray(ytr), d["subset"], d["subset_seed"])
        xtr = xtr[torch.from_numpy(keep)] if isinstance(xtr, torch.Tensor) else [xtr[i] for i in keep]
        ytr = np.asarray(ytr)[keep]
        ptr = [ptr[i] for i in keep] if name in ("imagefolder", "imagenet") else None
    ytr, yte = np.asarray(ytr, np.int64), np.asarray(yte, np.int64)
    k = len(classes)

    folder_data = name in ("imagefolder", "imagenet")
    base = folder_dir(cfg) if folder_data else None
    files = [os.path.relpath(p, base).replace(os.sep, "/") for p in ptr] if folder_data else None
    a, file_meta, keep = training_labels(cfg, ytr, list(classes), files, recorded_labels)
    source, given, true, dup, dup_of, canary = (a[n] for n in ("source", "given", "true", "dup", "dup_of", "canary"))
    augment = d["augment"] and name != "digits"
    train = IndexedDataset(xtr, source, given, true, mk(augment), dup, dup_of)
    train_eval = train.with_transform(mk(False))
    test = IndexedDataset(xte, np.arange(len(yte)), yte, yte, mk(False))
    sample = train_eval[0][1]
    record = {
        "dataset": name if name not in ("imagefolder",) else f"imagefolder:{d['folder']}",
        "num_classes": k,
        "in_channels": int(sample.shape[0]),
        "image_size": int(sample.shape[-1]),
        "classes": list(classes),
        "noise_kind": nz["kind"],
        "noise_rate": float(nz["rate"]),
        "noise_seed": int(nz["seed"]),
        "index": torch.arange(len(given)),
        "given_labels": torch.from_numpy(given),
        "true_labels": torch.from_numpy(true),
        "is_noisy": torch.from_numpy(given != true),
        "is_duplicate": torch.from_numpy(dup),
        "duplicate_of": torch.from_numpy(dup_of),
        "source_index": torch.from_numpy(source),
    }
    if canary.any():
        record["is_canary"] = torch.from_numpy(canary)
    if folder_data:  # where each source image lives, relative to data.root/data.folder
        record["source_files"] = files
    record.update({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in file_meta.items()})
    if nz["kind"] == "instance":
        record.update(noise_reference=nz["reference"], noise_reference_identity=nz["reference_identity"],
                      noise_rule=INSTANCE_RULE)
    if keep is not None:
        record.update(folds=d["folds"], holdout_fold=d["holdout_fold"], fold_seed=d["fold_seed"],
                      parent_index=torch.from_numpy(keep))
    return DataBundle(train, train_eval, test, k, sample.shape[0], sample.shape[-1], list(classes), record)


# ----------------------------------------------------------------------------- batching
class GlobalBatchSampler(torch.utils.data.Sampler):
    """Cuts one global permutation (same on every rank) into global batches; each rank takes
    a strided share of every batch, so `world` ranks see exactly what one process would."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0):
        self.n, self.bs, self.rank, self.world, self.shuffle, self.seed = n, batch_size, rank, world, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        batches = list(order.split(self.bs))
        if batches and len(batches[-1]) < self.world:
            batches.pop()  # a batch too small to give every rank a sample
        return batches

    def __iter__(self):
        for b in self.global_batches():
            yield b[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        return len(self.global_batches())


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """The training loader: `GlobalBatchSampler` batches (iterate it through `utils.waits.bounded`)."""
    from .workers import loader_options

    sampler = GlobalBatchSampler(len(ds), batch_size, rank, world, shuffle, seed)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, **loader_options(num_workers))
