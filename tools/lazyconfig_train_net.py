#!/usr/bin/env python
"""Train or evaluate from a LazyConfig Python file, the Detectron2 way (tools/lazyconfig_train_net.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... --resume          # continue a killed run
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=output/.../model_final.pth
    python tools/lazyconfig_train_net.py --config-file configs/embedded/topkd.py   # offline, on the CPU

Trailing ``key=value`` overrides change the config, e.g. ``model.distill_loss.options.topkd.k=5
train.max_iter=1000``; a key the config lacks is refused unless written ``+key=value``. Checkpoints
hold the student only, and ``--eval-only`` builds the student alone (no teacher). --resume continues
the run in train.output_dir only under the config that wrote it: a change that alters the result is
refused with the keys listed; --allow-config-change accepts it and records it in metrics.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from topkd_det.cli import add_debug_flag, run  # noqa: E402
from topkd_det.detection import lazy_engine  # noqa: E402
from topkd_det.resume_rules import ALLOW_FLAG  # noqa: E402


def main(args):
    cfg = lazy_engine.setup(args.config_file, args.opts, args)
    if args.eval_only:
        return lazy_engine.evaluate_student(cfg, resume=args.resume)
    return lazy_engine.train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)


def parser():
    p = default_argument_parser(__doc__)
    p.add_argument(ALLOW_FLAG, action="store_true",
                   help="with --resume: accept config changes that alter the result, and record them")
    return add_debug_flag(p)


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if not args.config_file:
        p.error("--config-file is required (a LazyConfig .py file, e.g. configs/embedded/topkd.py)")
    return args


def cli(argv=None):
    """Parse, check the config in this process (so that its errors show before any worker starts),
    then run ``main`` in ``--num-gpus`` processes; errors end as one line (``--debug``: traceback)."""
    args = parse_args(argv)

    def start():
        if args.num_gpus * args.num_machines > 1:
            cfg = lazy_engine.setup(args.config_file, args.opts)
            if args.resume and not args.eval_only:
                lazy_engine.check_resume_config(cfg, args.allow_config_change)
        return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))

    return run(start, debug=args.debug)


if __name__ == "__main__":
    cli()
