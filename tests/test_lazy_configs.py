"""LazyConfig: DistillRCNN built by ``instantiate``; the lazy configs match their YAML twins; the
embedded one trains, resumes and evaluates through tools/lazyconfig_train_net.py; bad input fails early."""
import json
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model

import topkd_det.detection.teacher as teacher_module
from topkd_det.config_io import ConfigError
from topkd_det.data.synthetic_coco import SyntheticConfig, generate
from topkd_det.detection import build_distill_loss, build_teacher
from topkd_det.detection.config import load_config
from topkd_det.detection.datasets import register_synthetic
from topkd_det.detection.engine import student_only as yacs_student_only
from topkd_det.detection.families import UnsupportedModelError, family_name
from topkd_det.detection import lazy_engine
from topkd_det.detection.lazy_engine import load_lazy_config, student_only
from topkd_det.detection.teacher import model_zoo_config_file
from topkd_det.resume_rules import ResumeRefused

from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
TWINS = {  # LazyConfig -> its YAML twin
    "COCO-Detection/topkd_R101_R18.py": "COCO-Detection/topkd_R101_R18.yaml",
    "COCO-Detection/topkd_R101_R50.py": "COCO-Detection/topkd_R101_R50.yaml",
    "COCO-Detection/topkd_R50_MV2.py": "COCO-Detection/topkd_R50_MV2.yaml",
    "embedded/topkd.py": "embedded/topkd.yaml",
}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lazy_file", sorted(TWINS))
def test_lazy_config_builds_the_model_and_schedule_of_its_yaml_twin(lazy_file, monkeypatch, tmp_path):
    cfg = LazyConfig.load(str(REPO / "configs" / lazy_file))
    yaml = load_config(REPO / "configs" / TWINS[lazy_file], ["MODEL.DEVICE", "cpu"])
    teacher = cfg.model.teacher
    assert (teacher.config, teacher.weights, teacher.dtype) == (
        yaml.MODEL.TEACHER.CONFIG_FILE, yaml.MODEL.TEACHER.WEIGHTS, yaml.MODEL.TEACHER.DTYPE)
    # Weights off: nothing is downloaded or read.
    monkeypatch.setattr(teacher_module, "load_teacher_weights", lambda *args: None)
    teacher.weights = str(tmp_path / "unread.pth")
    (tmp_path / "unread.pth").touch()
    model = instantiate(cfg.model)  # DistillRCNN, with its teacher and loss from plain lazy nodes
    plain = build_model(yacs_student_only(yaml))
    assert _shapes(model) == _shapes(plain)
    assert model.input_format == yaml.INPUT.FORMAT
    assert model.pixel_mean.flatten().tolist() == pytest.approx(yaml.MODEL.PIXEL_MEAN)
    assert model.pixel_std.flatten().tolist() == pytest.approx(yaml.MODEL.PIXEL_STD)
    num_classes = yaml.MODEL.ROI_HEADS.NUM_CLASSES
    assert model.distill_loss.options == build_distill_loss(yaml.MODEL.DISTILL, num_classes).options
    assert model.teacher.num_classes == num_classes and model.teacher.family == "Faster R-CNN"
    assert family_name(model.roi_heads) == "Faster R-CNN"
    assert model.roi_heads.batch_size_per_image == yaml.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE

    assert cfg.train.init_checkpoint == yaml.MODEL.WEIGHTS
    assert cfg.train.max_iter == yaml.SOLVER.MAX_ITER
    assert cfg.dataloader.train.total_batch_size == yaml.SOLVER.IMS_PER_BATCH
    assert cfg.dataloader.train.mapper.image_format == yaml.INPUT.FORMAT
    resize = cfg.dataloader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == tuple(yaml.INPUT.MIN_SIZE_TRAIN)
    assert resize.max_size == yaml.INPUT.MAX_SIZE_TRAIN
    assert cfg.optimizer.lr == yaml.SOLVER.BASE_LR and cfg.optimizer.weight_decay == yaml.SOLVER.WEIGHT_DECAY
    # The multiplier of Detectron2's WarmupMultiStepLR for this SOLVER, at a few iterations.
    multiplier = instantiate(cfg.lr_multiplier)
    warmup, steps, max_iter = yaml.SOLVER.WARMUP_ITERS, yaml.SOLVER.STEPS, yaml.SOLVER.MAX_ITER
    expected = {0: 0.001, warmup // 2: 0.001 + 0.999 * 0.5, warmup: 1.0, steps[0] - 1: 1.0, steps[0]: 0.1,
                steps[1]: 0.01, max_iter - 1: 0.01}
    for it, value in expected.items():
        assert multiplier(it / max_iter) == pytest.approx(value, rel=1e-3), it
    clip = yaml.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED:
        assert dict(cfg.train.clip_gradients) == {"enabled": True, "clip_type": clip.CLIP_TYPE,
                                                  "clip_value": clip.CLIP_VALUE}


