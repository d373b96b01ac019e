#!/usr/bin/env python
"""Train or evaluate a classification student (CIFAR-100, ImageNet, Fashion-MNIST), Detectron2-style:

    python tools/train_cls.py --config-file configs/cifar100/resnet32x4_resnet8x4/topkd.yaml
    python tools/train_cls.py --config-file X.yaml --resume                  # continue a killed run
    python tools/train_cls.py --config-file X.yaml --resume SOLVER.EPOCHS 300   # the same run, longer
    python tools/train_cls.py --config-file X.yaml --eval-only MODEL.WEIGHTS path/to/ckpt.pth
    torchrun --nproc_per_node 8 tools/train_cls.py --config-file X.yaml      # DDP
    python tools/train_cls.py --num-procs 2 --config-file X.yaml             # same, torchrun started for you

Each config writes to its own OUTPUT_DIR (by default output/<config path below configs/>). --resume
continues the run in OUTPUT_DIR only under the config that wrote it: a change that alters the result
(model, teacher, data, loss, solver, seed) is refused with the keys listed; --allow-config-change
accepts such changes deliberately and records them in metrics.jsonl and results.json.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import Trainer, distributed_session  # noqa: E402
from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.resume_rules import ALLOW_FLAG  # noqa: E402


def argument_parser() -> argparse.ArgumentParser:
    parser = documented_parser(__doc__, "docs/cifar100.md", "docs/imagenet.md", "docs/resume_and_errors.md",
                               "docs/multi_gpu.md")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help="with --resume: accept config changes that alter the result, and record them")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--num-procs", "--num-gpus", type=int, default=1,
                        help="start this many DDP processes through torchrun (one per GPU, or CPU processes)")
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s r{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def launch_torchrun(num_procs: int, argv) -> None:
    """Re-run this script under torchrun (torch's own launcher) with ``num_procs`` processes."""
    from torch.distributed.run import main as torchrun

    rest, skip = [], False
    for arg in argv:  # drop --num-procs N so the children do not launch again
        if skip:
            skip = False
        elif arg in ("--num-procs", "--num-gpus"):
            skip = True
        elif not arg.startswith(("--num-procs=", "--num-gpus=")):
            rest.append(arg)
    torchrun(["--standalone", f"--nproc_per_node={num_procs}", os.path.abspath(__file__), *rest])


def main(argv=None, args=None) -> dict:
    args = args or argument_parser().parse_args(argv)
    cfg = load_cls_cfg(args.config_file, args.opts)  # config errors show before torchrun starts anything
    if args.num_procs > 1 and "WORLD_SIZE" not in os.environ:
        launch_torchrun(args.num_procs, sys.argv[1:] if argv is None else argv)
        return {}
    setup_logging()
    with distributed_session() as env:
        trainer = Trainer(cfg, env)
        if args.eval_only:
            return trainer.evaluate_only()
        return trainer.train(resume=args.resume, allow_config_change=args.allow_config_change)


def cli(argv=None) -> dict:
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = argument_parser().parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
