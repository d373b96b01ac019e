"""DistillRCNN: one training step per method on tiny models, teacher isolation, errors, checkpoints."""
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from topkd_det.config_io import ConfigError
from topkd_det.detection.teacher import TeacherWeightsError

from detection_fixtures import NUM_CLASSES, batch, distill_cfg, tiny_cfg, write_teacher

METHOD_OVERRIDES = {
    "kd": {},
    "dkd": {},
    "wttm": {},
    "gdkd": {"MODEL.DISTILL.GDKD.K": 2},
    "gdkd3": {"MODEL.DISTILL.GDKD3.K": 2},
    "topkd": {},
    "topkd-image-fg": {"MODEL.DISTILL.TOPKD.SCOPE": "image", "MODEL.DISTILL.TOPKD.FOREGROUND_ONLY": True,
                       "MODEL.DISTILL.TOPKD.NEGATIVES": "other_label"},
    "dkd-ls-plugin": {"MODEL.DISTILL.LOGIT_STANDARDIZE": True, "MODEL.DISTILL.PLUGIN.TSM": True,
                      "MODEL.DISTILL.PLUGIN.TDL": True},
}
EXPECTED_TERMS = {"kd": {"loss_kd"}, "dkd": {"loss_dkd"}, "wttm": {"loss_wttm"}, "gdkd": {"loss_gdkd"},
                  "gdkd3": {"loss_gdkd3"},
                  "topkd": {"loss_con", "loss_tdl"}, "topkd-image-fg": {"loss_con", "loss_tdl"},
                  "dkd-ls-plugin": {"loss_dkd", "loss_tdl"}}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


def _build(tmp_path, teacher_files, name):
    method = name.split("-")[0]
    cfg = distill_cfg(tmp_path, method, teacher=teacher_files)
    cfg.merge_from_list([x for kv in METHOD_OVERRIDES[name].items() for x in kv])
    return build_model(cfg)


@pytest.mark.parametrize("name", sorted(METHOD_OVERRIDES))
def test_training_step(tmp_path, teacher_files, name):
    torch.manual_seed(0)
    model = _build(tmp_path, teacher_files, name)
    model.train()
    teacher = model.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = {}
    original = model.teacher.box_logits

    def spy(features, boxes, stage):
        out = original(features, boxes, stage)
        seen["teacher_rows"] = out.shape[0]
        seen["teacher_graph"] = out.requires_grad or out.grad_fn is not None
        seen["proposal_rows"] = sum(len(b) for b in boxes)
        return out

    model.teacher.box_logits = spy
    with EventStorage(0):
        losses = model(batch())
    assert EXPECTED_TERMS[name] <= set(losses)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert "loss_ce" not in losses  # the student's loss_cls is the CE already
    for key, value in losses.items():
        assert torch.isfinite(value), key
    sum(losses.values()).backward()

    assert seen["teacher_rows"] == seen["proposal_rows"] > 0
    assert not seen["teacher_graph"]  # no autograd graph: the teacher holds no activations for backward
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    cls_grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert cls_grad is not None and cls_grad.abs().sum() > 0


def test_distill_terms_move_the_student_gradient(tmp_path, teacher_files):
    """The distillation terms alone produce a non-zero gradient on the student's backbone."""
    model = _build(tmp_path, teacher_files, "topkd")
    model.train()
    with EventStorage(0):
        losses = model(batch())
    (losses["loss_con"] + losses["loss_tdl"]).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_inference_is_the_student_alone(tmp_path, teacher_files):
    model = _build(tmp_path, teacher_files, "topkd")
    model.eval()
    model.teacher.features = lambda *a: pytest.fail("the teacher ran at inference")
    model.teacher.box_logits = lambda *a: pytest.fail("the teacher ran at inference")
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 96, 96) * 255, "height": 96, "width": 96}])
    assert "instances" in out[0]


