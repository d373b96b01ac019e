"""Classification data sets from local copies: CIFAR-100 (python pickles), ImageNet (ImageFolder) and
Fashion-MNIST (idx files). Nothing is ever downloaded.

CIFAR-100 and Fashion-MNIST are small enough to live in memory as uint8 tensors; their augmentation
runs on whole batches (``__getitems__``), which makes ``num_workers=0`` fast: no per-image PIL work.
A missing or malformed directory fails at once with the path and the layout that was expected.
"""
import gzip
import os
import pickle
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..files import unreadable_reason

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CIFAR_LAYOUT = "ROOT/cifar-100-python/{train,test,meta} (or ROOT itself holding train, test, meta): the python pickles"
IMAGENET_LAYOUT = "ROOT/train/<class>/<images> and ROOT/val/<class>/<images> (torchvision ImageFolder)"
FASHION_LAYOUT = ("ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (the original idx files, "
                  "e.g. /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)")
FASHION_FIX = ("download the file again (Debian: apt-get install --reinstall dataset-fashion-mnist), "
               "or point DATASET.ROOT at a good copy")


class DatasetError(FileNotFoundError):
    """A data directory that is missing or not in the expected layout."""


class Splits(NamedTuple):
    train: Dataset
    val: Optional[Dataset]  # held out from the train split (DATASET.VAL_SIZE), None when 0
    test: Dataset
    num_classes: int


