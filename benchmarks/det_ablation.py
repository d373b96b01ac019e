#!/usr/bin/env python
"""Ablation of TopKD's knobs on the embedded detection benchmark (choose on val, report test).

    python benchmarks/det_ablation.py --groups modes temperature --seeds 0 1 2 --jobs 2
    python benchmarks/det_ablation.py --groups final --split test      # the chosen setting vs baselines

Every variant trains the demo's student (configs/embedded/topkd.yaml plus the variant's overrides)
with the demo's cached teacher, on the same budget and seeds, and is scored with COCO AP on
--split. Runs are cached by config, so an interrupted ablation continues and groups share runs.
Writes <output>/<group>.md and .csv (mean ± std over seeds) and prints them.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topkd_det.data.synthetic_coco import SyntheticConfig  # noqa: E402
from topkd_det.detection import embedded  # noqa: E402
from topkd_det.reporting import fmt_mean_std, write_csv, write_markdown  # noqa: E402

D = "MODEL.DISTILL."
T = D + "TOPKD."
# group -> {variant name: (config file in configs/embedded, overrides)}
GROUPS: Dict[str, Dict[str, Tuple[str, List[str]]]] = {
    "modes": {  # paper Table 4
        "KL (plain KD, T=1)": ("topkd.yaml", [D + "MODE", "kl", T + "KL_TEMPERATURE", 1.0]),
        "contrastive": ("topkd.yaml", [D + "MODE", "contrastive"]),
        "contrastive + TSM": ("topkd.yaml", [D + "MODE", "contrastive+tsm"]),
        "contrastive + TDL": ("topkd.yaml", [D + "MODE", "contrastive+tdl"]),
        "TopKD (TSM + TDL)": ("topkd.yaml", []),
    },
    "temperature": {
        "tau 0.05": ("topkd.yaml", [T + "TEMPERATURE", 0.05]),
        "tau 0.1": ("topkd.yaml", [T + "TEMPERATURE", 0.1]),
        "tau 0.2": ("topkd.yaml", [T + "TEMPERATURE", 0.2]),
        "tau 0.5": ("topkd.yaml", [T + "TEMPERATURE", 0.5]),
        "tau 1.0": ("topkd.yaml", [T + "TEMPERATURE", 1.0]),
    },
    "normalize": {
        "cosine (normalize)": ("topkd.yaml", []),
        "dot product, tau 10": ("topkd.yaml", [T + "NORMALIZE", False, T + "TEMPERATURE", 10.0]),
        "dot product, tau 50": ("topkd.yaml", [T + "NORMALIZE", False, T + "TEMPERATURE", 50.0]),
    },
    "negatives": {
        "all (Eq. 1)": ("topkd.yaml", []),
        "other_label": ("topkd.yaml", [T + "NEGATIVES", "other_label"]),
    },
    "scope": {
        "batch, all ROIs": ("topkd.yaml", []),
        "image, all ROIs": ("topkd.yaml", [T + "SCOPE", "image"]),
        "batch, foreground only": ("topkd.yaml", [T + "FOREGROUND_ONLY", True]),
        "image, foreground only": ("topkd.yaml", [T + "SCOPE", "image", T + "FOREGROUND_ONLY", True]),
    },
    "rank_gain": {
        "g 0": ("topkd.yaml", [T + "RANK_GAIN", 0.0]),
        "g 0.5": ("topkd.yaml", [T + "RANK_GAIN", 0.5]),
        "g 1.0": ("topkd.yaml", [T + "RANK_GAIN", 1.0]),
    },
    "gt_gain": {
        "g_gt 0": ("topkd.yaml", [T + "GT_GAIN", 0.0]),
        "g_gt 1.0": ("topkd.yaml", [T + "GT_GAIN", 1.0]),
        "g_gt 2.0": ("topkd.yaml", [T + "GT_GAIN", 2.0]),
    },
    "shift": {
        "lambda 0": ("topkd.yaml", [T + "SHIFT", 0.0]),
        "lambda 0.5": ("topkd.yaml", [T + "SHIFT", 0.5]),
        "lambda 1.0": ("topkd.yaml", [T + "SHIFT", 1.0]),
    },
    "k": {f"K {k}": ("topkd.yaml", [T + "K", k]) for k in (1, 3, 5, 8, 11)},
    "final": {
        "student alone": ("student.yaml", []),
        "KD": ("kd.yaml", []),
        "DKD": ("dkd.yaml", []),
        "TopKD": ("topkd.yaml", []),
    },
}
COLUMNS = ["variant", "AP", "AP50", "AP75", "seeds"]


def _variant_dir(out: Path, config: str, opts: List) -> Path:
    text = config.replace(".yaml", "") + "".join(f"_{str(k).split('.')[-1].lower()}-{v}" for k, v in zip(opts[::2], opts[1::2]))
    return out / "runs" / text.replace(" ", "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", default=[g for g in GROUPS if g != "final"], choices=list(GROUPS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--output", type=Path, default=Path("output/det_ablation"))
    p.add_argument("--data-root", type=Path, default=Path("datasets/embedded_shapes"))
    p.add_argument("--teacher-dir", type=Path, default=Path("output/demo/teacher"),
                   help="the demo's cached teacher is reused when its config and data match")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    args = p.parse_args(argv)

    data_config = SyntheticConfig()
    data = embedded.prepare_data(args.data_root, data_config)
    size = embedded.size_opts(data_config.image_size)
    teacher = embedded.train_teacher(args.teacher_dir, data, opts=size)
    jobs = {}
    for group in args.groups:
        for name, (config, opts) in GROUPS[group].items():
            for seed in args.seeds:
                # The default setting appears in several groups; it is trained once.
                run_dir = _variant_dir(args.output, config, opts) / f"seed{seed}"
                extra = [] if config == "student.yaml" else teacher.student_opts()
                jobs.setdefault(run_dir, embedded.Job(name, embedded.CONFIG_DIR / config, run_dir, seed, args.split,
                                                      tuple(size + list(opts) + extra)))
    print(f"{len(jobs)} runs on {args.split}, {args.jobs} at a time", flush=True)
    done = dict(zip(jobs, embedded.run_jobs(list(jobs.values()), args.data_root, data_config, args.jobs)))
    for group in args.groups:
        rows = []
        for name, (config, opts) in GROUPS[group].items():
            results = [done[_variant_dir(args.output, config, opts) / f"seed{s}"] for s in args.seeds]
            rows.append({"variant": name, **{k: fmt_mean_std([getattr(r, k) for r in results]) for k in ("AP", "AP50", "AP75")},
                         "seeds": " ".join(map(str, args.seeds))})
        notes = (f"COCO AP on the embedded shapes {args.split} split, mean ± std over seeds {args.seeds}. "
                 f"Command: python benchmarks/det_ablation.py --groups {group} --split {args.split} "
                 f"--seeds {' '.join(map(str, args.seeds))}")
        print(write_markdown(args.output / f"{group}_{args.split}.md", f"Detection ablation: {group}", COLUMNS, rows, notes))
        write_csv(args.output / f"{group}_{args.split}.csv", COLUMNS, rows)


if __name__ == "__main__":
    main()
