#!/usr/bin/env python
"""t-SNE of students' penultimate features on their test set (the paper's Fig. 5), one panel per
checkpoint, with the class separation as numbers (silhouette of the 2-D points, 5-NN accuracy in them).

    python tools/tsne.py output/cifar100/resnet32x4_resnet8x4/{kd,dkd,topkd}/last.pth --labels KD DKD TopKD
    python tools/tsne.py output/cls_bench/topkd/seed0/last.pth --max-samples 2000

Writes OUTPUT_DIR/tsne.png, tsne_points.csv (model, x, y, label) and tsne.json, and prints the numbers.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topkd_det.classification.analysis import AnalysisError, cli, tsne  # noqa: E402
from topkd_det.classification.analysis.checkpoints import load_trained  # noqa: E402
from topkd_det.classification.analysis.features import (collect, dataset_batches, subset_indices,  # noqa: E402
                                                        test_split)
from topkd_det.cli import documented_parser  # noqa: E402


def argument_parser() -> argparse.ArgumentParser:
    parser = documented_parser(__doc__, "docs/analyses.md")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="last.pth files from tools/train_cls.py")
    parser.add_argument("--labels", nargs="+", default=[], help="a name per checkpoint (default: its run folder)")
    parser.add_argument("--data-root", default="", help="the test data's folder (default: the run's DATASET.ROOT)")
    parser.add_argument("--max-samples", type=int, default=2000,
                        help="test images embedded, drawn by --seed (0: all; t-SNE time grows with N log N)")
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="output/analysis")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    if args.max_samples < 0 or args.perplexity <= 0 or args.batch_size < 1:
        raise AnalysisError("--max-samples must be >= 0, --perplexity > 0 and --batch-size >= 1")
    names = cli.labels_for(args.checkpoints, args.labels)
    out = cli.output_dir(args.output_dir)
    trained = [load_trained(path) for path in args.checkpoints]
    panels, num_classes = [], 0
    for name, model in zip(names, trained):
        dataset = test_split(model.cfg, args.data_root)
        indices = subset_indices(len(dataset), args.max_samples, args.seed)
        if len(indices) < 3:
            raise AnalysisError(f"{name}: t-SNE needs at least 3 test images, got {len(indices)}")
        outputs = collect(model.model, dataset_batches(dataset, indices, args.batch_size), len(indices),
                          device=args.device, desc=f"{name} features")
        points = tsne.embed(outputs.features, args.seed, args.perplexity)
        scores = tsne.separation(points, outputs.labels)
        num_classes = max(num_classes, outputs.logits.shape[1])
        panels.append({"title": name, "points": points, "labels": outputs.labels, "images": len(indices), **scores})
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({len(indices)} test images)")
    tsne.plot(os.path.join(out, "tsne.png"), panels, num_classes)
    tsne.write_points(os.path.join(out, "tsne_points.csv"), panels)
    cli.write_json(os.path.join(out, "tsne.json"), tsne.summary(panels))
    return 0


if __name__ == "__main__":
    cli.run(main)
