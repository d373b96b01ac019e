"""benchmarks/gpu_suite.sh end to end on the CPU at tiny sizes: every step runs and writes its table
(the GPU machine gets one try per lease, so the script is checked here first)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("det_step", "losses", "cls_throughput")


def _rows(table: Path, first_cell: str):
    return [line for line in table.read_text().splitlines() if line.startswith(f"| {first_cell}")]


def test_suite_runs_every_step_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "suite"
    env = dict(os.environ, PY=sys.executable)
    # --no-limits: the steps' time limits are for a GPU lease; here they would make the verdict depend on
    # how busy the machine is. The timeout only guards against a hang.
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--tiny",
                           "--no-limits", "--out", str(out), "--only", ",".join(STEPS)], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    for step in STEPS:
        assert f"| {step} | ok |" in summary, summary
    assert "losses_compiled" not in summary and "cuda_tests" not in summary
    assert "torch" in (out / "env.txt").read_text()
    # 2 teacher dtypes x 4 rows, the R101 -> R18 pair sampling 512 ROIs per image as on COCO
    det = _rows(out / "det_step.md", "Faster R-CNN")
    assert len(det) == 8 and all(row.rstrip().endswith("| 512 |") for row in det)
    losses = (out / "losses.md").read_text()
    for name in ("KD", "DKD", "DKD+LS", "TTM", "WTTM", "GDKD", "GDKD3", "TopKD", "DKD+TSM+TDL"):
        assert f"| (256, 81) | {name} |" in losses
    cls = (out / "cls_throughput.md").read_text()
    assert len(_rows(out / "cls_throughput.md", "kd")) == 2 + 1  # fp32 and bf16 on CIFAR, bf16 on ImageNet
    assert len(_rows(out / "cls_throughput.md", "topkd")) == 3 and "projected 240 epochs" in cls


def test_unknown_argument_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--devise", "cpu"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --devise" in proc.stderr
