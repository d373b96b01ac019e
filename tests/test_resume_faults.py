"""Faults around checkpoints and resume, in both halves: a kill while a checkpoint is written, damaged
checkpoints, a resume under another config (refused, or accepted and recorded with the flag), and a
detection resume that continues the data stream."""
import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

from cls_fixtures import fashion_dir, tiny_cfg
from conftest import load_tool
from run_fixtures import StepCounter, copy_run, det_config, truncated_copy
from topkd_det.classification.config import load_cls_cfg
from topkd_det.classification.engine import Trainer
from topkd_det.detection.checkpoint import AtomicCheckpointer, CheckpointError, newest_readable_checkpoint
from topkd_det.detection.meta_arch import DistillRCNN
from topkd_det.files import TMP_INFIX
from topkd_det.resume_rules import ResumeRefused

REPO = Path(__file__).resolve().parents[1]
train_net = load_tool("train_net")


# --- classification ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return fashion_dir(tmp_path_factory.mktemp("cls_fault_data"))


def _cls_lines(out: Path, kind: str):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_cls_resume_refuses_another_config_and_accepts_it_with_the_flag(tmp_path, fashion, monkeypatch):
    cfg, path = tiny_cfg(tmp_path, fashion, "SOLVER.EPOCHS", 1)
    Trainer(cfg).train()
    out = Path(cfg.OUTPUT_DIR)
    steps = StepCounter(monkeypatch)

    changed = load_cls_cfg(str(path), ["SOLVER.EPOCHS", "2", "DISTILL.CE_WEIGHT", "0.5", "SEED", "3"])
    with pytest.raises(ResumeRefused) as refused:
        Trainer(changed).train(resume=True)
    message = str(refused.value)
    assert "DISTILL.CE_WEIGHT: 1.0 -> 0.5" in message and "SEED: 0 -> 3" in message
    assert "SOLVER.EPOCHS" not in message  # a longer schedule alone is not refused
    assert "--allow-config-change" in message and str(out / "last.pth") in message
    assert steps.count == 0

    results = Trainer(changed).train(resume=True, allow_config_change=True)
    assert steps.count > 0 and results["last"]["epoch"] == 2
    record = _cls_lines(out, "config_change")[-1]
    assert record["epoch"] == 1
    assert record["changes"]["DISTILL.CE_WEIGHT"] == [1.0, 0.5] and record["changes"]["SEED"] == [0, 3]
    assert json.loads((out / "results.json").read_text())["config_changes"][-1]["changes"]["SEED"] == [0, 3]


def test_cls_resume_accepts_a_longer_schedule_and_refuses_one_shorter_than_done(tmp_path, fashion, monkeypatch):
    cfg, path = tiny_cfg(tmp_path, fashion, "SOLVER.EPOCHS", 2)
    Trainer(cfg).train()
    steps = StepCounter(monkeypatch)
    with pytest.raises(ResumeRefused, match="already done 2 epochs, so SOLVER.EPOCHS 1 leaves nothing to train"):
        Trainer(load_cls_cfg(str(path), ["SOLVER.EPOCHS", "1"])).train(resume=True)
    assert steps.count == 0
    longer = Trainer(load_cls_cfg(str(path), ["SOLVER.EPOCHS", "3"])).train(resume=True)
    assert longer["last"]["epoch"] == 3 and steps.count > 0


def test_cls_resume_refuses_a_retrained_teacher_at_the_same_path(tmp_path, fashion):
    from topkd_det.classification.models import build_model

    teacher = tmp_path / "teacher.pth"
    torch.save(build_model("fmnist_teacher", 10).state_dict(), teacher)
    opts = ["DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", teacher,
            "SOLVER.EPOCHS", 1, "TEST.EVAL_TEACHER", "False"]
    cfg, path = tiny_cfg(tmp_path, fashion, *opts)
    Trainer(cfg).train()
    torch.manual_seed(1)
    torch.save(build_model("fmnist_teacher", 10).state_dict(), teacher)  # same path, other weights
    with pytest.raises(ResumeRefused, match=r"MODEL.TEACHER_WEIGHTS \(sha256\)"):
        Trainer(load_cls_cfg(str(path), ["SOLVER.EPOCHS", "2"])).train(resume=True)


def test_cls_damaged_last_checkpoint_falls_back_and_orphans_are_removed(tmp_path, fashion, caplog):
    cfg, path = tiny_cfg(tmp_path, fashion, "SOLVER.EPOCHS", 2)
    Trainer(cfg).train()
    out = Path(cfg.OUTPUT_DIR)
    truncated_copy(out / "last.pth", out / "last.pth")
    orphan = out / f"last.pth{TMP_INFIX}4242"
    orphan.write_bytes(b"half a checkpoint")
    trainer = Trainer(load_cls_cfg(str(path), ["SOLVER.EPOCHS", "3"]))
    assert not orphan.exists()
    assert trainer.train(resume=True)["last"]["epoch"] == 3
    assert f"checkpoint {out / 'last.pth'} is truncated" in caplog.text
    assert f"resuming from {out / 'ckpt_epoch_2.pth'} instead" in caplog.text


def test_fashion_mnist_configs_write_to_distinct_folders():
    configs = sorted((REPO / "configs" / "fashion_mnist").glob("*.yaml"))
    folders = {load_cls_cfg(str(c), check_files=False).OUTPUT_DIR for c in configs}
    assert len(folders) == len(configs)
    assert load_cls_cfg(str(REPO / "configs/fashion_mnist/kd.yaml"), check_files=False).OUTPUT_DIR == \
        os.path.join("output", "fashion_mnist", "kd")


