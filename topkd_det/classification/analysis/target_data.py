"""Target data sets of the transfer probe, as uint8 tensors (N, C, H, W) in memory, from local copies in
their standard layouts (nothing is downloaded): STL-10's binary release, Tiny-ImageNet's folder tree, and
scikit-learn's bundled ``digits`` (8x8 grey, for an offline demonstration)."""
import os
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..data import DatasetError

STL10_LAYOUT = ("ROOT/stl10_binary/{train,test}_{X,y}.bin (or ROOT itself holding them): STL-10's binary release, "
                "images uint8 3x96x96 column-major, labels 1..10")
TINY_LAYOUT = ("ROOT/tiny-imagenet-200/ (or ROOT itself) with wnids.txt, train/<wnid>/images/*.JPEG and "
               "val/images/*.JPEG + val/val_annotations.txt")


class TargetData(NamedTuple):
    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def _find(root: str, sub: str, required) -> str:
    for candidate in (os.path.join(root, sub), root):
        if all(os.path.exists(os.path.join(candidate, name)) for name in required):
            return candidate
    raise DatasetError(f"not found under {root!r}")


# --- STL-10 ------------------------------------------------------------------------------------------
_STL_SIDE = 96


def _stl_split(directory: str, split: str):
    x_path, y_path = (os.path.join(directory, f"{split}_{kind}.bin") for kind in ("X", "y"))
    raw = np.fromfile(x_path, dtype=np.uint8)
    per_image = 3 * _STL_SIDE * _STL_SIDE
    if raw.size == 0 or raw.size % per_image:
        raise DatasetError(f"{x_path!r} holds {raw.size} bytes, not a whole number of 3x96x96 images; expected {STL10_LAYOUT}")
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    images = raw.reshape(-1, 3, _STL_SIDE, _STL_SIDE).transpose(0, 1, 3, 2)  # stored column-major
    if len(labels) != len(images):
        raise DatasetError(f"{y_path!r} has {len(labels)} labels for {len(images)} images in {x_path!r}")
    if labels.min() < 1 or labels.max() > 10:
        raise DatasetError(f"{y_path!r}: labels must lie in 1..10, got {labels.min()}..{labels.max()}")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels - 1)


def load_stl10(root: str) -> TargetData:
    required = [f"{s}_{k}.bin" for s in ("train", "test") for k in ("X", "y")]
    try:
        directory = _find(root, "stl10_binary", required)
    except DatasetError:
        raise DatasetError(f"STL-10 not found under {root!r}; expected {STL10_LAYOUT}") from None
    return TargetData("stl10", *_stl_split(directory, "train"), *_stl_split(directory, "test"), 10)


# --- Tiny-ImageNet -----------------------------------------------------------------------------------
def _read_images(paths, what: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in tqdm(paths, desc=f"reading {what}", unit="img", disable=None, leave=False):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"{path!r} is not a readable image ({err})") from None
        if pixels.shape != (64, 64, 3):
            raise DatasetError(f"{path!r} is {pixels.shape[1]}x{pixels.shape[0]}; Tiny-ImageNet images are 64x64")
        images.append(pixels)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def load_tiny_imagenet(root: str) -> TargetData:
    """Train: train/<wnid>/images; test: the labelled val split (the official test split has no labels)."""
    try:
        directory = _find(root, "tiny-imagenet-200", ["wnids.txt", "train", "val/val_annotations.txt"])
    except DatasetError:
        raise DatasetError(f"Tiny-ImageNet not found under {root!r}; expected {TINY_LAYOUT}") from None
    with open(os.path.join(directory, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if not wnids:
        raise DatasetError(f"{os.path.join(directory, 'wnids.txt')!r} lists no classes")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = os.path.join(directory, "train", wnid, "images")
        if not os.path.isdir(folder):
            raise DatasetError(f"class {wnid} of wnids.txt has no folder {folder!r}; expected {TINY_LAYOUT}")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg", ".png")))
        train_paths += [os.path.join(folder, n) for n in names]
        train_labels += [index[wnid]] * len(names)
    test_paths, test_labels = [], []
    annotations = os.path.join(directory, "val", "val_annotations.txt")
    with open(annotations) as f:
        for number, line in enumerate(f, 1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in index:
                raise DatasetError(f"{annotations!r} line {number}: expected '<file>\\t<wnid>\\t...' with a wnid "
                                   f"of wnids.txt, got {line.strip()!r}")
            test_paths.append(os.path.join(directory, "val", "images", fields[0]))
            test_labels.append(index[fields[1].strip()])
    if not train_paths or not test_paths:
        raise DatasetError(f"Tiny-ImageNet under {directory!r} has {len(train_paths)} train and {len(test_paths)} "
                           "val images; both must be non-empty")
    return TargetData("tiny_imagenet", _read_images(train_paths, "train"), torch.tensor(train_labels),
                      _read_images(test_paths, "val"), torch.tensor(test_labels), len(wnids))


# --- scikit-learn digits -----------------------------------------------------------------------------
def load_digits(test_fraction: float = 0.5, seed: int = 0) -> TargetData:
    """scikit-learn's 1797 8x8 grey digits (0..16 scaled to 0..255), split in a fixed stratified way."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=test_fraction,
                                                        random_state=seed, stratify=digits.target)
    return TargetData("digits", torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
                      torch.from_numpy(x_test), torch.from_numpy(y_test).long(), 10)


TARGETS = {"stl10": load_stl10, "tiny_imagenet": load_tiny_imagenet, "digits": None}


def load_target(name: str, root: str = "") -> TargetData:
    if name not in TARGETS:
        raise DatasetError(f"unknown target data set {name!r}; valid: {', '.join(TARGETS)}")
    if name == "digits":
        return load_digits()
    if not root:
        raise DatasetError(f"--data-root is needed for {name}")
    return TARGETS[name](root)
