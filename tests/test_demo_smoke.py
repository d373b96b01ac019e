"""`make demo` in miniature: the same stages and outputs, at tiny sizes and a few iterations."""
import csv
import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1"]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_tool", REPO / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    demo = _demo()
    out = tmp_path / "demo"
    argv = ["--output", str(out), "--data-root", str(tmp_path / "data"), "--num-train", "8", "--num-eval", "4",
            "--image-size", "64", *TINY]
    table = demo.main(argv)
    for row in ("teacher", "student alone", "KD", "DKD", "TopKD"):
        assert f"| {row}" in table
    assert (out / "results.png").stat().st_size > 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows][1:] == ["student alone", "KD", "DKD", "TopKD"]
    assert all(0.0 <= float(r["AP"]) <= 100.0 for r in rows)
    weights = [out / row / "seed0" / "model_final.pth" for row in ("student", "kd", "dkd", "topkd")]
    weights.append(out / "teacher" / "model_final.pth")
    stamps = [os.path.getmtime(w) for w in weights]
    demo.main(argv)  # a second run reuses the teacher and every finished student
    assert [os.path.getmtime(w) for w in weights] == stamps
