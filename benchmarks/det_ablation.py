#!/usr/bin/env python
"""Ablation of TopKD's knobs on the embedded detection benchmark (choose on val, report test).

    python benchmarks/det_ablation.py --groups modes temperature --seeds 0 1 2
    python benchmarks/det_ablation.py --groups final --split test    # KD/DKD/TopKD vs the student alone

Every variant trains the demo's student (configs/embedded/topkd.yaml plus the variant's overrides,
see benchmarks/ablation_groups.py) with the embedded teacher (trained once, then reused), on the same
budget and seeds, and is scored with COCO AP on --split. Runs go through the comparison tool's runner
(topkd_det.comparison): cached by config, so an interrupted ablation continues and groups share their
default runs. Writes <output>/<group>_<split>.md and .csv (mean ± std over seeds).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_groups import DETECTION_GROUPS, GROUPS, effective, k_group, prefixed, slug  # noqa: E402

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.comparison import detection  # noqa: E402
from topkd_det.comparison.runner import run_all  # noqa: E402
from topkd_det.comparison.runs import Row  # noqa: E402
from topkd_det.data.synthetic_coco import SyntheticConfig  # noqa: E402
from topkd_det.detection import embedded  # noqa: E402
from topkd_det.detection.config import load_config  # noqa: E402
from topkd_det.reporting import fmt_mean_std, write_csv, write_markdown  # noqa: E402

PREFIX = "MODEL.DISTILL."
ALL = {**GROUPS, **DETECTION_GROUPS, "k": k_group((1, 5, 11))}  # C+1 = 25 allows K <= 11
# Groups of other configs than topkd.yaml: {name: (config, overrides relative to MODEL.DISTILL.)}.
# loss_scale asks whether TopKD's edge over KD/DKD is just the size of its loss terms (con + tdl ~ 8
# against KD's ~0.2), with the baselines at 4x their weight.
SCALED_BASELINES = {"loss_scale": {"KD, weight 4": ("kd.yaml", ["KD.WEIGHT", 4.0]),
                                   "DKD, weight 4": ("dkd.yaml", ["DKD.WEIGHT", 4.0])}}
OTHER_CONFIGS = {"final": {"student alone": ("student.yaml", []), "KD": ("kd.yaml", []), "DKD": ("dkd.yaml", []),
                           "TopKD": ("topkd.yaml", [])},
                 **SCALED_BASELINES}
COLUMNS = ["variant", "AP", "AP50", "AP75", "seeds"]


def main(argv=None):
    p = documented_parser(__doc__, "docs/ablations.md")
    p.add_argument("--groups", nargs="+", default=list(ALL), choices=[*ALL, *OTHER_CONFIGS])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--output", type=Path, default=Path("output/det_ablation"))
    p.add_argument("--data-root", type=Path, default=Path("datasets/embedded_shapes"))
    p.add_argument("--teacher-root", type=Path, default=Path("output/det_ablation"),
                   help="the teacher trains in TEACHER_ROOT/teacher/seed0-<key>, reused while its config and "
                        "data match")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    args = p.parse_args(argv)

    data_config = SyntheticConfig()
    data = embedded.prepare_data(args.data_root, data_config)
    size = embedded.size_opts(data_config.image_size)
    teacher = embedded.train_teacher(args.teacher_root, data, opts=size)
    base = load_config(embedded.CONFIG_DIR / "topkd.yaml")

    variants = {}  # group -> {name: (config file, run directory stem, overrides)}
    for group in args.groups:
        if group in OTHER_CONFIGS:
            variants[group] = {}
            for name, (cfg, overrides) in OTHER_CONFIGS[group].items():
                changed = prefixed(overrides, PREFIX)
                variants[group][name] = (cfg, cfg[:-5] + ("_" + slug(changed) if changed else ""), changed)
            continue
        variants[group] = {}
        for name, overrides in ALL[group].items():
            changed = effective(prefixed(overrides, PREFIX), base)
            variants[group][name] = ("topkd.yaml", "topkd_" + slug(changed), changed)
    specs = {}
    for group in variants.values():
        for name, (config, stem, overrides) in group.items():
            for seed in args.seeds:
                extra = [] if config == "student.yaml" else teacher.student_opts()
                row = Row(stem, str(embedded.CONFIG_DIR / config),
                          tuple(size + list(overrides) + embedded.data_opts(data, args.split) + extra))
                if (stem, seed) not in specs:
                    specs[stem, seed] = detection.plan(row, seed, args.output / "runs")
    print(f"{len(specs)} runs on {args.split}, {args.jobs} at a time", flush=True)
    done = dict(zip(specs, run_all(list(specs.values()), args.jobs, desc="ablation runs")))

    for group, members in variants.items():
        rows = []
        for name, (_, stem, _) in members.items():
            results = [done[stem, s] for s in args.seeds]
            rows.append({"variant": name, "seeds": " ".join(map(str, args.seeds)),
                         **{k: fmt_mean_std([r.metrics[k] for r in results]) for k in ("AP", "AP50", "AP75")}})
        notes = (f"COCO AP on the embedded shapes {args.split} split, mean ± std over seeds. Command: "
                 f"python benchmarks/det_ablation.py --groups {group} --split {args.split} "
                 f"--seeds {' '.join(map(str, args.seeds))}")
        print(write_markdown(args.output / f"{group}_{args.split}.md", f"Detection ablation: {group}", COLUMNS, rows,
                             notes))
        write_csv(args.output / f"{group}_{args.split}.csv", COLUMNS, rows)


if __name__ == "__main__":
    main()
