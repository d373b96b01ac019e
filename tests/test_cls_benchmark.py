"""The Fashion-MNIST benchmark's bookkeeping: budgets, cached runs and its tables and plot (no training)."""
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


def test_every_method_config_builds_with_the_benchmark_budget():
    bench = _bench()
    for method in bench.METHODS:
        opts = bench.budget_opts(3, 10000, 1, "out")
        if method != "none":
            opts += ["MODEL.TEACHER_WEIGHTS", "t.pth"]
        cfg = load_cls_cfg(str(REPO / "configs" / "fashion_mnist" / f"{method}.yaml"), opts, check_files=False)
        assert (cfg.SOLVER.EPOCHS, cfg.DATASET.TRAIN_SUBSET, cfg.SEED) == (3, 10000, 1)


def _result(seed, test, val):
    record = {"epoch": 3, "test/top1": test, "val/top1": val}
    return {"seed": seed, "best": record, "last": record}


def test_tables_and_plot(tmp_path):
    bench = _bench()
    args = bench.argparse.Namespace(output_dir=str(tmp_path), epochs=3, train_subset=10000, teacher_epochs=8,
                                    seeds=[0, 1], opts=["DISTILL.TOPKD.TEMPERATURE", "0.5"])
    runs = {"none": [_result(0, 80.0, 81.0), _result(1, 82.0, 83.0)], "topkd": [_result(0, 84.0, 85.0)] * 2}
    bench.write_outputs(args, _result(0, 90.0, 91.0), runs)
    table = (tmp_path / "results.md").read_text()
    assert "| none | 81.00 ± 1.41 | 81.00 ± 1.41 | 82.00 ± 1.41 | 82.00 ± 1.41 | 0 1 |" in table
    assert "DISTILL.TOPKD.TEMPERATURE 0.5" in table and "teacher (fmnist_teacher)" in table
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "method,seed,test top-1 (best),test top-1 (last),val top-1 (best),val top-1 (last)"
    assert len(rows) == 5
    assert (tmp_path / "results.png").stat().st_size > 1000


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
