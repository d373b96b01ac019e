"""Evaluation that never misleads, on both tools: the documented sequence (docs/data_checks.md: train, evaluate with the
final weights, resume with a longer schedule) works, because an evaluation writes its config and log
below the run (``inference/``) and a resume does not compare MODEL.WEIGHTS; ``--eval-teacher`` writes
to ``teacher_eval/``; ``--eval-only`` without weights evaluates the run's newest checkpoint, and
refuses weights that leave parameters untrained. And which device ``auto`` means."""
import json
import logging
import uuid

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model

from conftest import REPO, load_tool
from run_fixtures import StepCounter, det_config
from topkd_det.config_io import ConfigError
from topkd_det.data.synthetic_coco import SyntheticConfig, generate
from topkd_det.detection import device
from topkd_det.detection.config import load_config
from topkd_det.detection.datasets import register_synthetic
from topkd_det.detection.lazy_engine import check as lazy_check

pytestmark = pytest.mark.usefixtures("single_thread")
train_net = load_tool("train_net")
lazy_tool = load_tool("lazyconfig_train_net")


def _run(tool, *args):
    return tool.main(tool.parser().parse_args([str(a) for a in args]))


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # Detectron2's log handlers may still point at an earlier test's captured (closed) stderr.
    monkeypatch.setattr(logging, "raiseExceptions", False)


def test_readme_sequence_train_evaluate_resume(det_run_names, tmp_path, monkeypatch, quiet):
    config = det_config(tmp_path, det_run_names, max_iter=3)
    out = tmp_path / "run"
    test = ["DATASETS.TEST", f"('{det_run_names['val']}',)"]
    steps = StepCounter(monkeypatch)
    _run(train_net, "--config-file", config, "OUTPUT_DIR", out, *test)
    assert steps.count == 3
    run_config = (out / "config.yaml").read_text()
    # The run's final weights carry the class names of its data, for a later use as a teacher.
    assert len(torch.load(out / "model_final.pth", weights_only=True)["classes"]) == 24

    final = out / "model_final.pth"
    student = _run(train_net, "--config-file", config, "--eval-only", "OUTPUT_DIR", out, *test, "MODEL.WEIGHTS", final)
    assert (out / "config.yaml").read_text() == run_config  # the run's config is the run's, not the evaluation's
    assert load_config(out / "inference" / "config.yaml").MODEL.WEIGHTS == str(final)
    results = out / "inference" / det_run_names["val"] / "coco_instances_results.json"
    before = results.read_bytes()

    # No weights: the run's newest checkpoint is what is evaluated, with the same numbers (NaN included).
    newest = _run(train_net, "--config-file", config, "--eval-only", "OUTPUT_DIR", out, *test)
    assert json.dumps(newest, sort_keys=True) == json.dumps(student, sort_keys=True)

    teacher = _run(train_net, "--config-file", config, "--eval-teacher", "OUTPUT_DIR", out, *test)
    assert (out / "teacher_eval" / det_run_names["val"] / "coco_instances_results.json").is_file()
    assert results.read_bytes() == before and set(teacher) == {"bbox"}  # the student's results are untouched

    # The documented resume with a longer schedule, from the config file, then from the run's config.yaml
    # with the MODEL.WEIGHTS an evaluation names (a resume loads its checkpoint, not MODEL.WEIGHTS).
    _run(train_net, "--config-file", config, "--resume", "OUTPUT_DIR", out, *test, "SOLVER.MAX_ITER", 4)
    assert steps.count == 4
    _run(train_net, "--config-file", out / "config.yaml", "--resume", "SOLVER.MAX_ITER", 5, "MODEL.WEIGHTS", final)
    assert steps.count == 5


