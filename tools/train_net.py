#!/usr/bin/env python
"""Train or evaluate a TopKD/KD/DKD-distilled Faster, Mask or Cascade R-CNN, the Detectron2 way.

    python tools/train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --resume                 # continue a killed run
    python tools/train_net.py --config-file ... --resume SOLVER.MAX_ITER 270000   # the same run, longer
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_net.py --config-file ... --eval-teacher           # the teacher alone, in teacher_eval/
    python tools/train_net.py --config-file configs/embedded/teacher.yaml \
        --coco-dataset mine_train /data/train.json /data/train --coco-dataset mine_val /data/val.json /data/val \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

The last command trains a teacher on your own COCO data; the TopKD student after it is in
docs/detection_own_data.md. Trailing ``KEY VALUE`` pairs override the config, e.g.
``MODEL.DISTILL.TOPKD.K 5 SOLVER.MAX_ITER 1000``. --resume continues the run in OUTPUT_DIR only under the
config that wrote it: a change that alters the result is refused with the keys listed;
--allow-config-change accepts it and records it in metrics.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.cli import tool_help  # noqa: E402
from topkd_det.detection import engine, tool  # noqa: E402


def main(args):
    cfg = engine.setup_cfg(args.config_file, args.opts, args, coco_datasets=args.coco_dataset,
                           checked=getattr(args, tool.CHECKED, False))
    if args.eval_teacher:
        return engine.evaluate_teacher(cfg)
    if args.eval_only:
        return engine.evaluate_student(cfg, cfg.MODEL.WEIGHTS, resume=args.resume)
    return engine.train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)


def parser():
    p = tool.argument_parser(tool_help(__doc__, "docs/detection_coco.md", "docs/detection_own_data.md",
                                       "docs/data_checks.md", "docs/resume_and_errors.md", "docs/multi_gpu.md"))
    p.add_argument("--eval-teacher", action="store_true",
                   help="evaluate the teacher of the config alone (results in OUTPUT_DIR/teacher_eval/)")
    p.add_argument("--coco-dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                   help="register a COCO-format dataset for DATASETS.TRAIN/TEST (repeatable); shorthand for an "
                        "entry of DATASETS.COCO_INSTANCES, which the dumped config.yaml keeps")
    return p


def parse_args(argv=None):
    return tool.parse_args(parser(), argv, "a Detectron2 YAML, e.g. configs/embedded/topkd.yaml")


def check(args, world_size: int):
    engine.check_cfg(args.config_file, args.opts, args, args.coco_dataset, world_size)


def cli(argv=None):
    args = parse_args(argv)
    return tool.launch_checked(args, main, lambda world_size: check(args, world_size))


if __name__ == "__main__":
    cli()
