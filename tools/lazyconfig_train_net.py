#!/usr/bin/env python
"""Train or evaluate from a LazyConfig Python file, the Detectron2 way (tools/lazyconfig_train_net.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... --resume          # continue a killed run
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=output/.../model_final.pth
    python tools/lazyconfig_train_net.py --config-file configs/embedded/topkd.py   # offline (train.device auto)

Trailing ``key=value`` overrides change the config, e.g. ``model.distill_loss.options.topkd.k=5
train.max_iter=1000``; a key the config lacks is refused unless written ``+key=value``. Checkpoints
hold the student only, and ``--eval-only`` builds the student alone (no teacher). --resume continues
the run in train.output_dir only under the config that wrote it: a change that alters the result is
refused with the keys listed; --allow-config-change accepts it and records it in metrics.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.cli import tool_help  # noqa: E402
from topkd_det.detection import lazy_engine, tool  # noqa: E402


def main(args):
    cfg = lazy_engine.setup(args.config_file, args.opts, args, checked=getattr(args, tool.CHECKED, False))
    if args.eval_only:
        return lazy_engine.evaluate_student(cfg, resume=args.resume)
    return lazy_engine.train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)


def parser():
    return tool.argument_parser(tool_help(__doc__, "docs/detection_lazyconfig.md", "docs/resume_and_errors.md",
                                          "docs/multi_gpu.md"))


def parse_args(argv=None):
    return tool.parse_args(parser(), argv, "a LazyConfig .py file, e.g. configs/embedded/topkd.py")


def check(args, world_size: int):
    lazy_engine.check(args.config_file, args.opts, args, world_size)


def cli(argv=None):
    args = parse_args(argv)
    return tool.launch_checked(args, main, lambda world_size: check(args, world_size))


if __name__ == "__main__":
    cli()
