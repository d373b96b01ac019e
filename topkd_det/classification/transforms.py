"""The ViT students' image pipeline (DATASET.TRANSFORM randaug), as the locality-guidance setting builds it
with timm: RandomResizedCrop (bicubic) to the input size, horizontal flip, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing (p 0.25, per-pixel noise) and ImageNet mean/std; test images are
resized to the input size. Mixup, CutMix and label smoothing are off there, and so here.
"""
from typing import Callable

import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision import transforms as T

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def randaug_train_transform(size: int) -> Callable:
    return create_transform(input_size=size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                            re_prob=0.25, re_mode="pixel", re_count=1, interpolation="bicubic",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)


def resize_test_transform(size: int) -> Callable:
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class PILImages(Dataset):
    """In-memory uint8 images (N, C, H, W) handed one at a time, as PIL images, to a torchvision/timm
    transform. Its randomness comes from python's and torch's RNGs, which checkpoints restore."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i].permute(1, 2, 0).squeeze(2).numpy())
        return self.transform(image.convert("RGB")), self.labels[i]


def randaug_splits(train_images, train_labels, val_images, val_labels, test_images, test_labels, size: int,
                   augment: bool):
    """(train, val or None, test) of the randaug pipeline; val and test are never augmented."""
    test_tf = resize_test_transform(size)
    train = PILImages(train_images, train_labels, randaug_train_transform(size) if augment else test_tf)
    val = PILImages(val_images, val_labels, test_tf) if len(val_labels) else None
    return train, val, PILImages(test_images, test_labels, test_tf)