# --- detection -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def recorded_batches():
    """{iteration: image file names} of every training step of DistillRCNN inside the block."""
    from detectron2.utils.events import get_event_storage

    seen = {}
    forward = DistillRCNN.forward

    def recording(self, batched_inputs):
        if self.training:
            seen[get_event_storage().iter] = [os.path.basename(x["file_name"]) for x in batched_inputs]
        return forward(self, batched_inputs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DistillRCNN, "forward", recording)
        yield seen


@pytest.fixture(scope="module")
def det(tmp_path_factory, det_run_names):
    """A TopKD config and an uninterrupted 3-iteration run with the batches it trained on."""
    tmp = tmp_path_factory.mktemp("det_fault")
    config = det_config(tmp, det_run_names)
    with recorded_batches() as batches:
        _train(config, tmp / "whole")
    return {"tmp": tmp, "config": config, "whole": tmp / "whole", "batches": batches}


def _train(config, out, *flags, opts=()):
    train_net.cli(["--config-file", str(config), *flags, "OUTPUT_DIR", str(out), *opts])


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def test_det_kill_during_checkpoint_write_then_resume_ends_bitwise_equal(det, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        if str(f).startswith(str(out / "model_0000001.pth")):
            save(obj, f, *args, **kwargs)
            truncated_copy(f, f)  # the process dies halfway through writing the file
            raise Killed
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(Killed):
        _train(det["config"], out)
    monkeypatch.setattr(torch, "save", save)
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (out / "model_0000001.pth").exists() and not (out / "model_final.pth").exists()
    assert len(list(out.glob(f"*{TMP_INFIX}*"))) == 1  # the half-written file, under its temporary name

    with recorded_batches() as batches:
        _train(det["config"], out, "--resume")
    assert not list(out.glob(f"*{TMP_INFIX}*"))
    # The resumed run trained iterations 1 and 2 on the images the uninterrupted run used there.
    assert sorted(batches) == [1, 2]
    assert batches == {i: det["batches"][i] for i in (1, 2)}
    assert batches[1] != det["batches"][0]  # not the start of the stream again
    whole, resumed = _weights(det["whole"] / "model_final.pth"), _weights(out / "model_final.pth")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_det_resume_refuses_another_config_and_accepts_it_with_the_flag(det, tmp_path, monkeypatch, capsys):
    out = copy_run(det["whole"], tmp_path / "run")
    steps = StepCounter(monkeypatch)
    changed = ["MODEL.DISTILL.TOPKD.TEMPERATURE", "0.5", "SOLVER.MAX_ITER", "4"]
    with pytest.raises(SystemExit) as exit_info:
        _train(det["config"], out, "--resume", opts=changed)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("error: cannot resume from")
    assert "MODEL.DISTILL.TOPKD.TEMPERATURE: 0.2 -> 0.5" in err and "SOLVER.MAX_ITER" not in err
    assert steps.count == 0

    _train(det["config"], out, "--resume", "--allow-config-change", opts=changed)
    assert steps.count == 1  # iteration 3 only
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    record = [r for r in lines if "config_changes" in r][-1]
    assert record == {"iteration": 2, "config_changes": {"MODEL.DISTILL.TOPKD.TEMPERATURE": [0.2, 0.5],
                                                         "SOLVER.MAX_ITER": [3, 4]}}
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3 and final["config_changes"] == [record]


def test_det_damaged_final_checkpoint_is_not_a_finished_run(det, tmp_path, monkeypatch, caplog):
    out = copy_run(det["whole"], tmp_path / "run")
    truncated_copy(out / "model_final.pth", out / "model_final.pth")
    steps = StepCounter(monkeypatch)
    _train(det["config"], out, "--resume")
    assert f"checkpoint {out / 'model_final.pth'} is truncated" in caplog.text
    assert f"resuming from {out / 'model_0000002.pth'} instead" in caplog.text
    assert steps.count == 0  # model_0000002 is the last iteration: nothing to train, only to write
    rewritten, last = _weights(out / "model_final.pth"), _weights(out / "model_0000002.pth")
    assert all(torch.equal(rewritten[k], last[k]) for k in last)
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def test_det_every_checkpoint_damaged_is_an_error(det, tmp_path):
    out = copy_run(det["whole"], tmp_path / "run")
    for path in out.glob("model_*.pth"):
        truncated_copy(path, path)
    with pytest.raises(CheckpointError, match="model_final.pth is truncated.*no readable checkpoint to resume from"):
        newest_readable_checkpoint(str(out))


def test_atomic_checkpointer_leaves_the_previous_checkpoint_on_a_failed_write(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000001")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert not list(tmp_path.glob(f"*{TMP_INFIX}*"))  # a failure (not a kill) cleans up after itself
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")


def test_det_resume_onto_another_architecture_is_refused_even_with_the_flag(det, tmp_path, monkeypatch, capsys):
    out = copy_run(det["whole"], tmp_path / "run")
    steps = StepCounter(monkeypatch)
    with pytest.raises(SystemExit):
        _train(det["config"], out, "--resume", "--allow-config-change", opts=["MODEL.ROI_BOX_HEAD.FC_DIM", "32"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {out / 'model_final.pth'} does not fit the model of this config" in err
    assert "6 shape mismatches (file vs model): roi_heads.box_head.fc1.weight (64, 1568) vs (32, 1568)" in err
    assert steps.count == 0


def test_demo_progress_never_counts_past_a_run_length(tmp_path):
    from topkd_det.comparison.detection import iterations_done

    (tmp_path / "metrics.json").write_text('{"iteration": 399, "loss": 1.0}\n')  # an earlier, longer run
    assert iterations_done(tmp_path, 2) == 2
    assert iterations_done(tmp_path, 1000) == 400
    assert iterations_done(tmp_path / "absent", 10) == 0
