"""The CUDA paths: losses and their gradients on the GPU against the CPU, autocast around the losses, the
classification step under bf16 and fp16 AMP, and DistillRCNN (the tiny R-CNN, and the embedded ViTDet
pair) with a bf16 teacher and Detectron2's AMPTrainer. Skipped without a GPU (CI); benchmarks/gpu_suite.sh
runs them on one."""
import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from topkd_det.classification.distiller import Distiller
from topkd_det.classification.engine import TrainStep
from topkd_det.classification.models import build_model as build_cls_model
from topkd_det.core import build_loss
from topkd_det.detection.vitdet import vit_backbone_available

from conftest import REPO
from detection_fixtures import batch, distill_cfg, write_teacher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
METHODS = {"kd": {}, "dkd": {}, "ttm": {}, "wttm": {}, "gdkd": {"gdkd": {"k": 3}}, "gdkd3": {"gdkd3": {"k": 3}},
           "topkd": {"topkd": {"k": 3}}, "topkd-image": {"topkd": {"k": 3, "scope": "image"}},
           "dkd-plugins": {"plugin": {"tsm": True, "tdl": True}, "topkd": {"k": 3}}}


def _loss(name):
    return build_loss(name.split("-")[0], **METHODS[name])


def _logits(n=48, c=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), 3 * torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_losses_and_gradients_on_cuda_match_the_cpu(name):
    s, t, y = _logits()
    groups = torch.arange(len(y)) * 4 // len(y)
    results = []
    for device in (torch.device("cpu"), CUDA):
        sd = s.to(device, copy=True).requires_grad_(True)
        terms = _loss(name)(sd, t.to(device), y.to(device), groups=groups.to(device))
        sum(terms.values()).backward()
        results.append(({k: float(v.detach()) for k, v in terms.items()}, sd.grad.cpu()))
    (ref, ref_grad), (out, grad) = results
    assert out == pytest.approx(ref, rel=1e-4, abs=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_cuda_autocast_does_not_lower_the_losses_precision(name, dtype):
    """The contrastive's matrix product and every other term stay float32 inside a CUDA autocast region."""
    s, t, y = (v.to(CUDA) for v in _logits())
    groups = (torch.arange(len(y)) * 4 // len(y)).to(CUDA)
    loss = _loss(name)
    ref = {k: float(v) for k, v in loss(s, t, y, groups=groups).items()}
    with torch.autocast("cuda", dtype=dtype):
        out = loss(s, t, y, groups=groups)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert {k: float(v) for k, v in out.items()} == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_classification_step_under_cuda_amp(amp_dtype):
    torch.manual_seed(0)
    student, teacher = build_cls_model("resnet8x4", 10).to(CUDA), build_cls_model("resnet8x4", 10).to(CUDA)
    distiller = Distiller(student, teacher, build_loss("topkd", topkd={"k": 3}))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    step = TrainStep(distiller, optimizer, "cuda", True, amp_dtype)
    before = [p.detach().clone() for p in student.parameters()]
    x, y = torch.randn(16, 3, 32, 32, device=CUDA), torch.randint(0, 10, (16,), device=CUDA)
    # fp16's grad scaler skips the first updates while it lowers its scale from 2**16 to what fits.
    for _ in range(20):
        logits, losses, loss = step(x, y, progress=100.0)
    assert logits.dtype == (torch.bfloat16 if amp_dtype == "bf16" else torch.float16)
    assert all(v.dtype == torch.float32 for v in losses.values()) and torch.isfinite(loss)
    assert step.scaler.is_enabled() == (amp_dtype == "fp16")
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(not p.requires_grad for p in teacher.parameters())


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


def _cuda_model(tmp_path, teacher_files, teacher_dtype="float32", method="topkd"):
    cfg = distill_cfg(tmp_path, method, teacher=teacher_files)
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.TEACHER.DTYPE = teacher_dtype
    return build_model(cfg)


def _cuda_batch():
    return [dict(x, image=x["image"].to(CUDA)) for x in batch(2)]


def test_bfloat16_teacher_on_cuda_matches_float32(tmp_path, teacher_files):
    inputs = _cuda_batch()
    boxes = [x["instances"].gt_boxes.to(CUDA) for x in inputs]
    fp32, bf16 = (_cuda_model(tmp_path, teacher_files, d).teacher for d in ("float32", "bfloat16"))
    a, b = (t.box_logits(t.features(inputs), boxes) for t in (fp32, bf16))
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item())


@pytest.mark.parametrize("teacher_dtype", ["float32", "bfloat16"])
def test_distill_rcnn_trains_with_detectron2s_amp_trainer(tmp_path, teacher_files, teacher_dtype):
    """SOLVER.AMP.ENABLED's trainer: float16 student, the teacher in its own dtype, finite losses."""
    torch.manual_seed(0)
    model = _cuda_model(tmp_path, teacher_files, teacher_dtype)
    seen = []
    original = model.teacher.box_logits

    def spy(features, boxes, stage):
        seen.append({f.dtype for f in features})
        return original(features, boxes, stage)

    model.teacher.box_logits = spy
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = AMPTrainer(model, iter([_cuda_batch()] * 3), optimizer)
    with EventStorage(0) as storage:
        for _ in range(3):
            trainer.run_step()
            storage.step()
    expected = torch.float32 if teacher_dtype == "float32" else torch.bfloat16
    assert seen and all(dtypes == {expected} for dtypes in seen)
    latest = storage.latest()
    assert {"loss_con", "loss_tdl"} <= set(latest)
    assert all(torch.isfinite(torch.tensor(v)) for v, _ in latest.values())


@pytest.mark.skipif(not vit_backbone_available(), reason="this Detectron2 (0.6) has no ViT backbone")
def test_embedded_vitdet_pair_trains_with_detectron2s_amp_trainer(tmp_path):
    """ViTDet's recipe (train.amp.enabled): the tiny ViTDet student in float16 under AMPTrainer with its
    layer-wise LR decay AdamW, the teacher in float32, finite losses, the student's weights moved."""
    from detectron2.config import instantiate

    from topkd_det.detection.lazy_engine import load_lazy_config, student_only

    teacher_cfg = load_lazy_config(str(REPO / "configs/embedded/vitdet_teacher.py"))
    weights = tmp_path / "teacher.pth"
    torch.save({"model": instantiate(student_only(teacher_cfg.model)).state_dict()}, weights)
    cfg = load_lazy_config(str(REPO / "configs/embedded/vitdet_topkd.py"), [f"model.teacher.weights={weights}"])
    model = instantiate(cfg.model).to(CUDA)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    inputs = [dict(x, image=x["image"].to(CUDA)) for x in batch(2, size=128)]
    for x in inputs:
        x["instances"].gt_classes %= model.roi_heads.num_classes
    trainer = AMPTrainer(model, iter([inputs] * 20), optimizer)
    with EventStorage(0) as storage:
        for _ in range(20):  # the grad scaler skips the first updates while it finds its scale
            trainer.run_step()
            storage.step()
    latest = storage.latest()
    assert {"loss_con", "loss_tdl", "loss_cls"} <= set(latest)
    assert all(torch.isfinite(torch.tensor(v)) for v, _ in latest.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.teacher.model.parameters())
