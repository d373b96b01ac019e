"""The paper's Table 7 / Fig. 5 / Fig. 6 analyses on the Fashion-MNIST benchmark's students: runs
tools/transfer_probe.py (to scikit-learn's digits), tools/tsne.py and tools/logit_correlation.py on the
checkpoints benchmarks/cls_accuracy.py wrote, then tabulates mean ± std over seeds.

    python benchmarks/cls_accuracy.py --methods none kd dkd gdkd gdkd3 topkd     # trains the students
    python benchmarks/cls_analysis.py                                            # then this

Per seed, t-SNE and the correlation heat-maps put every method side by side in one picture
(OUTPUT_DIR/seed<k>/); --images-dir receives seed 0's pictures. The student alone ("none") is compared
with the benchmark's teacher as well.
"""
import csv
import importlib.util
import json
import os
import shutil
import sys
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from topkd_det.cli import documented_parser  # noqa: E402
from topkd_det.reporting import fmt_mean_std, write_csv, write_markdown  # noqa: E402

METHODS = ("none", "kd", "dkd", "gdkd", "gdkd3", "topkd")
NAMES = {"none": "student alone", "kd": "KD", "dkd": "DKD", "gdkd": "GDKD", "gdkd3": "GDKD3", "topkd": "TopKD"}
COLUMNS = ("digits probe top-1", "t-SNE silhouette", "t-SNE 5-NN top-1", "logit diff, mean_logit",
           "logit diff, pearson")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path: str) -> List[Dict]:
    with open(path) as f:
        return json.load(f)


def checkpoints(bench_dir: str, methods, seeds) -> Dict:
    """{(method, seed): the student's last.pth}, found through the benchmark's results.csv (one line per run)."""
    try:
        with open(os.path.join(bench_dir, "results.csv"), newline="") as f:
            runs = {(r["row"], int(r["seed"])): r["output_dir"] for r in csv.DictReader(f)}
    except OSError:
        runs = {}
    return {(m, s): os.path.join(runs.get((NAMES[m], s), os.path.join(bench_dir, f"<no {NAMES[m]} seed {s}>")),
                                 "last.pth") for m in methods for s in seeds}


def main(argv=None) -> None:
    parser = documented_parser(__doc__, "docs/results.md", "docs/analyses.md")
    parser.add_argument("--bench-dir", default="output/cls_bench", help="benchmarks/cls_accuracy.py's --output-dir")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="output/cls_analysis")
    parser.add_argument("--images-dir", default="", help="copy seed 0's PNGs here (e.g. docs/img)")
    parser.add_argument("--tsne-samples", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true", help="keep a tool's results already in OUTPUT_DIR/seed<k>/")
    args = parser.parse_args(argv)
    teacher = os.path.join(args.bench_dir, "teacher", "last.pth")
    ckpt = checkpoints(args.bench_dir, args.methods, args.seeds)
    missing = [p for p in [teacher, *ckpt.values()] if not os.path.isfile(p)]
    if missing:
        sys.exit(f"error: missing checkpoints (run benchmarks/cls_accuracy.py first): {', '.join(missing)}")
    probe, tsne, corr = load_tool("transfer_probe"), load_tool("tsne"), load_tool("logit_correlation")
    values: Dict[str, Dict[str, List[float]]] = {m: {c: [] for c in COLUMNS} for m in args.methods}
    labels = [NAMES[m] for m in args.methods]
    for seed in args.seeds:
        out = os.path.join(args.output_dir, f"seed{seed}")
        pearson = os.path.join(out, "pearson")
        paths = [ckpt[(m, seed)] for m in args.methods]
        runs = ((probe, ["--target", "digits", "--output-dir", out], os.path.join(out, "transfer_digits.json")),
                (tsne, ["--max-samples", str(args.tsne_samples), "--output-dir", out], os.path.join(out, "tsne.json")),
                (corr, ["--teacher", teacher, "--output-dir", out], os.path.join(out, "logit_correlation.json")),
                (corr, ["--teacher", teacher, "--matrix", "pearson", "--output-dir", pearson],
                 os.path.join(pearson, "logit_correlation.json")))
        for tool, options, result in runs:
            if not (args.reuse and os.path.isfile(result)):
                tool.main([*options, "--labels", *labels, "--", *paths])
        results = [_read(result) for _, _, result in runs]
        for method, p, t, c, r in zip(args.methods, *results):
            for column, value in zip(COLUMNS, (p["test_top1"], t["silhouette"], t["knn5_top1"], c["mean"], r["mean"])):
                values[method][column].append(value)
    rows = [{"method": NAMES[m], **{c: fmt_mean_std(values[m][c], 4 if "silhouette" in c or "diff" in c else 2)
                                    for c in COLUMNS}, "seeds": " ".join(map(str, args.seeds))} for m in args.methods]
    columns = ["method", *COLUMNS, "seeds"]
    notes = ("Fashion-MNIST students of benchmarks/cls_accuracy.py; digits probe: scikit-learn's 8x8 digits resized "
             "to 28 px, 50/50 stratified split, linear classifier on frozen penultimate features; t-SNE: "
             f"{args.tsne_samples} test images; logit diff: mean of |M_s - M_t| / max_diff (diagonal 0) over all 10k "
             "test images against the benchmark's teacher, M the mean-logit matrix (max_diff 3) or the Pearson "
             f"correlation of class logits (max_diff 2). Command: python benchmarks/cls_analysis.py {' '.join(sys.argv[1:])}")
    print(write_markdown(os.path.join(args.output_dir, "results.md"), "Fashion-MNIST analyses", columns, rows, notes))
    write_csv(os.path.join(args.output_dir, "results.csv"), columns, rows)
    if args.images_dir:
        os.makedirs(args.images_dir, exist_ok=True)
        first = os.path.join(args.output_dir, f"seed{args.seeds[0]}")
        shutil.copy(os.path.join(first, "tsne.png"), os.path.join(args.images_dir, "fmnist_tsne.png"))
        shutil.copy(os.path.join(first, "logit_correlation.png"),
                    os.path.join(args.images_dir, "fmnist_logit_correlation.png"))


if __name__ == "__main__":
    main()
