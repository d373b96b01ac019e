"""DDP on the CPU (gloo): a 2-process run's all-reduced metrics equal single-process evaluation of the
same weights on the same data, and the meters average over ranks exactly."""
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cls_fixtures import fashion_dir, tiny_cfg
from conftest import REPO
from topkd_det.classification.checkpoint import load_file
from topkd_det.classification.engine import Env, Meters, Trainer
from topkd_det.classification.models import build_model


def _two_process_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_two_process_run_matches_single_process_evaluation(tmp_path):
    data = fashion_dir(tmp_path, n_train=100, n_test=41)  # odd sizes: shards of unequal length
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model("fmnist_teacher", 10).state_dict()}, teacher)
    _, path = tiny_cfg(tmp_path, data, check_files=False,
                       DISTILL={"METHOD": "topkd", "WARMUP": 1.0, "TOPKD": {"K": 3, "GATHER": True}},
                       MODEL={"TEACHER": "fmnist_teacher", "TEACHER_WEIGHTS": str(teacher)})
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_cls.py"), "--num-procs", "2", "--config-file", str(path),
         "OUTPUT_DIR", str(out)],
        cwd=tmp_path, env=_two_process_env(), capture_output=True, text=True, timeout=1800,  # a hang guard only
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    epoch = [r for r in lines if r["type"] == "epoch"][-1]  # metrics of the weights in last.pth
    teacher_line = next(r for r in lines if r["type"] == "teacher")
    assert {"train/loss_con", "train/loss_tdl", "train/loss_ce"} <= set(epoch)

    # The same weights evaluated in this single process, over the whole of each split.
    cfg, _ = tiny_cfg(tmp_path, data, "MODEL.WEIGHTS", str(out / "last.pth"), name="single",
                      DISTILL={"METHOD": "topkd", "WARMUP": 1.0, "TOPKD": {"K": 3}},
                      MODEL={"TEACHER": "fmnist_teacher", "TEACHER_WEIGHTS": str(teacher)})
    trainer = Trainer(cfg, Env(0, 1, torch.device("cpu")))
    single = trainer.evaluate_all(trainer.student)
    single_teacher = trainer.evaluate_all(trainer.teacher)
    for key in ("val/top1", "val/top5", "val/loss", "test/top1", "test/top5", "test/loss"):
        assert abs(epoch[key] - single[key]) < 1e-4, key
        assert abs(teacher_line[key] - single_teacher[key]) < 1e-4, key
    assert load_file(str(out / "last.pth"))["world_size"] == 2


def _meters_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    meters = Meters()
    # rank 0: 3 samples with mean 1, then 1 sample of 5; rank 1: 4 samples with mean 10, and a term
    # ('loss_skipped') only it has, as when a rank skips a non-finite batch.
    if rank == 0:
        meters.add(3, loss=torch.tensor(1.0))
        meters.add(1, loss=torch.tensor(5.0))
    else:
        meters.add(4, loss=torch.tensor(10.0), loss_skipped=torch.tensor(0.0))
    reduced = meters.reduce(Env(rank, world, torch.device("cpu")))
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(reduced, f)
    dist.destroy_process_group()


def test_meters_all_reduce_equals_single_process_average(tmp_path):
    out = tmp_path / "reduced.json"
    mp.spawn(_meters_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    reduced = json.loads(out.read_text())
    single = Meters()
    for n, value in ((3, 1.0), (1, 5.0), (4, 10.0)):
        single.add(n, loss=torch.tensor(value))
    assert reduced["loss"] == single.reduce(Env(0, 1, torch.device("cpu")))["loss"] == (3 + 5 + 40) / 8
    assert reduced["loss_skipped"] == 0.0


# --- resume and a seed sweep in two processes ----------------------------------------------------------
def _two_process(tool: str, *args, launcher=("--num-procs", "2")):
    cmd = [sys.executable, str(REPO / "tools" / tool), *launcher, *map(str, args)]
    if not launcher:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "tools" / tool), *map(str, args)]
    proc = subprocess.run(cmd, env=_two_process_env(), capture_output=True, text=True, timeout=1800)  # hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]


def _student(path):
    return load_file(str(path))["model"]


def test_two_process_resume_and_seed_sweep_end_bitwise_as_uninterrupted_runs(tmp_path):
    data = fashion_dir(tmp_path, n_train=100, n_test=41)
    _, path = tiny_cfg(tmp_path, data, check_files=False, name="whole")
    _two_process("train_cls.py", "--config-file", path)
    whole = _student(tmp_path / "whole" / "last.pth")

    # Killed after its first epoch: the run stopped at SOLVER.EPOCHS 1, then resumed to 2.
    _two_process("train_cls.py", "--config-file", path, "SOLVER.EPOCHS", 1, "OUTPUT_DIR", tmp_path / "cut")
    _two_process("train_cls.py", "--config-file", path, "--resume", "OUTPUT_DIR", tmp_path / "cut")
    resumed = _student(tmp_path / "cut" / "last.pth")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    # tools/multiseed.py under torchrun: its seed 0 is the run above, its seed 1 another one.
    _two_process("multiseed.py", "--config-file", path, "--seeds", 0, 1, "OUTPUT_DIR", tmp_path / "sweep",
                 launcher=())
    seed0, seed1 = (_student(tmp_path / "sweep" / f"seed{s}" / "last.pth") for s in (0, 1))
    assert all(torch.equal(whole[k], seed0[k]) for k in whole)
    assert not all(torch.equal(whole[k], seed1[k]) for k in whole)
    table = (tmp_path / "sweep" / "multiseed.md").read_text()
    assert "| 0 1 |" in table and table.count("±") >= 2