def test_detectron2_lazy_cascade_mask_rcnn_as_a_student(monkeypatch, tmp_path):
    """Detectron2's own common Cascade model (read as a file) with a model-zoo Cascade teacher, weights off."""
    monkeypatch.setattr(teacher_module, "load_teacher_weights", lambda *args: None)
    (tmp_path / "unread.pth").touch()
    model = LazyConfig.load(model_zoo_config_file("common/models/cascade_rcnn.py"), "model")
    model._target_ = "topkd_det.detection.DistillRCNN"
    model.teacher = {"_target_": build_teacher, "config": "zoo:Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
                     "weights": str(tmp_path / "unread.pth")}
    model.distill_loss = {"_target_": build_distill_loss, "options": {"method": "kd"},
                          "num_classes": "${..roi_heads.num_classes}"}
    built = instantiate(model)
    assert family_name(built.roi_heads) == built.teacher.family == "Cascade Mask R-CNN"
    predictors = built.roi_heads.box_predictor
    assert [p.distiller.teacher_stage for p in predictors] == [0, 1, 2]


def test_a_retinanet_student_is_refused_at_build():
    cfg = LazyConfig.load(model_zoo_config_file("common/models/retinanet.py"))
    cfg.model._target_ = "topkd_det.detection.DistillRCNN"
    cfg.model.teacher = None  # refused before the teacher is looked at
    cfg.model.distill_loss = build_distill_loss({"method": "kd"}, 80)
    with pytest.raises(UnsupportedModelError, match="this student: it has no ROI heads .*RetinaNet"):
        instantiate(cfg.model)


def test_a_lazy_python_teacher_config_with_overrides(tmp_path):
    teacher_file = tmp_path / "teacher.py"
    teacher_file.write_text(
        "from detectron2.config import LazyConfig\n"
        "from topkd_det.detection.lazy_engine import student_only\n"
        f"model = student_only(LazyConfig.load({str(REPO / 'configs/embedded/topkd.py')!r}, 'model'))\n"
        "model.roi_heads.num_classes = 5\n")
    plain = instantiate(student_only(LazyConfig.load(str(REPO / "configs/embedded/topkd.py"), "model")))
    weights = tmp_path / "teacher.pth"
    torch.save({"model": plain.state_dict()}, weights)
    teacher = build_teacher(str(teacher_file), str(weights), opts=["model.roi_heads.num_classes=24"])
    assert teacher.num_classes == 24
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    with pytest.raises(ConfigError, match=r"model.teacher.config .*teacher.py.* does not give a teacher model"):
        build_teacher(str(teacher_file), str(weights), opts=["model.roi_heads.no_such_arg=1"])
    # The same teacher for a YAML student, through MODEL.TEACHER.*.
    cfg = load_config(REPO / "configs/embedded/topkd.yaml", [
        "MODEL.TEACHER.CONFIG_FILE", str(teacher_file), "MODEL.TEACHER.WEIGHTS", str(weights),
        "MODEL.TEACHER.OPTS", "['model.roi_heads.num_classes=24']"])
    assert build_model(cfg).teacher.num_classes == 24


@pytest.mark.parametrize("opts, match", [
    (["train.max_iters=3"], r"override 'train.max_iters=3': the config has no key 'train.max_iters' "
                            r"\(train has: .*max_iter.*\); write \+train.max_iters=3 to add it"),
    (["train.max_iter"], r"override 'train.max_iter': give key=value"),
])
def test_bad_overrides_name_the_override(opts, match):
    with pytest.raises(ConfigError, match=match):
        load_lazy_config(str(REPO / "configs/embedded/topkd.py"), opts)


def test_loss_options_are_checked_by_the_loss_schema_under_their_lazy_path():
    config = str(REPO / "configs/embedded/topkd.py")
    no_data = ["dataloader.train.dataset.names=[]", "dataloader.test.dataset.names=[]"]
    with pytest.raises(ValueError, match=r"unknown distillation option 'model.distill_loss.options.topkd.kk'"):
        lazy_engine.check(config, ["model.distill_loss.options.topkd.kk=3", *no_data])
    # An option the config does not list takes its default, and may be set without '+'.
    cfg = lazy_engine.check(config, ["model.distill_loss.options.topkd.temperature=0.1", *no_data])
    assert cfg.model.distill_loss.options.topkd.temperature == 0.1


def test_overrides_may_set_lazy_call_arguments_and_add_keys_with_plus():
    cfg = load_lazy_config(str(REPO / "configs/embedded/topkd.py"),
                           ["model.roi_heads.proposal_append_gt=False", "+train.run_note=ablation", "train.max_iter=7"])
    assert cfg.model.roi_heads.proposal_append_gt is False and cfg.train.run_note == "ablation"
    assert cfg.train.max_iter == 7


def test_unregistered_dataset_and_teacher_class_count_fail_before_the_run_folder(tmp_path):
    config = str(REPO / "configs/embedded/topkd.py")
    out = f"train.output_dir={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match="dataloader.train.dataset.names: dataset 'nope_train' is not registered"
                                          ".*register it in the config file with .*register_coco_instances"):
        lazy_engine.check(config, ["dataloader.train.dataset.names=nope_train", "dataloader.test.dataset.names=[]",
                                   out])
    with pytest.raises(ConfigError, match=r"the teacher has 7 classes .* the student's model.roi_heads.num_classes "
                                          r"is 24.* model.teacher.opts"):
        lazy_engine.check(config, ["dataloader.train.dataset.names=[]", "dataloader.test.dataset.names=[]", out,
                       "model.teacher.opts=[MODEL.ROI_HEADS.NUM_CLASSES,7]"])
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    generate(root, SyntheticConfig(num_train=4, num_val=1, num_test=1, image_size=64), progress=False)
    return register_synthetic(root, name_prefix=f"lazy_{uuid.uuid4().hex[:6]}")


