#!/usr/bin/env python
"""Run one config over several seeds, one after another (each in OUTPUT_DIR/seed<k>), then write the
mean ± std of the "best" and "last" top-1 as a markdown table and a CSV in OUTPUT_DIR.

    python tools/multiseed.py --config-file configs/cifar100/resnet32x4_resnet8x4/topkd.yaml --seeds 0 1 2
    torchrun --nproc_per_node 4 tools/multiseed.py --config-file X.yaml --seeds 0 1 2 --resume

With --resume a killed sweep continues: finished seeds are read back from their checkpoints.
"""
import argparse
import csv
import logging
import os
import statistics
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topkd_det.classification.config import load_cls_cfg  # noqa: E402
from topkd_det.classification.engine import Trainer, distributed_session  # noqa: E402
from topkd_det.cli import add_debug_flag, documented_parser, run  # noqa: E402
from topkd_det.resume_rules import ALLOW_FLAG  # noqa: E402

# (column label, results record, metric): what the summary reports for each seed.
SUMMARY_COLUMNS = (
    ("best test top-1", "best", "test/top1"),
    ("last test top-1", "last", "test/top1"),
    ("best val top-1", "best", "val/top1"),
    ("last val top-1", "last", "val/top1"),
)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def summarize(results: List[Dict], name: str) -> Dict[str, str]:
    """One summary row: mean ± std over seeds of every metric present (val only with a val split)."""
    row = {"config": name, "seeds": " ".join(str(r["seed"]) for r in results)}
    for label, record, metric in SUMMARY_COLUMNS:
        values = [r[record][metric] for r in results if metric in r[record]]
        if values:
            row[label] = mean_std(values)
    return row


def write_tables(rows: List[Dict[str, str]], out_dir: str, stem: str) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def run_seeds(config_file: str, seeds: Sequence[int], opts: Sequence[str], resume: bool,
              allow_config_change: bool = False) -> List[Dict]:
    base = load_cls_cfg(config_file, opts)
    configs = [load_cls_cfg(config_file, [*opts, "SEED", str(seed), "OUTPUT_DIR",
                                          os.path.join(base.OUTPUT_DIR, f"seed{seed}")]) for seed in seeds]
    results = []
    with distributed_session() as env:
        for cfg in configs:
            results.append(Trainer(cfg, env).train(resume=resume, allow_config_change=allow_config_change))
        if env.main:
            name = os.path.relpath(config_file)
            write_tables([summarize(results, name)], base.OUTPUT_DIR, "multiseed")
            logging.getLogger(__name__).info("wrote %s/multiseed.{md,csv}", base.OUTPUT_DIR)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = documented_parser(__doc__, "docs/cifar100.md", "docs/paper_map.md")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--seeds", nargs="+", required=True, metavar="SEED")
    parser.add_argument("--resume", action="store_true", help="continue each seed from its last checkpoint")
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help="with --resume: accept config changes that alter the result, and record them")
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    args = parser.parse_args(argv)
    # argparse hands trailing opts to --seeds when they follow it: the seeds are the leading integers.
    count = next((i for i, s in enumerate(args.seeds) if not s.lstrip("-").isdigit()), len(args.seeds))
    if count == 0:
        parser.error(f"--seeds needs at least one integer, got {args.seeds[0]!r}")
    args.seeds, args.opts = [int(s) for s in args.seeds[:count]], args.seeds[count:] + args.opts
    return args


def main(argv=None, args=None) -> List[Dict]:
    args = args or parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_seeds(args.config_file, args.seeds, args.opts, args.resume, args.allow_config_change)


def cli(argv=None) -> List[Dict]:
    """``main`` with errors as one line and a non-zero exit (``--debug``: the traceback)."""
    args = parse_args(argv)
    return run(lambda: main(argv, args), debug=args.debug)


if __name__ == "__main__":
    cli()
