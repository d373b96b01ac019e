"""Tiny classification data sets written in the real on-disk formats, and configs that train on them."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import yaml

from topkd_det.classification.config import load_cls_cfg
from topkd_det.classification.engine import Trainer


def write_idx_gz(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fashion-MNIST's idx format: big-endian magic + dims, then uint8 bytes, gzipped."""
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(directory / f"{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(directory / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">ii", 2049, n) + labels.astype(np.uint8).tobytes())


def learnable_images(n: int, seed: int, shape=(28, 28), classes: int = 10):
    """Images whose class is a bright horizontal band at a class-dependent height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    band = shape[0] // classes
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band] = 220
    return images, labels


def fashion_dir(root: Path, n_train: int = 96, n_test: int = 40) -> Path:
    directory = root / "fashion"
    write_idx_gz(directory, "train", *learnable_images(n_train, 0))
    write_idx_gz(directory, "t10k", *learnable_images(n_test, 1))
    return directory


def cifar_dir(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """CIFAR-100 python version: pickled dicts with b'data' (N x 3072 uint8) and b'fine_labels'."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": [0] * n}
        with open(directory / split, "wb") as f:
            pickle.dump(entry, f)
    with open(directory / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return root


def image_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def tiny_cfg(tmp_path: Path, data: Path, *opts, name: str = "run", check_files: bool = True, **yaml_overrides):
    """A 2-epoch Fashion-MNIST-format run on the fixture data, small enough for a unit test."""
    body = {
        "MODEL": {"STUDENT": "fmnist_student"},
        "DATASET": {"NAME": "fashion_mnist", "ROOT": str(data), "VAL_SIZE": 16},
        "SOLVER": {"BATCH_SIZE": 16, "EPOCHS": 2, "LR": 0.05, "LR_DECAY_STAGES": [1]},
        "TEST": {"BATCH_SIZE": 32},
        "LOG": {"PERIOD": 2, "TENSORBOARD": True},
        "CHECKPOINT_PERIOD": 1,
        "OUTPUT_DIR": str(tmp_path / name),
    }
    for key, value in yaml_overrides.items():
        body.setdefault(key, {}).update(value) if isinstance(value, dict) else body.__setitem__(key, value)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_cls_cfg(str(path), [str(o) for o in opts], check_files=check_files), path


def trained_teacher(root: Path, data: Path) -> Path:
    """The fixture teacher (``fmnist_teacher``) trained one epoch on ``data`` by the trainer itself, as the
    benchmark trains its teacher; its ``last.pth``, in ``root/teacher``."""
    cfg, _ = tiny_cfg(root, data, "MODEL.STUDENT", "fmnist_teacher", "SOLVER.EPOCHS", 1, name="teacher")
    Trainer(cfg).train()
    return Path(cfg.OUTPUT_DIR) / "last.pth"


class Killed(Exception):
    """The process dying right after a checkpoint is on disk."""


def killed_after_first_checkpoint_then_resumed(cfg, monkeypatch) -> dict:
    """Train ``cfg`` until its first checkpoint is written, die there, then resume it to its end;
    returns the resumed run's results, with ``died_after_epochs`` added."""
    from topkd_det.classification.engine import Trainer

    save, died = Trainer.save_checkpoint, []

    def save_then_die(self, epochs_done):
        save(self, epochs_done)
        died.append(epochs_done)
        raise Killed

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    try:
        Trainer(cfg).train()
    except Killed:
        pass
    else:
        raise AssertionError("the run wrote no checkpoint to die after")
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    return {**Trainer(cfg).train(resume=True), "died_after_epochs": died[0]}
