#!/usr/bin/env python
"""Train or evaluate from a LazyConfig Python file, the Detectron2 way (tools/lazyconfig_train_net.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... --resume          # continue a killed run
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=output/.../model_final.pth
    python tools/lazyconfig_train_net.py --config-file configs/embedded/topkd.py   # offline, on the CPU

Trailing ``key=value`` overrides change the config, e.g. ``model.distill_loss.options.topkd.k=5
train.max_iter=1000``; a key the config lacks is refused unless written ``+key=value``. Checkpoints
hold the student only, and ``--eval-only`` builds the student alone (no teacher).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from topkd_det.detection import lazy_engine  # noqa: E402


def main(args):
    cfg = lazy_engine.setup(args.config_file, args.opts, args)
    if args.eval_only:
        return lazy_engine.evaluate_student(cfg, resume=args.resume)
    return lazy_engine.train(cfg, resume=args.resume)


def parser():
    return default_argument_parser(__doc__)


if __name__ == "__main__":
    args = parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
