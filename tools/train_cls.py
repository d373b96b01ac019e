#!/usr/bin/env python
"""Train or evaluate a classification student (CIFAR-100, ImageNet, Fashion-MNIST), Detectron2-style:

    python tools/train_cls.py --config-file configs/cifar100/resnet32x4_resnet8x4/topkd.yaml
    python tools/train_cls.py --config-file X.yaml --resume SOLVER.EPOCHS 2 DISTILL.METHOD kd
    python tools/train_cls.py --config-file X.yaml --eval-only MODEL.WEIGHTS path/to/ckpt.pth
    torchrun --nproc_per_node 8 tools/train_cls.py --config-file X.yaml      # DDP
    python tools/train_cls.py --num-procs 2 --config-file X.yaml             # same, torchrun started for you
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import Trainer, distributed_session  # noqa: E402


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--num-procs", "--num-gpus", type=int, default=1,
                        help="start this many DDP processes through torchrun (one per GPU, or CPU processes)")
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


def main(argv=None) -> dict:
    args = argument_parser().parse_args(argv)
    if args.num_procs > 1 and "WORLD_SIZE" not in os.environ:
        launch_torchrun(args.num_procs, sys.argv[1:] if argv is None else argv)
        return {}
    setup_logging()
    cfg = load_cls_cfg(args.config_file, args.opts)
    with distributed_session() as env:
        trainer = Trainer(cfg, env)
        return trainer.evaluate_only() if args.eval_only else trainer.train(resume=args.resume)


if __name__ == "__main__":
    main()
