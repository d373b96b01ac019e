"""What ``tools/train_net.py`` and ``tools/lazyconfig_train_net.py`` share around Detectron2's
``default_argument_parser`` and ``launch``: the flags this project adds, a required config file, and a
config check in the launching process, so that its errors show before any worker starts."""
import argparse
from typing import Callable, Optional, Sequence

from detectron2.engine import default_argument_parser, launch

from ..cli import add_debug_flag, run
from ..resume_rules import ALLOW_FLAG


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """Detectron2's parser with ``--allow-config-change`` and ``--debug``."""
    parser = default_argument_parser(doc)
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help="with --resume: accept config changes that alter the result, and record them")
    return add_debug_flag(parser)


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], example: str) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error(f"--config-file is required ({example})")
    # Detectron2's parser takes everything after the first override as overrides (argparse.REMAINDER).
    flags = [opt for opt in args.opts if isinstance(opt, str) and opt.startswith("--")]
    if flags:
        parser.error(f"{', '.join(flags)} came after the config overrides, which take everything after the first "
                     f"one: put flags before the overrides (--config-file FILE {flags[0]} ... then the overrides)")
    return args


def launch_checked(args: argparse.Namespace, main: Callable, check: Callable[[], None]):
    """Run ``main(args)`` in ``--num-gpus`` processes through Detectron2's ``launch``; with several,
    ``check()`` (the config and resume checks) runs here first. Errors end as one line (``--debug``:
    traceback)."""

    def start():
        if args.num_gpus * args.num_machines > 1:
            check()
        return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))

    return run(start, debug=args.debug)
