#!/usr/bin/env python
"""Generate the synthetic shapes detection dataset (COCO json + PNG images) under --root.

Reuses an existing dataset whose meta.json matches the arguments; refuses to touch one that does
not match unless --overwrite is given.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.data.synthetic_coco import SyntheticConfig, default_root, generate  # noqa: E402


def main(argv=None) -> int:
    parser = documented_parser(__doc__, "docs/getting_started.md")
    parser.add_argument("--root", default=str(default_root()),
                        help="output folder (default: $TOPKD_DATASETS/synthetic_shapes, where "
                        "topkd_det.detection.datasets.register_builtin_synthetic looks)")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--num-train", type=int, default=SyntheticConfig.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticConfig.num_val)
    parser.add_argument("--num-test", type=int, default=SyntheticConfig.num_test)
    parser.add_argument("--image-size", type=int, default=SyntheticConfig.image_size)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --root generated with other parameters")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                                 num_test=args.num_test, image_size=args.image_size)
        generate(args.root, config, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, OSError) as e:  # bad parameters, a foreign or unwritable --root
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
