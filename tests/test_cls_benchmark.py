"""The Fashion-MNIST benchmark's bookkeeping: budgets, rows and the cached teacher (no student training)."""
import importlib.util

import pytest

from cls_fixtures import fashion_dir, tiny_cfg
from conftest import REPO
from topkd_det.classification.config import load_cls_cfg
from topkd_det.classification.engine import Env


def _bench():
    spec = importlib.util.spec_from_file_location("cls_accuracy", REPO / "benchmarks" / "cls_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lr_stages_scale_cifar_decays():
    bench = _bench()
    assert bench.lr_stages(240) == [150, 180, 210]
    assert bench.lr_stages(3) == [2]
    assert bench.lr_stages(1) == [1]


def test_every_row_config_builds_with_the_benchmark_budget():
    bench = _bench()
    rows = bench.student_rows(bench.METHODS, 3, 10000, "t", ["DISTILL.WARMUP", "0.5"])
    assert [r.name for r in rows][-2:] == ["KD+TSM+TDL", "DKD+TSM+TDL"]
    for method, row in zip(bench.METHODS, rows):
        cfg = load_cls_cfg(row.config, list(row.opts), check_files=False)
        assert (cfg.SOLVER.EPOCHS, cfg.DATASET.TRAIN_SUBSET, cfg.SOLVER.LR_DECAY_STAGES) == (3, 10000, [2])
        assert cfg.DISTILL.WARMUP == 0.5 and cfg.DATASET.VAL_SIZE == 5000  # the epoch is chosen on val
        assert cfg.MODEL.TEACHER_WEIGHTS == ("" if method == "none" else "t/last.pth")
    plugins = {r.name: load_cls_cfg(r.config, list(r.opts), check_files=False) for r in rows[-2:]}
    assert plugins["KD+TSM+TDL"].DISTILL.METHOD == "kd" and plugins["DKD+TSM+TDL"].DISTILL.METHOD == "dkd"
    assert all(c.DISTILL.PLUGIN.TSM and c.DISTILL.PLUGIN.TDL and c.DISTILL.TOPKD.K == 3 for c in plugins.values())


def test_cached_run_is_reused_and_a_changed_config_is_refused(tmp_path):
    bench = _bench()
    data = fashion_dir(tmp_path)
    cfg, _ = tiny_cfg(tmp_path, data, "SOLVER.EPOCHS", 1)
    env = Env(0, 1, bench.torch.device("cpu"))
    first = bench.run_cached(cfg, env)
    assert bench.run_cached(cfg, env)["last"] == first["last"]  # finished: read back, not retrained
    changed, _ = tiny_cfg(tmp_path, data, "SOLVER.EPOCHS", 1, "SOLVER.LR", "0.1")
    with pytest.raises(bench.StaleRunError, match="holds a run of a different config"):
        bench.run_cached(changed, env)