# --- in-memory images with batched augmentation ----------------------------------------------------
class CropFlip(NamedTuple):
    """One batch's augmentation: each image's crop offsets (rows, columns; None without cropping) and
    whether it is flipped (None without flipping)."""
    dy: Optional[torch.Tensor]
    dx: Optional[torch.Tensor]
    flip: Optional[torch.Tensor]

    def to(self, device) -> "CropFlip":
        return CropFlip(*(None if v is None else v.to(device) for v in self))


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and int64 labels in memory; a batch is cropped, flipped and normalised
    in one vectorised step. Randomness comes from torch's global (CPU) RNG, saved in checkpoints.

    The random draws (``draw``) and their application (``augment``) are separate, so the fast path
    (fast.py) applies on the GPU exactly what this draws on the CPU, in the same order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 crop_padding: int = 0, flip: bool = False, size: int = 0):
        self.images, self.labels = images, labels
        self.mean_std = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.crop_padding, self.flip = crop_padding, flip
        self.size = size  # resize each batch (bilinear) to size x size after augmenting; 0: keep

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, indices: Optional[torch.Tensor] = None, augment: bool = False,
             crop_padding: int = 0, size: Optional[int] = None) -> "TensorImages":
        """The images (all, or the rows in ``indices``), with or without train augmentation, resized to
        ``size`` (None: as this view)."""
        images = self.images if indices is None else self.images[indices]
        labels = self.labels if indices is None else self.labels[indices]
        return TensorImages(images, labels, *self.mean_std, crop_padding if augment else 0, augment,
                            self.size if size is None else size)

    def to(self, device) -> "TensorImages":
        """The same view with its images and labels on ``device``."""
        return TensorImages(self.images.to(device), self.labels.to(device), *self.mean_std, self.crop_padding,
                            self.flip, self.size)

    def draw(self, n: int) -> CropFlip:
        """The augmentation of n images: RandomCrop(size, padding=p)'s offsets, then flips with p 0.5."""
        p = self.crop_padding
        dy = torch.randint(0, 2 * p + 1, (n,)) if p else None
        dx = torch.randint(0, 2 * p + 1, (n,)) if p else None
        flip = torch.rand(n) < 0.5 if self.flip else None
        return CropFlip(dy, dx, flip)

    def augment(self, x: torch.Tensor, params: CropFlip) -> torch.Tensor:
        """uint8 images (on any device, with ``params`` there) as float: cropped, flipped, normalised, resized."""
        if params.dy is not None:
            x = _crop(x, self.crop_padding, params.dy, params.dx)
        if params.flip is not None:
            x = torch.where(params.flip.view(-1, 1, 1, 1), x.flip(3), x)
        x = (x.float().div_(255) - self.mean) / self.std
        if self.size and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def __getitems__(self, indices: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        return self.augment(self.images[index], self.draw(len(index)).to(self.images.device)), self.labels[index]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _crop(x: torch.Tensor, p: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image's window at (dy, dx) of its zero-padded copy: RandomCrop(size, padding=p) for a batch."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    rows = dy.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class AugmentationPlan(Dataset):
    """A batch of ``images`` reduced to what draws randomness: the indices and their ``CropFlip``.

    Through the trainer's DataLoader and sampler it consumes the global RNG exactly as ``images`` itself
    would, so the fast path trains on the same batches as the DataLoader path from the same seed."""

    def __init__(self, images: TensorImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: List[int]) -> Tuple[torch.Tensor, CropFlip]:
        return torch.as_tensor(indices), self.images.draw(len(indices))


def collate_batch(batch):
    """``TensorImages.__getitems__`` already returns a collated batch."""
    return batch


# --- CIFAR-100 -----------------------------------------------------------------------------------
def _cifar_dir(root: str) -> str:
    for candidate in (os.path.join(root, "cifar-100-python"), root):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in ("train", "test", "meta")):
            return candidate
    raise DatasetError(f"CIFAR-100 not found under DATASET.ROOT={root!r}; expected {CIFAR_LAYOUT}")


CIFAR_FIX = "extract cifar-100-python.tar.gz (the python version) again"


def _load_cifar_pickle(path: str, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DatasetError(f"CIFAR-100 file {path!r} {unreadable_reason(path, err)}: {CIFAR_FIX}") from None
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[b"fine_labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path!r} is not a CIFAR-100 python pickle (a dict with b'data' N x 3072 uint8 and b'fine_labels'): "
            f"{type(err).__name__}: {err}; {CIFAR_FIX}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(
            f"{path!r}: b'data' must be N x 3072 with N labels, got {data.shape} and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path!r}: fine labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _cifar100(root: str) -> Tuple[TensorImages, TensorImages, int]:
    directory = _cifar_dir(root)
    train = TensorImages(*_load_cifar_pickle(os.path.join(directory, "train"), 100), CIFAR100_MEAN, CIFAR100_STD)
    test = TensorImages(*_load_cifar_pickle(os.path.join(directory, "test"), 100), CIFAR100_MEAN, CIFAR100_STD)
    return train, test, 100


# --- Fashion-MNIST ---------------------------------------------------------------------------------
_IDX_MAGIC = {"images": 2051, "labels": 2049}


def _read_idx(directory: str, split: str, kind: str) -> np.ndarray:
    base = os.path.join(directory, f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte")
    path = next((p for p in (base + ".gz", base) if os.path.isfile(p)), None)
    if path is None:
        raise DatasetError(f"Fashion-MNIST file {base}[.gz] not found; expected {FASHION_LAYOUT}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip: EOFError when truncated, BadGzipFile when not gzip
        problem = "is truncated (the gzip stream ends early)" if isinstance(err, EOFError) else f"could not be read ({err})"
        raise DatasetError(f"Fashion-MNIST file {path!r} {problem}: {FASHION_FIX}") from None
    header = np.frombuffer(raw[:4], dtype=">i4")
    ndim = 3 if kind == "images" else 1
    if len(header) != 1 or header[0] != _IDX_MAGIC[kind] or len(raw) < 4 * (1 + ndim):
        raise DatasetError(f"{path!r} is not an idx {kind} file (magic {_IDX_MAGIC[kind]} expected): {FASHION_FIX}")
    shape = tuple(np.frombuffer(raw[4:4 * (1 + ndim)], dtype=">i4"))
    body = np.frombuffer(raw[4 * (1 + ndim):], dtype=np.uint8)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path!r}: header says shape {shape} but holds {body.size} bytes "
                           f"(truncated?): {FASHION_FIX}")
    return body.reshape(shape)


def _fashion_mnist(root: str) -> Tuple[TensorImages, TensorImages, int]:
    if not os.path.isdir(root):
        raise DatasetError(f"Fashion-MNIST directory DATASET.ROOT={root!r} does not exist; expected {FASHION_LAYOUT}")
    splits = []
    for split in ("train", "t10k"):
        images, labels = _read_idx(root, split, "images"), _read_idx(root, split, "labels")
        if len(images) != len(labels):
            raise DatasetError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {root!r}")
        if len(labels) and labels.max() >= 10:
            raise DatasetError(f"Fashion-MNIST {split} labels must lie in [0, 10), got max {labels.max()}")
        splits.append(TensorImages(torch.from_numpy(images.copy()).unsqueeze(1),
                                   torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    return splits[0], splits[1], 10


# --- ImageNet --------------------------------------------------------------------------------------
def _imagenet_transforms(train: bool):
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])


def _image_folder(path: str, transform):
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise DatasetError(f"ImageNet split {path!r} does not exist; expected {IMAGENET_LAYOUT}")
    try:
        return ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"{path!r} is not an ImageFolder tree ({err}); expected {IMAGENET_LAYOUT}") from None


def _imagenet(root: str, augment: bool):
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    # Two views of the train tree: augmented for training, plain for a held-out validation split.
    train = _image_folder(train_dir, _imagenet_transforms(augment))
    train_plain = _image_folder(train_dir, _imagenet_transforms(False))
    test = _image_folder(val_dir, _imagenet_transforms(False))
    if train.classes != test.classes:
        missing = sorted(set(train.classes) ^ set(test.classes))[:5]
        raise DatasetError(f"{train_dir!r} and {val_dir!r} have different class folders (e.g. {missing})")
    return train, train_plain, test, len(train.classes)


# --- splits ----------------------------------------------------------------------------------------
def _holdout(n: int, val_size: int, train_subset: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices of (train, val): a fixed permutation of the train split (seeded by DATASET.VAL_SEED)."""
    if val_size >= n:
        raise DatasetError(f"DATASET.VAL_SIZE={val_size} leaves no training images (the train split has {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    if train_subset:
        train = train[:train_subset]
    return train.sort().values, val.sort().values


def build_splits(cfg) -> Splits:
    """Train / optional held-out val / test data sets of ``cfg.DATASET``, checked against MODEL.NUM_CLASSES."""
    d = cfg.DATASET
    if not d.ROOT:
        raise DatasetError(f"DATASET.ROOT is empty; set it to the {d.NAME} directory")
    if d.NAME == "imagenet":
        train_aug, train_plain, test, classes = _imagenet(d.ROOT, d.AUGMENT)
        n = len(train_aug)
    else:
        full_train, test, classes = (_cifar100 if d.NAME == "cifar100" else _fashion_mnist)(d.ROOT)
        n = len(full_train)
    if cfg.MODEL.NUM_CLASSES and cfg.MODEL.NUM_CLASSES != classes:
        raise DatasetError(f"MODEL.NUM_CLASSES={cfg.MODEL.NUM_CLASSES} but {d.ROOT!r} holds {classes} classes")
    train_idx, val_idx = _holdout(n, d.VAL_SIZE, d.TRAIN_SUBSET, d.VAL_SEED)
    size = d.INPUT_SIZE
    if d.TRANSFORM == "randaug":
        from .transforms import randaug_splits

        size = size or 32  # CIFAR-100's own size (randaug is CIFAR-100 only)
        train, val, test = randaug_splits(full_train.images[train_idx], full_train.labels[train_idx],
                                          full_train.images[val_idx], full_train.labels[val_idx],
                                          test.images, test.labels, size, d.AUGMENT)
        return Splits(train, val, test, classes)
    if d.NAME == "imagenet":
        train = Subset(train_aug, train_idx.tolist())
        val = Subset(train_plain, val_idx.tolist()) if d.VAL_SIZE else None
    else:
        padding = 4 if d.NAME == "cifar100" else 2
        train = full_train.view(train_idx, augment=d.AUGMENT, crop_padding=padding, size=size)
        val = full_train.view(val_idx, size=size) if d.VAL_SIZE else None
        test = test.view(size=size)
    return Splits(train, val, test, classes)


def describe(splits: Splits) -> Dict[str, int]:
    return {"train": len(splits.train), "val": len(splits.val) if splits.val is not None else 0,
            "test": len(splits.test), "classes": splits.num_classes}
