#!/usr/bin/env python
"""Train or evaluate a TopKD/KD/DKD-distilled Faster, Mask or Cascade R-CNN, the Detectron2 way.

    python tools/train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --resume                 # continue a killed run
    python tools/train_net.py --config-file ... --resume SOLVER.MAX_ITER 270000   # the same run, longer
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_net.py --config-file ... --eval-teacher           # the teacher alone
    python tools/train_net.py --config-file configs/embedded/topkd.yaml \
        --coco-dataset mine_train /data/train.json /data/train --coco-dataset mine_val /data/val.json /data/val \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

Trailing ``KEY VALUE`` pairs override the config, e.g. ``MODEL.DISTILL.TOPKD.K 5 SOLVER.MAX_ITER 1000``.
--resume continues the run in OUTPUT_DIR only under the config that wrote it: a change that alters the
result is refused with the keys listed; --allow-config-change accepts it and records it in metrics.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from topkd_det.cli import add_debug_flag, run  # noqa: E402
from topkd_det.detection import engine  # noqa: E402
from topkd_det.detection.resume import check_resume_config  # noqa: E402
from topkd_det.resume_rules import ALLOW_FLAG  # noqa: E402


def main(args):
    cfg = engine.setup_cfg(args.config_file, args.opts, args, coco_datasets=args.coco_dataset)
    if args.eval_teacher:
        return engine.evaluate_teacher(cfg)
    if args.eval_only:
        return engine.evaluate_student(cfg, cfg.MODEL.WEIGHTS, resume=args.resume)
    return engine.train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)


def parser():
    p = default_argument_parser(__doc__)
    p.add_argument("--eval-teacher", action="store_true", help="evaluate the teacher of the config alone")
    p.add_argument("--coco-dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                   help="register a COCO-format dataset for DATASETS.TRAIN/TEST (repeatable); shorthand for an "
                        "entry of DATASETS.COCO_INSTANCES, which the dumped config.yaml keeps")
    p.add_argument(ALLOW_FLAG, action="store_true",
                   help="with --resume: accept config changes that alter the result, and record them")
    return add_debug_flag(p)


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if not args.config_file:
        p.error("--config-file is required (a Detectron2 YAML, e.g. configs/embedded/topkd.yaml)")
    return args


def cli(argv=None):
    """Parse, check the config in this process (so that its errors show before any worker starts),
    then run ``main`` in ``--num-gpus`` processes; errors end as one line (``--debug``: traceback)."""
    args = parse_args(argv)

    def start():
        if args.num_gpus * args.num_machines > 1:
            cfg = engine.setup_cfg(args.config_file, args.opts, coco_datasets=args.coco_dataset)
            if args.resume and not args.eval_only:
                check_resume_config(cfg, args.allow_config_change)
        return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))

    return run(start, debug=args.debug)


if __name__ == "__main__":
    cli()
