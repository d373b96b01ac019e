"""benchmarks/bench_fast_cifar.py (the GPU measurement of the fast path) runs end to end on the CPU at tiny
sizes and writes every table; its generated data has the class structure it claims."""
import importlib.util
import os
import re
import subprocess
import sys

import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_fast_cifar.py"


def test_tiny_run_writes_every_section(tmp_path):
    out = tmp_path / "fast.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--pairs", "resnet32x4_resnet8x4",
                           "--methods", "kd", "topkd", "--seeds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    number = r"[0-9.,]+"
    for path in ("never", "always"):
        assert re.search(rf"\| resnet32x4_resnet8x4 \| {path} \| {number} \| {number} \| {number} \|", text), path
        for method in ("kd", "topkd"):
            assert re.search(rf"\| resnet32x4_resnet8x4 \| {method} \| {path} \|( {number} \|){{4}} n/a \| {number} \|",
                             text), (method, path)
    assert re.search(rf"\| seed 1 \| {number} \|", text) and re.search(rf"\| all \(GPU util n/a %\) \| {number} \|", text)


def test_generated_classes_are_separable_within_their_group_only_in_part():
    spec = importlib.util.spec_from_file_location("bench_fast_cifar", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, y = bench.learnable_cifar(2000, 0)
    test_x, test_y = bench.learnable_cifar(500, 1)
    assert x.dtype == torch.uint8 and x.shape == (2000, 3, 32, 32) and int(y.max()) < 100
    means = torch.stack([x[y == c].float().mean(0).flatten() for c in range(100)])
    guess = torch.cdist(test_x.float().flatten(1), means).argmin(1)
    assert 0.15 < (guess == test_y).float().mean() < 0.7  # classes: learnable, not trivial
    assert ((guess // 5) == (test_y // 5)).float().mean() > 0.9  # groups: easy
