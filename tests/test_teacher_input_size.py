"""A teacher that sees the student's images at another size, in another channel order or padded to a
square (``input_size``, ViTDet's square padding) still scores the student's proposals row by row.

The proof uses a teacher whose ROI logits are a known function of where its box lies: its one feature
map is the image itself, whose channels hold each pixel's normalised x and y centre, and its box
predictor averages them. ROIAlign of a linear ramp is the ramp at the box centre, and resizing keeps
a normalised ramp, so logit 0 and 1 of a row must be the centre of the student's box divided by the
student's image width and height, whatever size the teacher saw the image at; boxes scaled wrongly,
or rows out of order, give other values.
"""
import inspect

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from topkd_det.config_io import ConfigError
from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher, lazy_engine
from topkd_det.detection.config import load_config
from topkd_det.detection.teacher import LAZY_KEYS, FrozenTeacher
from topkd_det.detection.validation import check_distill_config

from conftest import REPO
from detection_fixtures import NUM_CLASSES, distill_cfg, tiny_cfg, write_teacher

pytestmark = pytest.mark.usefixtures("single_thread")
# Detectron2 main pads to a backbone's square_size (ViTDet); 0.6 has no padding constraints.
square_padding = pytest.mark.skipif("padding_constraints" not in inspect.signature(ImageList.from_tensors).parameters,
                                    reason="this Detectron2 (0.6) has no square padding")
MARGIN = 0.15  # boxes this far (a fraction of the image) from the border: no edge effects of resizing


class PixelBackbone(Backbone):
    """The preprocessed image itself as the one feature map (stride 1), padded to ``square_size``."""

    def __init__(self, square_size: int = 0):
        super().__init__()
        self.square_size = square_size

    def forward(self, x):
        return {"p1": x}

    def output_shape(self):
        return {"p1": ShapeSpec(channels=3, stride=1)}

    @property
    def padding_constraints(self):
        return {"square_size": self.square_size}


def coordinate_teacher(num_classes: int = NUM_CLASSES, square_size: int = 0) -> GeneralizedRCNN:
    """A Faster R-CNN whose class logits 0 and 1 are the mean of image channels 0 and 1 inside the box
    (the box head passes the pooled image on, the predictor's class layer averages it)."""
    rpn = RPN(in_features=["p1"], head=StandardRPNHead(in_channels=3, num_anchors=1),
              anchor_generator=DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]], strides=[1]),
              anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1]), box2box_transform=Box2BoxTransform((1.0,) * 4),
              batch_size_per_image=16, positive_fraction=0.5, pre_nms_topk=(10, 10), post_nms_topk=(10, 10))
    pooled = ShapeSpec(channels=3, height=7, width=7)
    predictor = FastRCNNOutputLayers(pooled, box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
                                     num_classes=num_classes)
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.zero_()
        predictor.cls_score.weight[0, :49] = 1 / 49
        predictor.cls_score.weight[1, 49:98] = 1 / 49
    heads = StandardROIHeads(num_classes=num_classes, batch_size_per_image=16, positive_fraction=0.25,
                             proposal_matcher=Matcher([0.5], [0, 1]), box_in_features=["p1"],
                             box_pooler=ROIPooler((7, 7), scales=(1.0,), sampling_ratio=0, pooler_type="ROIAlignV2"),
                             box_head=torch.nn.Identity(), box_predictor=predictor)
    return GeneralizedRCNN(backbone=PixelBackbone(square_size), proposal_generator=rpn, roi_heads=heads,
                           pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0], input_format="RGB")


def ramp_image(height: int, width: int, bgr: bool = False) -> torch.Tensor:
    """Channel 0: each pixel's normalised x centre; channel 1: its y centre (channel 2 in BGR order)."""
    x = ((torch.arange(width) + 0.5) / width).expand(height, width)
    y = ((torch.arange(height) + 0.5) / height)[:, None].expand(height, width)
    image = torch.stack([x, y, torch.full((height, width), 0.5)])
    return image.flip(0) if bgr else image


