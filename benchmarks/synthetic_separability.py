"""Are the synthetic classes hard for a weak model, learnable by a strong one, and confused in the
graded way distillation needs? Crops the ground-truth boxes, resizes them to 24x24, and compares
logistic regression on mean colour, logistic regression on pixels and a tiny CNN on val crops.

    python benchmarks/synthetic_separability.py [--root datasets/synthetic_shapes]
"""
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.data.synthetic_coco import (SyntheticConfig, attribute_distance, class_attributes,  # noqa: E402
                                           default_root, generate, image_root, json_path)

CROP = 24


def load_crops(root: Path, split: str):
    coco = json.loads(json_path(root, split).read_text())
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    crops, labels = [], []
    for ann in coco["annotations"]:
        image = cv2.imread(str(image_root(root, split) / files[ann["image_id"]]))
        x, y, w, h = ann["bbox"]
        crops.append(cv2.resize(image[y:y + h, x:x + w], (CROP, CROP), interpolation=cv2.INTER_AREA))
        labels.append(ann["category_id"] - 1)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)


def fit(model: nn.Module, x, y, epochs: int, batch: int = 128, lr: float = 3e-3) -> nn.Module:
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            xb = x[idx]
            if xb.dim() == 4:  # flips keep every shape's class, so they are free augmentation
                xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def tiny_cnn(num_classes: int) -> nn.Module:
    # Flattened rather than globally pooled features: shape is a matter of layout within the box.
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(3, 16), block(16, 16), nn.MaxPool2d(2), block(16, 32), block(32, 32),
                         nn.MaxPool2d(2), block(32, 32), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (CROP // 8) ** 2, num_classes))


def report(name: str, probs: torch.Tensor, y: torch.Tensor) -> None:
    attrs = class_attributes()
    distance = torch.tensor([[attribute_distance(a, b) for b in attrs] for a in attrs])[y]
    pred = probs.argmax(1)
    acc = (pred == y).float().mean().item()
    shape_acc = np.mean([attrs[p].shape == attrs[t].shape for p, t in zip(pred.tolist(), y.tolist())])
    colour_acc = np.mean([attrs[p].colour == attrs[t].colour for p, t in zip(pred.tolist(), y.tolist())])
    print(f"{name}: acc {acc:.3f}, shape acc {shape_acc:.3f}, colour acc {colour_acc:.3f}")
    errors = distance[pred != y, :].gather(1, pred[pred != y, None]).squeeze(1)
    # Under uniform confusion, 2 of the 23 wrong classes are attribute neighbours (distance 1).
    share = {d: (errors == d).float().mean().item() for d in range(1, 5)}
    uniform = {d: (distance[0] == d).sum().item() / (len(attrs) - 1) for d in range(1, 5)}
    print("    errors by attribute distance: "
          + ", ".join(f"d{d} {share[d]:.2f} (uniform {uniform[d]:.2f})" for d in range(1, 5)))
    # What distillation sees: the softmax mass a wrong class gets, by its distance to the truth.
    per_class = {d: ((probs * (distance == d)).sum(1) / (distance == d).sum(1)).mean().item()
                 for d in range(1, 5)}
    print("    mean prob of one wrong class: " + ", ".join(f"d{d} {per_class[d]:.4f}" for d in range(1, 5)))
    confusions = Counter((t, p) for t, p in zip(y.tolist(), pred.tolist()) if t != p).most_common(5)
    print("    top confusions: " + ", ".join(f"{attrs[t].name}->{attrs[p].name} ({c})"
                                        for (t, p), c in confusions))


def main() -> None:
    parser = documented_parser(__doc__, "docs/getting_started.md")
    parser.add_argument("--root", type=Path, default=default_root())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn-epochs", type=int, default=12)
    parser.add_argument("--linear-epochs", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    # One thread: on a shared 2-core machine, OpenMP threads contend and run several times slower.
    torch.set_num_threads(1)

    root = generate(args.root, SyntheticConfig(seed=args.seed))
    x_train, y_train = load_crops(root, "train")
    x_val, y_val = load_crops(root, "val")
    num_classes = len(class_attributes())
    print(f"{len(x_train)} train crops, {len(x_val)} val crops, {num_classes} classes")

    colour_train, colour_val = x_train.mean((2, 3)), x_val.mean((2, 3))
    mu, sd = colour_train.mean(0), colour_train.std(0)
    candidates = [
        ("logreg on mean colour", nn.Linear(3, num_classes), (colour_train - mu) / sd,
         (colour_val - mu) / sd, args.linear_epochs, 1e-2),
        ("logreg on 24x24 pixels", nn.Sequential(nn.Flatten(), nn.Linear(3 * CROP * CROP, num_classes)),
         x_train, x_val, args.linear_epochs, 1e-3),
        (f"tiny CNN, {args.cnn_epochs // 3} epochs", tiny_cnn(num_classes), x_train, x_val,
         args.cnn_epochs // 3, 3e-3),
        (f"tiny CNN, {args.cnn_epochs} epochs", tiny_cnn(num_classes), x_train, x_val,
         args.cnn_epochs, 3e-3),
    ]
    for name, model, train_in, val_in, epochs, lr in candidates:
        start = time.time()
        fit(model, train_in, y_train, epochs, lr=lr)
        with torch.no_grad():
            report(f"{name} ({time.time() - start:.0f} s)", model(val_in).softmax(1), y_val)


if __name__ == "__main__":
    main()
