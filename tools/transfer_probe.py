#!/usr/bin/env python
"""Linear transfer probe (the paper's Table 7): freeze trained students up to their penultimate layer,
train a linear classifier on a target data set resized to each student's input size, report top-1.

    python tools/transfer_probe.py --target stl10 --data-root /data \\
        output/cifar100/resnet32x4_resnet8x4/topkd/last.pth output/cifar100/vanilla/last.pth
    python tools/transfer_probe.py --target tiny_imagenet --data-root /data CKPT.pth
    python tools/transfer_probe.py --target digits output/cls_bench/topkd/seed0/last.pth   # offline demo

Targets: stl10 (DATA_ROOT/stl10_binary/, the binary release), tiny_imagenet (DATA_ROOT/tiny-imagenet-200/;
its labelled val split is the test split), digits (scikit-learn's bundled 8x8 digits, split 50/50).
Writes OUTPUT_DIR/transfer_<target>.json and prints one line per checkpoint.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topkd_det.classification.analysis import AnalysisError, cli  # noqa: E402
from topkd_det.classification.analysis.checkpoints import load_trained  # noqa: E402
from topkd_det.classification.analysis.probe import ProbeSettings, transfer_probe  # noqa: E402
from topkd_det.classification.analysis.target_data import TARGETS, load_target  # noqa: E402
from topkd_det.cli import documented_parser  # noqa: E402

DEFAULTS = ProbeSettings()


def argument_parser() -> argparse.ArgumentParser:
    parser = documented_parser(__doc__, "docs/analyses.md")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="last.pth files from tools/train_cls.py")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--data-root", default="", help="folder holding the target's standard layout")
    parser.add_argument("--labels", nargs="+", default=[], help="a name per checkpoint (default: its run folder)")
    parser.add_argument("--output-dir", default="output/analysis")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.weight_decay < 0:
        raise AnalysisError("--epochs and --batch-size must be >= 1, --lr > 0 and --weight-decay >= 0")
    names = cli.labels_for(args.checkpoints, args.labels)
    out = cli.output_dir(args.output_dir)
    trained = [load_trained(path) for path in args.checkpoints]  # every checkpoint is checked before any work
    target = load_target(args.target, args.data_root)
    settings = ProbeSettings(args.epochs, args.lr, args.batch_size, args.weight_decay, args.seed)
    results = []
    for name, path, model in zip(names, args.checkpoints, trained):
        result = {"model": name, "checkpoint": path, **transfer_probe(model, target, settings, args.device)}
        results.append(result)
        print(f"{name}: {args.target} linear-probe top-1 {result['test_top1']:.2f} "
              f"(train {result['train_top1']:.2f}, {result['feature_dim']}-d features at {result['input_size']} px)")
    cli.write_json(os.path.join(out, f"transfer_{args.target}.json"), results)
    return 0


if __name__ == "__main__":
    cli.run(main)
