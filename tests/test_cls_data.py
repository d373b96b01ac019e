"""Classification data: fixtures in the real formats load; missing or malformed data fails clearly."""
import gzip
import pickle

import pytest
import torch

from cls_fixtures import cifar_dir, fashion_dir, image_folder, learnable_images, write_idx_gz
from topkd_det.classification.config import load_cls_cfg
from topkd_det.classification.data import DatasetError, TensorImages, build_splits


def _cfg(*opts):
    return load_cls_cfg(None, ["MODEL.STUDENT", "fmnist_student", *map(str, opts)])


def test_cifar_pickles_load(tmp_path):
    root = cifar_dir(tmp_path, n_train=20, n_test=10)
    splits = build_splits(_cfg("DATASET.NAME", "cifar100", "DATASET.ROOT", root, "DATASET.VAL_SIZE", 4))
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (16, 4, 10, 100)
    x, y = splits.train.__getitems__(list(range(8)))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with open(root / "cifar-100-python" / "test", "rb") as f:
        labels = pickle.load(f, encoding="bytes")[b"fine_labels"]
    assert splits.test.labels.tolist() == labels
    # the ROOT may also be the cifar-100-python directory itself
    direct = build_splits(_cfg("DATASET.NAME", "cifar100", "DATASET.ROOT", root / "cifar-100-python"))
    assert len(direct.train) == 20 and direct.val is None


def test_cifar_test_split_is_exactly_normalised_pixels(tmp_path):
    root = cifar_dir(tmp_path)
    splits = build_splits(_cfg("DATASET.NAME", "cifar100", "DATASET.ROOT", root))
    with open(root / "cifar-100-python" / "test", "rb") as f:
        raw = torch.from_numpy(pickle.load(f, encoding="bytes")[b"data"]).view(-1, 3, 32, 32)
    x, _ = splits.test.__getitems__([0, 1])
    mean = torch.tensor([0.5071, 0.4867, 0.4408]).view(1, 3, 1, 1)
    std = torch.tensor([0.2675, 0.2565, 0.2761]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw[:2].float() / 255 - mean) / std)


def test_batched_random_crop_is_a_zero_padded_translation():
    images = torch.randint(1, 255, (6, 1, 8, 8), dtype=torch.uint8)
    data = TensorImages(images, torch.zeros(6, dtype=torch.long), (0.0,), (1.0,), crop_padding=2, flip=False)
    torch.manual_seed(3)
    x, _ = data.__getitems__(list(range(6)))
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    for i in range(6):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(x[i], w) for w in windows)


def test_image_folder_loads(tmp_path):
    root = image_folder(tmp_path / "imagenet")
    cfg = _cfg("DATASET.NAME", "imagenet", "DATASET.ROOT", root, "MODEL.STUDENT", "resnet18", "MODEL.NUM_CLASSES", 3,
               "DATASET.VAL_SIZE", 2)
    splits = build_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (4, 2, 6, 3)
    x, y = splits.test[5]
    assert x.shape == (3, 224, 224) and y == 2
    x, _ = splits.train[0]
    assert x.shape == (3, 224, 224)


def test_image_folder_class_count_must_match(tmp_path):
    root = image_folder(tmp_path / "imagenet")
    with pytest.raises(DatasetError, match="MODEL.NUM_CLASSES=5 but .* holds 3 classes"):
        build_splits(_cfg("DATASET.NAME", "imagenet", "DATASET.ROOT", root, "MODEL.STUDENT", "resnet18",
                          "MODEL.NUM_CLASSES", 5))


def test_fashion_mnist_idx_loads(tmp_path):
    directory = fashion_dir(tmp_path, n_train=30, n_test=12)
    splits = build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", directory, "DATASET.VAL_SIZE", 5,
                               "DATASET.TRAIN_SUBSET", 20))
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (20, 5, 12, 10)
    x, y = splits.test.__getitems__([0, 1, 2])
    assert x.shape == (3, 1, 28, 28)
    assert y.tolist() == learnable_images(12, 1)[1][:3].tolist()
    # the held-out split is fixed by VAL_SEED, disjoint from train, and not augmented
    assert not splits.val.flip and splits.train.flip
    again = build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", directory, "DATASET.VAL_SIZE", 5,
                              "SEED", 7))
    assert torch.equal(again.val.images, splits.val.images)


def test_real_fashion_mnist_if_installed():
    import os

    root = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(root):
        pytest.skip("dataset-fashion-mnist is not installed")
    splits = build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", root, "DATASET.VAL_SIZE", 5000))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)


@pytest.mark.parametrize("name", ["cifar100", "imagenet", "fashion_mnist"])
def test_missing_directory_names_path_and_layout(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        build_splits(_cfg("DATASET.NAME", name, "DATASET.ROOT", missing, "MODEL.STUDENT", "resnet18"))
    message = str(info.value)
    assert str(missing) in message and "expected" in message


def test_empty_root_is_an_error():
    with pytest.raises(DatasetError, match="DATASET.ROOT is empty"):
        build_splits(_cfg("DATASET.NAME", "fashion_mnist"))


def test_malformed_cifar_pickle(tmp_path):
    root = cifar_dir(tmp_path)
    with open(root / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({b"pixels": [1, 2, 3]}, f)
    with pytest.raises(DatasetError, match="not a CIFAR-100 python pickle"):
        build_splits(_cfg("DATASET.NAME", "cifar100", "DATASET.ROOT", root))
    (root / "cifar-100-python" / "train").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="train"):
        build_splits(_cfg("DATASET.NAME", "cifar100", "DATASET.ROOT", root))


def test_malformed_idx_files(tmp_path):
    directory = fashion_dir(tmp_path)
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + bytes(16))
    with pytest.raises(DatasetError, match="not an idx images file"):
        build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", directory))
    write_idx_gz(directory, "t10k", *learnable_images(5, 0))
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", directory))


def test_image_folder_without_val_split(tmp_path):
    root = image_folder(tmp_path / "imagenet")
    import shutil

    shutil.rmtree(root / "val")
    with pytest.raises(DatasetError, match="val.*does not exist.*ImageFolder"):
        build_splits(_cfg("DATASET.NAME", "imagenet", "DATASET.ROOT", root, "MODEL.STUDENT", "resnet18"))


def test_val_split_larger_than_train(tmp_path):
    directory = fashion_dir(tmp_path, n_train=10)
    with pytest.raises(DatasetError, match="VAL_SIZE=10 leaves no training images"):
        build_splits(_cfg("DATASET.NAME", "fashion_mnist", "DATASET.ROOT", directory, "DATASET.VAL_SIZE", 10))
