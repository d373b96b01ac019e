"""The classification trainer on tiny fixture data: vanilla and distillation runs, logging, checkpoints,
exact resume after a kill, AMP, --eval-only, and the multi-seed runner."""
import json

import pytest
import torch

from cls_fixtures import fashion_dir, killed_after_first_checkpoint_then_resumed, tiny_cfg, trained_teacher
from conftest import load_tool
from topkd_det import rng
from topkd_det.classification.checkpoint import load_file
from topkd_det.classification.engine import Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_dir(tmp_path_factory.mktemp("cls_data"))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, data):
    """A teacher trained by the trainer itself (vanilla mode), as the benchmark does."""
    return trained_teacher(tmp_path_factory.mktemp("teacher"), data)


def _lines(cfg, kind):
    with open(f"{cfg.OUTPUT_DIR}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def test_vanilla_run_logs_checkpoints_and_reports_last_and_best(tmp_path, data):
    cfg, _ = tiny_cfg(tmp_path, data)
    results = Trainer(cfg).train()
    out = tmp_path / "run"
    for name in ("last.pth", "ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "config.yaml", "results.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    epochs = _lines(cfg, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[0]["lr"] == 0.05 and epochs[1]["lr"] == pytest.approx(0.005)  # decay at LR_DECAY_STAGES [1]
    for key in ("train/loss", "train/loss_ce", "train/top1", "train/top5", "val/top1", "val/top5", "test/top1",
                "test/top5", "best/test/top1"):
        assert key in epochs[-1], key
    iters = _lines(cfg, "train_iter")
    assert iters and all("train/loss_ce" in r and "lr" in r for r in iters)
    assert results["last"]["epoch"] == 2 and results["best"]["epoch"] in (1, 2)
    best_val = max(r["val/top1"] for r in epochs)
    assert results["best"]["val/top1"] == best_val  # chosen on the held-out split
    assert json.loads((out / "results.json").read_text())["last"] == results["last"]


@pytest.mark.parametrize("method, opts, terms", [
    ("kd", ["DISTILL.CE_WEIGHT", "0.1", "DISTILL.KD.WEIGHT", "0.9"], {"loss_ce", "loss_kd"}),
    ("topkd", ["DISTILL.TOPKD.K", "3", "DISTILL.WARMUP", "1.0"], {"loss_ce", "loss_con", "loss_tdl"}),
])
def test_distillation_runs_log_every_loss_term(tmp_path, data, teacher_ckpt, method, opts, terms):
    cfg, _ = tiny_cfg(tmp_path, data, "DISTILL.METHOD", method, "MODEL.TEACHER", "fmnist_teacher",
                      "MODEL.TEACHER_WEIGHTS", teacher_ckpt, *opts)
    results = Trainer(cfg).train()
    logged = {k[len("train/"):] for k in _lines(cfg, "epoch")[-1] if k.startswith("train/loss_")}
    assert logged == terms
    assert all(f"train/{t}" in r for r in _lines(cfg, "train_iter") for t in terms)
    teacher = _lines(cfg, "teacher")[0]
    assert "test/top1" in teacher and results["teacher"]["test/top1"] == teacher["test/top1"]
    assert (tmp_path / "run" / "last.pth").is_file()


def test_loss_warmup_ramps_within_epochs(tmp_path, data, teacher_ckpt):
    cfg, _ = tiny_cfg(tmp_path, data, "DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher",
                      "MODEL.TEACHER_WEIGHTS", teacher_ckpt, "DISTILL.WARMUP", "2.0", "SOLVER.EPOCHS", 1)
    trainer = Trainer(cfg)
    seen = []
    forward = trainer.distiller.forward
    trainer.distiller.forward = lambda x, y, progress: seen.append(progress) or forward(x, y, progress)
    trainer.train()
    assert seen == [i / 5 for i in range(5)]  # epoch + iter / iters_per_epoch (80 images, batch 16)


def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path, data, teacher_ckpt, monkeypatch):
    opts = ["DISTILL.METHOD", "topkd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", teacher_ckpt,
            "DISTILL.TOPKD.K", "3", "DISTILL.WARMUP", "1.0", "SOLVER.EPOCHS", 3, "SOLVER.LR_DECAY_STAGES", "[2]"]
    whole_cfg, _ = tiny_cfg(tmp_path, data, *opts, name="whole")
    Trainer(whole_cfg).train()

    cfg, _ = tiny_cfg(tmp_path, data, *opts, name="killed")
    resumed = killed_after_first_checkpoint_then_resumed(cfg, monkeypatch)
    assert resumed["died_after_epochs"] == 1

    whole = load_file(f"{whole_cfg.OUTPUT_DIR}/last.pth")
    final = load_file(f"{cfg.OUTPUT_DIR}/last.pth")
    assert final["epoch"] == 3
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    assert resumed["last"] == json.loads((tmp_path / "whole" / "results.json").read_text())["last"]


def test_resume_without_checkpoint_starts_fresh(tmp_path, data):
    cfg, _ = tiny_cfg(tmp_path, data, "SOLVER.EPOCHS", 1)
    assert Trainer(cfg).train(resume=True)["last"]["epoch"] == 1


def test_bf16_autocast_on_cpu(tmp_path, data, teacher_ckpt):
    cfg, _ = tiny_cfg(tmp_path, data, "AMP.ENABLED", "True", "AMP.DTYPE", "bf16", "SOLVER.EPOCHS", 1,
                      "DISTILL.METHOD", "dkd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", teacher_ckpt)
    results = Trainer(cfg).train()
    line = _lines(cfg, "epoch")[0]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in line.items() if k.startswith("train/loss"))
    assert 0 <= results["last"]["test/top1"] <= 100


def test_cli_train_then_eval_only(tmp_path, data):
    train_cls = load_tool("train_cls")
    _, path = tiny_cfg(tmp_path, data)
    out = tmp_path / "cli"
    results = train_cls.main(["--config-file", str(path), "SOLVER.EPOCHS", "1", "OUTPUT_DIR", str(out)])
    evaluated = train_cls.main(["--config-file", str(path), "--eval-only", "SOLVER.EPOCHS", "1",
                                "OUTPUT_DIR", str(out)])
    assert evaluated["test/top1"] == pytest.approx(results["last"]["test/top1"])
    weights = train_cls.main(["--config-file", str(path), "--eval-only", "MODEL.WEIGHTS", str(out / "last.pth"),
                              "OUTPUT_DIR", str(tmp_path / "elsewhere")])
    assert weights["test/top1"] == pytest.approx(results["last"]["test/top1"])
    with pytest.raises(FileNotFoundError, match="--eval-only needs MODEL.WEIGHTS"):
        train_cls.main(["--config-file", str(path), "--eval-only", "OUTPUT_DIR", str(tmp_path / "empty")])


def test_multiseed_writes_mean_and_std(tmp_path, data):
    multiseed = load_tool("multiseed")
    _, path = tiny_cfg(tmp_path, data, "SOLVER.EPOCHS", 1)
    results = multiseed.main(["--config-file", str(path), "--seeds", "0", "1", "SOLVER.EPOCHS", "1"])
    assert [r["seed"] for r in results] == [0, 1]
    assert (tmp_path / "run" / "seed0" / "results.json").is_file()
    table = (tmp_path / "run" / "multiseed.md").read_text()
    assert "best test top-1" in table and "last test top-1" in table and "±" in table
    csv_text = (tmp_path / "run" / "multiseed.csv").read_text()
    assert csv_text.splitlines()[0].startswith("config,seeds,best test top-1")


def test_gathered_rng_round_trips():
    state = rng.rng_state()
    first = torch.rand(3)
    rng.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
