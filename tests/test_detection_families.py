"""DistillRCNN beyond Faster R-CNN: Mask R-CNN and Cascade R-CNN students and teachers, the teacher
head each student stage is scored by, and every model it refuses at build time."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, FastRCNNOutputLayers, StandardROIHeads
from detectron2.utils.events import EventStorage

from topkd_det.detection.engine import student_only
from topkd_det.detection.families import UnsupportedModelError, box_stages

from detection_fixtures import batch, distill_cfg, tiny_cfg, write_teacher

STAGES = {"faster": 1, "mask": 1, "cascade": 3}
# (student family, teacher family) -> the teacher stage that scores each student stage.
PAIRS = {
    ("mask", "faster"): [0],
    ("mask", "mask"): [0],
    ("cascade", "faster"): [0, 0, 0],
    ("cascade", "cascade"): [0, 1, 2],
    ("faster", "cascade"): [0],
}


@ROI_HEADS_REGISTRY.register()
class SubclassedROIHeadsForTest(StandardROIHeads):
    """A subclass of a supported class: it might change the forward, so it must be refused."""


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {family: write_teacher(root, family=family) for family in STAGES}


def _count_calls(module, counts, name):
    counts[name] = 0
    module.register_forward_hook(lambda *_: counts.__setitem__(name, counts[name] + 1))


def _stage_modules(heads, attr):
    modules = getattr(heads, attr)
    return list(modules) if isinstance(modules, torch.nn.ModuleList) else [modules]


@pytest.mark.parametrize("student,teacher", list(PAIRS), ids=[f"{s}-student-{t}-teacher" for s, t in PAIRS])
def test_one_training_step_and_inference(tmp_path, teachers, student, teacher):
    cfg = distill_cfg(tmp_path, "kd", teacher=teachers[teacher], family=student)
    model = build_model(cfg)
    model.train()
    plain = build_model(student_only(cfg))
    # The student's weights are a plain model's, names and all.
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.train()

    counts = {}
    _count_calls(model.backbone, counts, "student backbone")
    for k, head in enumerate(_stage_modules(model.roi_heads, "box_head")):
        _count_calls(head, counts, f"student box head {k}")
    t = model.teacher.model
    _count_calls(t.backbone, counts, "teacher backbone")
    _count_calls(t.proposal_generator, counts, "teacher RPN")
    for k, head in enumerate(_stage_modules(t.roi_heads, "box_head")):
        _count_calls(head, counts, f"teacher box head {k}")
    if student == "mask":
        _count_calls(model.roi_heads.mask_head, counts, "student mask head")
    if teacher == "mask":
        _count_calls(t.roi_heads.mask_head, counts, "teacher mask head")

    inputs = batch(masks=True)
    with EventStorage(0):
        torch.manual_seed(3)
        reference = plain(inputs)
        torch.manual_seed(3)
        losses = model(inputs)

    n = STAGES[student]
    suffixes = [f"_stage{k}" for k in range(n)] if n > 1 else [""]
    own = {f"loss_{term}{s}" for term in ("cls", "box_reg") for s in suffixes} | {"loss_rpn_cls", "loss_rpn_loc"}
    if student == "mask":
        own.add("loss_mask")
    assert set(reference) == own
    assert set(losses) == own | {f"loss_kd{s}" for s in suffixes}
    for key in own:  # the student's own losses are exactly a plain model's
        assert torch.allclose(losses[key], reference[key]), key
    for key, value in losses.items():
        assert torch.isfinite(value), key
    seen = dict(counts)
    sum(losses.values()).backward()
    for k, predictor in enumerate(_stage_modules(model.roi_heads, "box_predictor")):
        grad = predictor.cls_score.weight.grad
        assert grad is not None and grad.abs().sum() > 0, k

    # Nothing of the student runs twice; the teacher runs its backbone once and only its box heads.
    assert seen.pop("student backbone") == 1 and seen.pop("teacher backbone") == 1
    assert seen.pop("teacher RPN") == 0 and seen.pop("teacher mask head", 0) == 0
    assert all(seen.pop(f"student box head {k}") == 1 for k in range(n))
    assert seen.pop("student mask head", 1) == 1
    used = PAIRS[(student, teacher)]
    assert seen == {f"teacher box head {k}": used.count(k) for k in range(STAGES[teacher])}

    model.eval()
    model.teacher.features = lambda *a: pytest.fail("the teacher ran at inference")
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 96, 96) * 255, "height": 96, "width": 96}])
    fields = out[0]["instances"].get_fields()
    assert "pred_boxes" in fields and ("pred_masks" in fields) == (student == "mask")


def _same_weights_teacher(tmp_path, family, **overrides):
    """A plain model of ``family`` written as a teacher (config + weights), and its state dict."""
    cfg = tiny_cfg(family=family, **overrides)
    torch.manual_seed(5)
    state = build_model(cfg).state_dict()
    config_file, weights = tmp_path / f"{family}.yaml", tmp_path / f"{family}.pth"
    config_file.write_text(cfg.dump())
    torch.save({"model": state}, weights)
    return (str(config_file), str(weights)), state


def _cascade_kd_per_stage(tmp_path, teacher_files, state):
    # FrozenBN: the student in training mode computes the features the teacher computes in eval mode.
    cfg = distill_cfg(tmp_path, "kd", teacher=teacher_files, family="cascade", **{"MODEL.RESNETS.NORM": "FrozenBN"})
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    model.train()
    with EventStorage(0):
        losses = model(batch())
    return [losses[f"loss_kd_stage{k}"].item() for k in range(3)]


def test_cascade_teacher_stages_line_up_with_the_student_stages(tmp_path):
    """A Cascade teacher that is the student itself gives identical logits at every stage, so KD is
    0 row by row; with its stage heads rotated it is not."""
    teacher_files, state = _same_weights_teacher(tmp_path, "cascade", **{"MODEL.RESNETS.NORM": "FrozenBN"})
    assert max(_cascade_kd_per_stage(tmp_path, teacher_files, state)) < 1e-6

    rotated = dict(state)
    for k in range(3):
        for part in ("box_head", "box_predictor"):
            prefix, source = f"roi_heads.{part}.{k}.", f"roi_heads.{part}.{(k + 1) % 3}."
            for key in [x for x in state if x.startswith(prefix)]:
                rotated[key] = state[source + key[len(prefix):]]
    torch.save({"model": rotated}, teacher_files[1])
    assert min(_cascade_kd_per_stage(tmp_path, teacher_files, state)) > 1e-4


def test_a_faster_teacher_scores_every_cascade_stage_with_its_one_head(tmp_path):
    """A Faster teacher whose box head is the student's stage-0 head: KD 0 at stage 0 only."""
    frozen = {"MODEL.RESNETS.NORM": "FrozenBN"}
    _, state = _same_weights_teacher(tmp_path, "cascade", **frozen)
    teacher_state = {}
    for key, value in state.items():
        for part in ("box_head", "box_predictor"):
            key = key.replace(f"roi_heads.{part}.0.", f"roi_heads.{part}.")
        if not any(f"roi_heads.{part}.{k}." in key for part in ("box_head", "box_predictor") for k in (1, 2)):
            teacher_state[key] = value
    teacher_cfg = tiny_cfg(family="faster", **frozen, **{"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True})
    config_file, weights = tmp_path / "faster.yaml", tmp_path / "faster.pth"
    config_file.write_text(teacher_cfg.dump())
    torch.save({"model": teacher_state}, weights)
    kd = _cascade_kd_per_stage(tmp_path, (str(config_file), str(weights)), state)
    assert kd[0] < 1e-6 and min(kd[1:]) > 1e-4


def _refused(tmp_path, teachers, match, teacher=None, **student):
    cfg = distill_cfg(tmp_path, "kd", teacher=teacher or teachers["faster"], **student)
    with pytest.raises(UnsupportedModelError, match=match) as info:
        build_model(cfg)
    assert "Supported: Faster R-CNN and Mask R-CNN (StandardROIHeads) and Cascade R-CNN" in str(info.value)


def test_a_keypoint_student_is_refused(tmp_path, teachers):
    _refused(tmp_path, teachers, "this student: it has a keypoint head", **{"MODEL.KEYPOINT_ON": True})


def test_a_keypoint_teacher_is_refused(tmp_path, teachers):
    teacher = write_teacher(tmp_path, **{"MODEL.KEYPOINT_ON": True})
    _refused(tmp_path, teachers, "this teacher: it has a keypoint head", teacher=teacher)


def test_a_retinanet_teacher_is_refused(tmp_path, teachers):
    teacher = write_teacher(tmp_path, **{"MODEL.META_ARCHITECTURE": "RetinaNet", "MODEL.RETINANET.NUM_CLASSES": 6,
                                         "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone"})
    _refused(tmp_path, teachers, "this teacher: it is a .*RetinaNet, not a GeneralizedRCNN .*proposal-free",
             teacher=teacher)


def test_an_unknown_roi_heads_class_is_refused(tmp_path, teachers):
    _refused(tmp_path, teachers, "this student: its ROI heads are .*Res5ROIHeads",
             **{"MODEL.ROI_HEADS.NAME": "Res5ROIHeads", "MODEL.ROI_HEADS.IN_FEATURES": ["p4"]})


def test_a_subclass_of_a_supported_roi_heads_class_is_refused(tmp_path, teachers):
    _refused(tmp_path, teachers, "this student: its ROI heads are .*SubclassedROIHeadsForTest",
             **{"MODEL.ROI_HEADS.NAME": "SubclassedROIHeadsForTest"})


def test_cascades_with_different_stage_counts_are_refused(tmp_path, teachers):
    two_stages = {"MODEL.ROI_BOX_CASCADE_HEAD.IOUS": [0.5, 0.6],
                  "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0]]}
    cfg = distill_cfg(tmp_path, "kd", teacher=teachers["cascade"], family="cascade", **two_stages)
    with pytest.raises(UnsupportedModelError, match="Cascade teacher with 3 stages cannot score the stages of a "
                                                    "Cascade student with 2.*MODEL.ROI_BOX_CASCADE_HEAD.IOUS"):
        build_model(cfg)


def test_box_predictors_other_than_softmax_fastrcnn_output_layers_are_refused():
    heads = build_model(tiny_cfg()).roi_heads

    class OwnPredictor(FastRCNNOutputLayers):
        pass

    heads.box_predictor.__class__ = OwnPredictor
    with pytest.raises(UnsupportedModelError, match="box predictor is .*OwnPredictor, not FastRCNNOutputLayers"):
        box_stages(heads, object(), "student")
    heads.box_predictor.__class__ = FastRCNNOutputLayers
    heads.box_predictor.use_sigmoid_ce = True  # MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE on Detectron2 main
    with pytest.raises(UnsupportedModelError, match="sigmoid cross-entropy"):
        box_stages(heads, object(), "teacher")


def test_train_on_pred_boxes_distills_the_proposal_boxes(tmp_path, teachers):
    """With TRAIN_ON_PRED_BOXES the heads replace the proposal boxes after the box losses; the
    distillation terms, computed with those losses, see the boxes the student's logits came from."""
    cfg = distill_cfg(tmp_path, "kd", teacher=teachers["mask"], family="mask",
                      **{"MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": True})
    model = build_model(cfg)
    model.train()
    seen = []
    original = model.teacher.box_logits

    def spy(features, boxes, stage):
        seen.append([b.tensor.clone() for b in boxes])
        return original(features, boxes, stage)

    model.teacher.box_logits = spy
    sampled = []
    model.roi_heads.box_pooler.register_forward_hook(lambda m, args, out: sampled.append(
        [b.tensor.clone() for b in args[1]]))
    with EventStorage(0):
        losses = model(batch(masks=True))
    assert {"loss_kd", "loss_mask"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    assert len(seen) == len(sampled) == 1
    assert all(torch.equal(a, b) for a, b in zip(seen[0], sampled[0]))