def test_evaluating_weights_that_leave_the_heads_untrained_is_refused(det_run_names, tmp_path, quiet):
    config = det_config(tmp_path, det_run_names, method="none", max_iter=1)
    out = tmp_path / "run"
    _run(train_net, "--config-file", config, "OUTPUT_DIR", out, "SOLVER.STEPS", "()")
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    backbone = tmp_path / "backbone_only.pth"  # what an ImageNet initialisation holds
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, backbone)
    with pytest.raises(ConfigError, match=rf"MODEL.WEIGHTS '{backbone}' holds no weights for \d+ of the model's \d+ "
                                          r"parameters \(proposal_generator.*random initial values"):
        _run(train_net, "--config-file", config, "--eval-only", "OUTPUT_DIR", tmp_path / "eval", "MODEL.WEIGHTS",
             backbone)


def test_lazy_sequence_train_evaluate_resume(tmp_path, monkeypatch, quiet):
    root = tmp_path / "data"
    generate(root, SyntheticConfig(num_train=4, num_val=1, num_test=1, image_size=64), progress=False)
    names = register_synthetic(root, name_prefix=f"evalseq_{uuid.uuid4().hex[:6]}")
    teacher_weights = tmp_path / "teacher.pth"
    torch.save({"model": build_model(load_config(REPO / "configs/embedded/teacher.yaml",
                                                 ["MODEL.DEVICE", "cpu"])).state_dict()}, teacher_weights)
    out = tmp_path / "run"
    opts = [f"dataloader.train.dataset.names={names['train']}", f"dataloader.test.dataset.names={names['val']}",
            f"model.teacher.weights={teacher_weights}", f"train.output_dir={out}", "train.device=cpu",
            "model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=16",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
            "dataloader.train.mapper.augmentations.0.max_size=64",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=64"]
    config = REPO / "configs/embedded/topkd.py"
    steps = []
    original = SimpleTrainer.run_step
    monkeypatch.setattr(SimpleTrainer, "run_step", lambda self: (steps.append(self.iter), original(self))[1])
    _run(lazy_tool, "--config-file", config, *opts, "train.max_iter=1")
    run_config = (out / "config.yaml").read_text()
    assert len(torch.load(out / "model_final.pth", weights_only=True)["classes"]) == 24

    _run(lazy_tool, "--config-file", config, "--eval-only", *opts, f"train.init_checkpoint={out / 'model_final.pth'}")
    assert (out / "config.yaml").read_text() == run_config
    assert (out / "inference" / "config.yaml").is_file()
    _run(lazy_tool, "--config-file", config, "--resume", *opts, "train.max_iter=2",
         f"train.init_checkpoint={out / 'model_final.pth'}")
    assert steps == [0, 1]


# --- the device --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_is_the_gpu_where_there_is_one(gpu, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert device.resolve_device("auto", "MODEL.DEVICE") == expected
    assert load_config(REPO / "configs/embedded/teacher.yaml").MODEL.DEVICE == expected
    assert device.resolve_device("cpu", "MODEL.DEVICE") == "cpu"
    line = device.device_line("cpu", "MODEL.DEVICE")
    assert line.startswith("device: cpu (MODEL.DEVICE; PyTorch sees")
    assert ("set MODEL.DEVICE auto or cuda to use it" in line) == gpu  # a GPU left idle is said plainly


def test_cuda_without_a_gpu_and_a_bad_device_are_config_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"MODEL.DEVICE is 'cuda:1', but PyTorch sees no CUDA GPU"):
        device.resolve_device("cuda:1", "MODEL.DEVICE")
    with pytest.raises(ConfigError, match=r"train.device must be a device name"):
        lazy_check(str(REPO / "configs/embedded/topkd.py"), ["train.device=''", "dataloader.train.dataset.names=[]",
                                                             "dataloader.test.dataset.names=[]"])


def test_the_log_names_the_device_and_summarises_the_data(det_run_names, tmp_path, quiet):
    config = det_config(tmp_path, det_run_names, method="none", max_iter=1)
    out = tmp_path / "run"
    _run(train_net, "--config-file", config, "OUTPUT_DIR", out, "SOLVER.STEPS", "()")
    log = (out / "log.txt").read_text()
    assert "device: cpu (MODEL.DEVICE; PyTorch sees" in log
    assert f"data check: dataset '{det_run_names['train']}' (DATASETS.TRAIN)" in log
    assert "12 images (all files present)" in log and "dropped by Detectron2: none" in log
