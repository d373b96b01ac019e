"""Table 7's linear transfer probe: the trained model frozen up to its penultimate layer, a linear
classifier trained on a target data set's features (images resized to the model's input size), top-1 on
the target's test split.

The probe is trained on cached features: standardised with the train split's mean/std, then SGD with
momentum 0.9 and a cosine LR on the cross-entropy, full passes in random order (seeded).
"""
from typing import Dict, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoints import Trained, preparer
from .features import collect, uint8_batches
from .target_data import TargetData


class ProbeSettings(NamedTuple):
    epochs: int = 100
    lr: float = 0.1
    batch_size: int = 256
    weight_decay: float = 0.0
    seed: int = 0


def train_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       num_classes: int, settings: ProbeSettings = ProbeSettings(), device: str = "cpu") -> Dict:
    """Fit a linear classifier on (train_x, train_y); return train and test top-1 (%)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std).float().to(device)
    xte = torch.from_numpy((test_x - mean) / std).float().to(device)
    ytr, yte = torch.as_tensor(train_y).long().to(device), torch.as_tensor(test_y).long().to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    head = torch.nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    head = head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs)
    for _ in tqdm(range(settings.epochs), desc="linear probe", unit="epoch", disable=None, leave=False):
        for batch in torch.randperm(len(ytr), generator=generator).split(settings.batch_size):
            batch = batch.to(device)
            loss = F.cross_entropy(head(xtr[batch]), ytr[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        train_top1 = (head(xtr).argmax(1) == ytr).float().mean().item() * 100
        test_top1 = (head(xte).argmax(1) == yte).float().mean().item() * 100
    return {"train_top1": train_top1, "test_top1": test_top1}


def transfer_probe(trained: Trained, target: TargetData, settings: ProbeSettings = ProbeSettings(),
                   device: str = "cpu", batch_size: int = 256) -> Dict:
    """Features of ``target`` through the frozen ``trained`` model, then the linear probe."""
    prepare = preparer(trained.spec)
    outputs = {}
    for split, images, labels in (("train", target.train_images, target.train_labels),
                                  ("test", target.test_images, target.test_labels)):
        outputs[split] = collect(trained.model, uint8_batches(images, labels, batch_size), len(labels), prepare,
                                 device, desc=f"{target.name} {split} features")
    result = train_linear_probe(outputs["train"].features, outputs["train"].labels, outputs["test"].features,
                                outputs["test"].labels, target.num_classes, settings, device)
    return {"target": target.name, "train_images": len(target.train_labels), "test_images": len(target.test_labels),
            "feature_dim": int(outputs["train"].features.shape[1]), "input_size": trained.spec.size, **result}
