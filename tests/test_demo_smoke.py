"""`make demo` in miniature: the same stages and outputs, at tiny sizes and a few iterations."""
import csv
import os
from pathlib import Path

from conftest import load_tool

TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1"]


def test_demo_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    demo = load_tool("demo")
    out = tmp_path / "demo"
    argv = ["--output", str(out), "--data-root", str(tmp_path / "data"), "--num-train", "8", "--num-eval", "4",
            "--image-size", "64", "--jobs", "2", *TINY]
    table = demo.main(argv)
    for row in ("| teacher (MV2-FPN, ImageNet init) | reference |", "| student alone | none |", "| KD | kd |", "| DKD | dkd |",
                "| TopKD | topkd |", "| KD − student alone |", "| TopKD − DKD |", "| TopKD − KD |"):
        assert row in table
    assert "needs ≥ 2 seeds" in table  # one seed: no interval, and the verdict says so
    for name in ("results.png", "comparisons.csv", "teacher/model_final.pth", "teacher/config.yaml"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        runs = list(csv.DictReader(f))
    assert [r["row"] for r in runs] == ["student alone", "KD", "DKD", "TopKD"]
    assert all(0.0 <= float(r["AP"]) <= 100.0 and r["selection"] == "final model" for r in runs)
    weights = [Path(r["output_dir"]) / "model_final.pth" for r in runs] + [out / "teacher" / "model_final.pth"]
    stamps = [os.path.getmtime(w) for w in weights]
    again = demo.main(argv)  # a second run reuses the teacher and every finished student
    assert [os.path.getmtime(w) for w in weights] == stamps
    assert "(0 of 4 runs trained by it" in again
