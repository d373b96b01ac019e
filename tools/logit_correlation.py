#!/usr/bin/env python
"""Teacher-student logit-correlation difference (the paper's Fig. 6): the class-by-class matrices of
teacher and student logits over the test set, |student − teacher| / max_diff as a heat-map, and its mean.

    python tools/logit_correlation.py output/cifar100/wrn_40_2_resnet8x4/{kd,dkd,topkd}/last.pth
    python tools/logit_correlation.py STUDENT.pth --teacher output/cls_bench/teacher/last.pth --matrix pearson

The teacher is each student's own (MODEL.TEACHER, MODEL.TEACHER_WEIGHTS of its run) unless --teacher gives
a tools/train_cls.py checkpoint. --matrix mean_logit (default) is the DKD/mdistiller figure's matrix; see
topkd_det/classification/analysis/correlation.py. Writes OUTPUT_DIR/logit_correlation.png, .json and one
logit_correlation_<label>.csv per student.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from topkd_det.classification.analysis import AnalysisError, cli, correlation  # noqa: E402
from topkd_det.classification.analysis.checkpoints import load_teacher, load_trained  # noqa: E402
from topkd_det.classification.analysis.features import (collect, dataset_batches, subset_indices,  # noqa: E402
                                                        test_split)
from topkd_det.cli import documented_parser  # noqa: E402


def argument_parser() -> argparse.ArgumentParser:
    parser = documented_parser(__doc__, "docs/analyses.md")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="students' last.pth from tools/train_cls.py")
    parser.add_argument("--teacher", default="", help="the teacher's tools/train_cls.py checkpoint (default: each "
                                                      "student's own teacher)")
    parser.add_argument("--labels", nargs="+", default=[], help="a name per checkpoint (default: its run folder)")
    parser.add_argument("--matrix", choices=correlation.MATRICES, default="mean_logit")
    parser.add_argument("--max-diff", type=float, default=0.0,
                        help="the normaliser (default: 3.0 for mean_logit as mdistiller, 2.0 for pearson)")
    parser.add_argument("--data-root", default="", help="the test data's folder (default: the run's DATASET.ROOT)")
    parser.add_argument("--max-samples", type=int, default=0, help="test images used (0: all)")
    parser.add_argument("--output-dir", default="output/analysis")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    if args.max_diff < 0 or args.max_samples < 0 or args.batch_size < 1:
        raise AnalysisError("--max-diff and --max-samples must be >= 0, --batch-size >= 1")
    names = cli.labels_for(args.checkpoints, args.labels)
    out = cli.output_dir(args.output_dir)
    students = [load_trained(path) for path in args.checkpoints]
    shared_teacher = load_trained(args.teacher).model if args.teacher else None
    teachers = [shared_teacher or load_teacher(s.cfg) for s in students]
    panels = []
    for name, student, teacher in zip(names, students, teachers):
        dataset = test_split(student.cfg, args.data_root)
        indices = subset_indices(len(dataset), args.max_samples)
        s_out = collect(student.model, dataset_batches(dataset, indices, args.batch_size), len(indices),
                        device=args.device, desc=f"{name} logits")
        t_out = collect(teacher, dataset_batches(dataset, indices, args.batch_size), len(indices),
                        device=args.device, desc="teacher logits")
        if s_out.logits.shape != t_out.logits.shape:
            raise AnalysisError(f"{name}: student logits {s_out.logits.shape} and teacher logits {t_out.logits.shape} "
                                "differ; the teacher must classify the same classes")
        result = correlation.difference(s_out.logits, t_out.logits, s_out.labels, args.matrix, args.max_diff)
        np.savetxt(os.path.join(out, f"logit_correlation_{name.replace(os.sep, '_')}.csv"), result["diff"], delimiter=",", fmt="%.6f")
        panels.append({"title": name, **result})
        print(f"{name}: mean normalised |student - teacher| {result['mean']:.4f} (max {result['max']:.4f}, "
              f"{args.matrix}, max_diff {result['max_diff']}, {len(indices)} test images)")
    correlation.plot(os.path.join(out, "logit_correlation.png"), panels)
    cli.write_json(os.path.join(out, "logit_correlation.json"),
                   [{"model": p["title"], "matrix": args.matrix, "mean": p["mean"], "max": p["max"],
                     "max_diff": p["max_diff"]} for p in panels])
    return 0


if __name__ == "__main__":
    cli.run(main)