def interior_boxes(height: int, width: int, n: int = 40, seed: int = 0) -> Boxes:
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height] * 2, dtype=torch.float32)
    low, span = MARGIN, 1 - 2 * MARGIN
    a, b = low + span * torch.rand(n, 2, generator=g), low + span * torch.rand(n, 2, generator=g)
    return Boxes(torch.cat([torch.minimum(a, b), torch.maximum(a, b) + 0.02 * span], 1).clamp(max=1 - MARGIN) * size)


def proposals_of(sizes):
    out = []
    for k, (h, w) in enumerate(sizes):
        p = Instances((h, w))
        p.proposal_boxes = interior_boxes(h, w, seed=k)
        out.append(p)
    return out


def expected_rows(proposals) -> torch.Tensor:
    """The normalised centre of every proposal, in the order of the rows."""
    rows = []
    for p in proposals:
        h, w = p.image_size
        rows.append(p.proposal_boxes.get_centers() / torch.tensor([w, h]))
    return torch.cat(rows)


def scored_rows(teacher: FrozenTeacher, sizes, bgr: bool = False):
    inputs = [{"image": ramp_image(h, w, bgr)} for h, w in sizes]
    proposals = proposals_of(sizes)
    features = teacher.features(inputs)
    return (teacher.box_logits(features, teacher.teacher_boxes(proposals))[:, :2],
            teacher.box_logits(features, [p.proposal_boxes for p in proposals])[:, :2], expected_rows(proposals))


@pytest.mark.parametrize("sizes, input_size, seen", [
    ([(96, 128), (128, 80)], None, [(96, 128), (128, 80)]),
    ([(96, 128), (128, 80)], (64, 64), [(48, 64), (64, 40)]),  # down, and capped by max_size
    ([(96, 128), (60, 100)], (160, 256), [(160, 213), (154, 256)]),  # up, one of them capped
])
@pytest.mark.parametrize("bgr", [False, True], ids=["rgb", "bgr-student"])
def test_teacher_logits_score_the_students_boxes_row_by_row(sizes, input_size, seen, bgr):
    teacher = FrozenTeacher(coordinate_teacher(), input_size=input_size)
    teacher.take_inputs_of("BGR" if bgr else "RGB")
    assert [teacher.image_size(h, w) for h, w in sizes] == seen
    rows, unscaled_rows, expected = scored_rows(teacher, sizes, bgr)
    assert len(rows) == 80
    assert torch.allclose(rows, expected, atol=2e-3), (rows - expected).abs().max()
    if input_size is not None:  # the control: the student's boxes as they are land elsewhere
        assert (unscaled_rows - expected).abs().max() > 0.1


@square_padding
def test_a_square_padded_teacher_scores_the_students_boxes_row_by_row():
    """ViTDet's case: the teacher pads to a square (its backbone's padding_constraints)."""
    teacher = FrozenTeacher(coordinate_teacher(square_size=64), input_size=(64, 64))
    rows, _, expected = scored_rows(teacher, [(96, 128), (128, 80)])
    features = teacher.features([{"image": ramp_image(96, 128)}])
    assert tuple(features[0].shape[-2:]) == (64, 64)  # 48x64, padded
    assert torch.allclose(rows, expected, atol=2e-3)


@square_padding
def test_images_larger_than_the_teachers_square_are_refused_naming_input_size():
    teacher = FrozenTeacher(coordinate_teacher(square_size=64), keys=LAZY_KEYS)
    with pytest.raises(ConfigError, match=r"pads its images to a 64 px square .* given a 96x128 image: set "
                                          r"model.teacher.input_size to \(64, 64\)"):
        teacher.features([{"image": ramp_image(96, 128)}])
    with pytest.raises(ConfigError, match=r"model.teacher.input_size \(64, 100\) resizes images to a longer side of "
                                          r"up to 100 px, but the teacher pads them to a 64 px square"):
        FrozenTeacher(coordinate_teacher(square_size=64), keys=LAZY_KEYS, input_size=(64, 100))