def _run(*args):
    tool = load_tool("lazyconfig_train_net")
    return tool.main(tool.parser().parse_args([str(a) for a in args]))


def test_embedded_lazy_config_trains_resumes_and_evaluates(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    teacher_cfg = load_config(REPO / "configs/embedded/teacher.yaml")
    teacher_weights = tmp_path / "teacher.pth"
    torch.save({"model": build_model(teacher_cfg).state_dict()}, teacher_weights)
    out = tmp_path / "run"
    config = REPO / "configs/embedded/topkd.py"
    opts = [f"dataloader.train.dataset.names={tiny_shapes['train']}",
            f"dataloader.test.dataset.names={tiny_shapes['val']}",
            f"model.teacher.weights={teacher_weights}", f"train.output_dir={out}",
            # Smaller than the embedded sizes, for the test's time.
            "model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=16",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
            "dataloader.train.mapper.augmentations.0.max_size=64",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=64", "train.checkpointer.period=1"]
    steps = []
    original = SimpleTrainer.run_step

    def counted(self):
        steps.append(self.iter)
        return original(self)

    monkeypatch.setattr(SimpleTrainer, "run_step", counted)
    _run("--config-file", config, *opts, "train.max_iter=1")
    assert steps == [0]
    # Plain types only (the config as flattened values), so a resume can read it with weights_only.
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 0 and "trainer" in state  # optimizer and scheduler
    assert state["config"]["train.seed"] == 0 and state["config"]["model.distill_loss.options.topkd.k"] == 5
    assert not any(k.startswith("teacher") for k in state["model"])
    # Student only: the checkpoint loads strictly into the plain student of the config.
    plain = instantiate(student_only(LazyConfig.load(str(config), "model")))
    plain.load_state_dict(state["model"], strict=True)
    assert (out / "config.yaml").is_file()
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert any("bbox/AP" in x for x in lines)  # COCO evaluation after the last iteration

    steps.clear()
    _run("--config-file", config, "--resume", *opts, "train.max_iter=2")
    assert steps == [1]  # continued at the next iteration, not from 0

    # Another loss is another run: refused before anything is built, unless asked for, then recorded.
    changed = [*opts, "train.max_iter=3", "model.distill_loss.options.topkd.k=4"]
    with pytest.raises(ResumeRefused, match=r"cannot resume from .*model_final.pth: .*"
                                            r"model.distill_loss.options.topkd.k: 5 -> 4"):
        _run("--config-file", config, "--resume", *changed)
    assert steps == [1]
    _run("--config-file", config, "--resume", "--allow-config-change", *changed)
    assert steps == [1, 2]
    records = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert {"iteration": 1, "config_changes": {"model.distill_loss.options.topkd.k": [5, 4],
                                               "train.max_iter": [2, 3]}} in records

    # A damaged model_final.pth does not pass for a finished run: resumed from the newest intact
    # checkpoint (the same iteration), it is written again.
    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])
    _run("--config-file", config, "--resume", *changed)
    assert steps == [1, 2]
    assert torch.load(final, map_location="cpu", weights_only=True)["iteration"] == 2

    # --eval-only builds the student alone: a missing teacher file does not matter.
    results = _run("--config-file", config, "--eval-only", *opts, "model.teacher.weights=/no/such/teacher.pth",
                   f"train.init_checkpoint={out / 'model_final.pth'}")
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}


def test_lazy_resume_after_a_kill_is_bit_exact(tiny_shapes, tmp_path, monkeypatch):
    """Two iterations in one go, against the same run cut off after its first checkpoint and resumed."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    teacher_weights = tmp_path / "teacher.pth"
    torch.save({"model": build_model(load_config(REPO / "configs/embedded/teacher.yaml")).state_dict()},
               teacher_weights)
    out = tmp_path / "run"
    args = ["--config-file", REPO / "configs/embedded/topkd.py",
            f"dataloader.train.dataset.names={tiny_shapes['train']}", f"dataloader.test.dataset.names={tiny_shapes['val']}",
            f"model.teacher.weights={teacher_weights}", f"train.output_dir={out}", "train.max_iter=2",
            "train.checkpointer.period=1", "model.proposal_generator.post_nms_topk=[64,32]",
            "model.roi_heads.batch_size_per_image=16", "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
            "dataloader.train.mapper.augmentations.0.max_size=64",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64", "dataloader.test.mapper.augmentations.0.max_size=64"]
    _run(*args)
    uninterrupted = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    # The kill: the process died after writing model_0000000.pth, before anything else.
    for name in ("model_0000001.pth", "model_final.pth"):
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000000.pth")
    _run("--resume", *args)
    resumed = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