def test_checkpoint_holds_the_student_only(tmp_path, teacher_files):
    model = _build(tmp_path, teacher_files, "kd")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_x")
    state = torch.load(tmp_path / "model_x.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith("teacher") for k in state)
    # The saved weights are a plain Faster R-CNN's: they load strictly into one.
    plain = build_model(tiny_cfg())
    result = plain.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Resume through Detectron2's checkpointer restores the student and keeps the teacher.
    model2 = _build(tmp_path, teacher_files, "kd")
    DetectionCheckpointer(model2, save_dir=str(tmp_path)).resume_or_load(str(tmp_path / "model_x.pth"), resume=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    t1, t2 = model.teacher.model.state_dict(), model2.teacher.model.state_dict()
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


def test_teacher_class_count_must_match(tmp_path):
    cfg = distill_cfg(tmp_path, "kd", teacher=write_teacher(tmp_path, num_classes=NUM_CLASSES + 2))
    with pytest.raises(ValueError, match=rf"teacher has {NUM_CLASSES + 2} classes.*student has {NUM_CLASSES}"):
        build_model(cfg)


def test_missing_teacher_weights(tmp_path, teacher_files):
    cfg = distill_cfg(tmp_path, "kd", teacher=(teacher_files[0], str(tmp_path / "nope.pth")))
    with pytest.raises(ConfigError, match="MODEL.TEACHER.WEIGHTS: no such file .*nope.pth"):
        build_model(cfg)


def test_teacher_weights_that_do_not_match_list_keys(tmp_path, teacher_files):
    r34_config, _ = write_teacher(tmp_path, depth=34)
    cfg = distill_cfg(tmp_path, "kd", teacher=(r34_config, teacher_files[1]))
    with pytest.raises(ValueError, match=r"does not match.*missing keys: backbone\.bottom_up\.res"):
        build_model(cfg)


def test_teacher_loader_lists_missing_unexpected_and_misshapen_keys(tmp_path, teacher_files):
    state = torch.load(teacher_files[1], map_location="cpu", weights_only=True)["model"]
    del state["roi_heads.box_predictor.bbox_pred.bias"]
    state["roi_heads.extra_head.weight"] = torch.zeros(3)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(5, 64)
    broken = tmp_path / "broken.pth"
    torch.save({"model": state}, broken)
    cfg = distill_cfg(tmp_path, "kd", teacher=(teacher_files[0], str(broken)))
    with pytest.raises(TeacherWeightsError) as info:
        build_model(cfg)
    message = str(info.value)
    assert f"MODEL.TEACHER.WEIGHTS '{broken}' does not match MODEL.TEACHER.CONFIG_FILE" in message
    assert "missing keys: roi_heads.box_predictor.bbox_pred.bias" in message
    assert "unexpected keys: roi_heads.extra_head.weight" in message
    assert "shape mismatches: roi_heads.box_predictor.cls_score.weight (5, 64) vs model (7, 64)" in message


def test_a_truncated_teacher_file_is_named_with_the_fix(tmp_path, teacher_files):
    data = open(teacher_files[1], "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    cfg = distill_cfg(tmp_path, "kd", teacher=(teacher_files[0], str(truncated)))
    with pytest.raises(TeacherWeightsError, match=rf"MODEL.TEACHER.WEIGHTS '{truncated}' could not be read .*"
                                                  "damaged, truncated or not a Detectron2/torch checkpoint"):
        build_model(cfg)


def test_a_model_zoo_format_pkl_teacher_loads(tmp_path, teacher_files):
    """Detectron2's own .pkl format (numpy arrays, ``__author__``), as the model zoo ships teachers."""
    state = torch.load(teacher_files[1], map_location="cpu", weights_only=True)["model"]
    pkl = tmp_path / "teacher.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "topkd tests"}, f)
    model = build_model(distill_cfg(tmp_path, "kd", teacher=(teacher_files[0], str(pkl))))
    loaded = model.teacher.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_invalid_k_for_c_plus_1(tmp_path, teacher_files):
    cfg = distill_cfg(tmp_path, "topkd", teacher=teacher_files)
    cfg.MODEL.DISTILL.TOPKD.K = 3  # C+1 = 7 classes: 2K+2 <= 7 needs K <= 2
    with pytest.raises(ValueError, match=rf"K=3 is invalid for C={NUM_CLASSES + 1}"):
        build_model(cfg)


def test_unknown_loss_name(tmp_path, teacher_files):
    cfg = distill_cfg(tmp_path, "fancy_kd", teacher=teacher_files)
    with pytest.raises(ValueError, match="MODEL.DISTILL.METHOD must be one of .*topkd; got the string 'fancy_kd'"):
        build_model(cfg)


def test_teacher_sees_its_own_channel_order(tmp_path, teacher_files):
    """The teacher (BGR) is fed the student's RGB images flipped, before its own normalisation."""
    model = _build(tmp_path, teacher_files, "kd")
    teacher = model.teacher
    assert teacher.flip_channels
    inputs = batch(1)
    boxes = [inputs[0]["instances"].gt_boxes]
    bgr_inputs = [dict(inputs[0], image=inputs[0]["image"].flip(0))]
    flipped = teacher.box_logits(teacher.features(inputs), boxes)
    teacher.flip_channels = False
    assert torch.allclose(flipped, teacher.box_logits(teacher.features(bgr_inputs), boxes))
    assert not torch.allclose(flipped, teacher.box_logits(teacher.features(inputs), boxes))


def test_bfloat16_teacher_matches_float32(tmp_path, teacher_files):
    cfg = distill_cfg(tmp_path, "kd", teacher=teacher_files)
    fp32 = build_model(cfg).teacher
    cfg.MODEL.TEACHER.DTYPE = "bfloat16"
    bf16 = build_model(cfg).teacher
    inputs = batch(1)
    boxes = [inputs[0]["instances"].gt_boxes]
    a, b = (t.box_logits(t.features(inputs), boxes) for t in (fp32, bf16))
    assert b.dtype == torch.float32
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item())


def test_float32_teacher_stays_float32_inside_the_students_autocast(tmp_path, teacher_files):
    """SOLVER.AMP.ENABLED runs the student under autocast; a float32 teacher must not follow it down."""
    teacher = build_model(distill_cfg(tmp_path, "kd", teacher=teacher_files)).teacher
    inputs = batch(1)
    boxes = [inputs[0]["instances"].gt_boxes]
    plain = teacher.box_logits(teacher.features(inputs), boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = teacher.features(inputs)
        inside = teacher.box_logits(features, boxes)
    assert all(f.dtype == torch.float32 for f in features)
    assert torch.equal(plain, inside)


def test_unknown_teacher_dtype(tmp_path, teacher_files):
    cfg = distill_cfg(tmp_path, "kd", teacher=teacher_files)
    cfg.MODEL.TEACHER.DTYPE = "int8"
    with pytest.raises(ValueError, match="MODEL.TEACHER.DTYPE must be one of"):
        build_model(cfg)