def _ramp_batch(sizes):
    out = []
    for k, (h, w) in enumerate(sizes):
        inst = Instances((h, w))
        inst.gt_boxes = interior_boxes(h, w, n=3, seed=10 + k)
        inst.gt_classes = torch.arange(3) % NUM_CLASSES
        out.append({"image": ramp_image(h, w), "instances": inst, "height": h, "width": w})
    return out


def test_distill_rcnn_hands_its_loss_teacher_rows_of_its_own_proposals():
    """End to end: the rows DistillRCNN's loss gets from a teacher at another size are those of the
    student's sampled proposals, in their order."""
    args = GeneralizedRCNN.from_config(tiny_cfg())
    teacher = FrozenTeacher(coordinate_teacher(), input_size=(64, 64))
    model = DistillRCNN(teacher=teacher, distill_loss=build_distill_loss({"method": "kd"}, NUM_CLASSES), **args)
    predictor = model.roi_heads.box_predictor
    distiller, seen = predictor.distiller, {}

    def loss(student_logits, teacher_logits, labels, **kwargs):
        seen["teacher"] = teacher_logits
        return {"loss_kd": student_logits.sum() * 0}

    def recording(student_logits, proposals):
        seen["proposals"] = proposals
        return distiller(student_logits, proposals)

    distiller.loss = loss
    predictor.distiller = recording
    with EventStorage(0):
        model.train()(_ramp_batch([(96, 128), (128, 96)]))
    proposals = seen["proposals"]
    expected = expected_rows(proposals)
    rows = seen["teacher"][:, :2]
    assert len(rows) == sum(len(p) for p in proposals) == 2 * 32  # ROI_HEADS.BATCH_SIZE_PER_IMAGE
    inside = torch.cat([((b.tensor[:, :2] >= MARGIN * torch.tensor([w, h]))
                         & (b.tensor[:, 2:] <= (1 - MARGIN) * torch.tensor([w, h]))).all(1)
                        for b, (h, w) in ((p.proposal_boxes, p.image_size) for p in proposals)])
    assert inside.sum() >= 10  # enough rows away from the border to tell
    assert torch.allclose(rows[inside], expected[inside], atol=2e-3)


def test_yacs_input_size_reaches_the_teacher_and_bad_values_are_refused(tmp_path):
    teacher = write_teacher(tmp_path)
    cfg = distill_cfg(tmp_path, "kd", teacher=teacher)
    cfg.MODEL.TEACHER.INPUT_SIZE = (64, 80)
    check_distill_config(cfg)
    built = build_teacher(*teacher, keys=LAZY_KEYS, input_size=[64, 80])
    assert built.input_size == (64, 80) and built.image_size(96, 128) == (60, 80)
    for bad in [(64,), (0, 64), (64.0, 80), "64"]:
        cfg.MODEL.TEACHER.INPUT_SIZE = bad
        with pytest.raises(ConfigError, match=r"MODEL.TEACHER.INPUT_SIZE must be \(short_edge, max_size\)"):
            check_distill_config(cfg)


def test_lazy_input_size_and_amp_on_the_cpu_are_checked_before_any_work(tmp_path):
    config = str(REPO / "configs/embedded/topkd.py")
    no_data = ["dataloader.train.dataset.names=[]", "dataloader.test.dataset.names=[]"]
    with pytest.raises(ConfigError, match=r"model.teacher.input_size must be \(short_edge, max_size\).*got \[0, 5\]"):
        lazy_engine.check(config, ["model.teacher.input_size=[0,5]", *no_data])
    with pytest.raises(ConfigError, match=r"train.amp.enabled is on, but train.device is 'cpu': Detectron2's "
                                          r"AMPTrainer trains on CUDA only"):
        lazy_engine.check(config, ["train.amp.enabled=True", *no_data])
    cfg = load_config(REPO / "configs/embedded/topkd.yaml", ["SOLVER.AMP.ENABLED", True])
    with pytest.raises(ConfigError, match=r"SOLVER.AMP.ENABLED is on, but MODEL.DEVICE is 'cpu'"):
        check_distill_config(cfg)
