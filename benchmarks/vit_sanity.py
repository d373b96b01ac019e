"""A short CPU sanity run of each ViT student at its real input size: does the training loss fall?

Real data that exists here: Fashion-MNIST, resized to 224 px and repeated to three channels. Each student
trains from scratch with the ViT setting's optimiser (AdamW, weight decay 0.05 off norms, biases and
tokens; the setting's LR 5e-4 at batch 128 scaled linearly to --batch-size) and a linear warmup then
cosine over --steps, on batches drawn from --train-images images;
it is evaluated on --test-images test images before and after. This checks that the models, the optimiser
and the schedule train together; it says nothing about CIFAR-100 accuracy.

    python benchmarks/vit_sanity.py                       # all four, 150 steps of 8 images
    python benchmarks/vit_sanity.py --models pit_tiny --steps 300
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from topkd_det.classification.analysis.checkpoints import InputSpec, preparer  # noqa: E402
from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.data import build_splits  # noqa: E402
from topkd_det.classification.models import FIXED_INPUT_SIZE, build_model  # noqa: E402
from topkd_det.classification.optim import cosine_warmup_factor, param_groups  # noqa: E402
from topkd_det.classification.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.reporting import write_markdown  # noqa: E402

MODELS = tuple(FIXED_INPUT_SIZE)


@torch.no_grad()
def top1(model, images, labels, prepare, batch: int = 64) -> float:
    model.eval()
    hits = sum((model(prepare(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum().item()
               for i in range(0, len(labels), batch))
    return hits / len(labels) * 100


def sanity_run(name: str, data, args) -> dict:
    torch.manual_seed(args.seed)
    train, test = data
    model = build_model(name, num_classes=10)
    prepare = preparer(InputSpec(3, FIXED_INPUT_SIZE[name], IMAGENET_MEAN, IMAGENET_STD))
    optimizer = torch.optim.AdamW(param_groups(model, 0.05, True), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_warmup_factor(step, args.steps, args.warmup, 1e-3, 0.01))
    test_x, test_y = test.images[:args.test_images], test.labels[:args.test_images]
    before = top1(model, test_x, test_y, prepare)
    generator = torch.Generator().manual_seed(args.seed)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        index = torch.randint(0, args.train_images, (args.batch_size,), generator=generator)
        loss = F.cross_entropy(model(prepare(train.images[index])), train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            print(f"  {name} step {step + 1}/{args.steps} loss {sum(losses[-10:]) / 10:.3f}", flush=True)
    seconds = time.perf_counter() - start
    window = min(20, args.steps // 2)
    return {"model": name, "params (M)": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}",
            f"loss, first {window} steps": f"{sum(losses[:window]) / window:.3f}",
            f"loss, last {window} steps": f"{sum(losses[-window:]) / window:.3f}",
            "test top-1 before": f"{before:.1f}", "test top-1 after": f"{top1(model, test_x, test_y, prepare):.1f}",
            "s/step": f"{seconds / args.steps:.2f}"}


def main(argv=None) -> None:
    parser = documented_parser(__doc__, "docs/results.md", "docs/vit.md")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=15, help="linear LR warmup steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.0, help="default: 5e-4 x batch / 128 (the setting's, scaled)")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="output/vit_sanity")
    args = parser.parse_args(argv)
    args.lr = args.lr or 5e-4 * args.batch_size / 128
    torch.set_num_threads(args.threads)
    cfg = load_cls_cfg(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                    "fashion_mnist", "base.yaml"),
                       ["DATASET.ROOT", args.data_dir, "DATASET.VAL_SIZE", "0", "DATASET.AUGMENT", "False"])
    splits = build_splits(cfg)
    train, test = splits.train, splits.test
    rows = []
    for name in args.models:
        rows.append(sanity_run(name, (train, test), args))
        print(rows[-1], flush=True)
    notes = (f"Fashion-MNIST resized to 224 px, {args.train_images} train images, batch {args.batch_size}, "
             f"{args.steps} steps (warmup {args.warmup}), AdamW LR {args.lr}, {args.threads} CPU thread(s), seed "
             f"{args.seed}. Command: python benchmarks/vit_sanity.py {' '.join(sys.argv[1:])}")
    print(write_markdown(os.path.join(args.output_dir, "results.md"), "ViT students: CPU sanity run",
                         list(rows[0]), rows, notes))


if __name__ == "__main__":
    main()
