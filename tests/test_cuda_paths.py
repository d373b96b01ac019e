"""The CUDA paths: losses and their gradients on the GPU against the CPU, no host sync in any loss, autocast
around the losses, the classification step under bf16 and fp16 AMP, the fast path's CUDA graph against
the DataLoader path, and DistillRCNN (the tiny R-CNN, and the embedded ViTDet pair) with a bf16 teacher
and Detectron2's AMPTrainer. Skipped without a GPU (CI); benchmarks/gpu_suite.sh runs them on one."""
import contextlib

import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from topkd_det.classification.checkpoint import load_file
from topkd_det.classification.distiller import Distiller
from topkd_det.classification.engine import Trainer, TrainStep
from topkd_det.classification.models import build_model as build_cls_model
from topkd_det.core import build_loss
from topkd_det.detection.vitdet import vit_backbone_available

from cls_fixtures import fashion_dir, killed_after_first_checkpoint_then_resumed, tiny_cfg
from conftest import REPO
from detection_fixtures import batch, distill_cfg, write_teacher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
METHODS = {"kd": {}, "dkd": {}, "ttm": {}, "wttm": {}, "gdkd": {"gdkd": {"k": 3}}, "gdkd3": {"gdkd3": {"k": 3}},
           "topkd": {"topkd": {"k": 3}}, "topkd-image": {"topkd": {"k": 3, "scope": "image"}},
           "dkd-plugins": {"plugin": {"tsm": True, "tdl": True}, "topkd": {"k": 3}},
           "topkd-rows": {"topkd": {"k": 3, "max_rows": 16, "normalize": False, "negatives": "other_label"}},
           "wttm-skip": {"plugin": {"tsm": True, "tdl": True}, "topkd": {"k": 3}, "nonfinite": "skip",
                         "logit_standardize": True}}


@contextlib.contextmanager
def no_host_sync():
    """torch raises on any operation that waits for the GPU (``.item()``, ``nonzero``, a copy to the host)."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_losses_forward_and_backward_never_wait_for_the_gpu(name):
    s, t, y = (v.to(CUDA) for v in _logits())
    groups = (torch.arange(len(y)) * 4 // len(y)).to(CUDA)
    loss = _loss(name).to(CUDA)
    student = s.clone().requires_grad_(True)
    progress = torch.tensor(0.5, device=CUDA)
    with no_host_sync():
        for _ in range(2):
            sum(loss(student, t, y, progress=progress, groups=groups).values()).backward()
    assert loss.check_faults().bad_batches == 0  # the one read, at the logging point


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


# --- the fast classification path (FAST_PATH): compiled step in a CUDA graph -------------------------
@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """Fashion-MNIST-format data (74 train images a epoch: batches of 16 and a last one of 10) and a teacher."""
    tmp = tmp_path_factory.mktemp("fast_cuda")
    data = fashion_dir(tmp, n_train=90)
    torch.manual_seed(1)
    teacher = tmp / "teacher.pth"
    torch.save(build_cls_model("fmnist_teacher", 10).state_dict(), teacher)
    return tmp, data, teacher


@pytest.fixture
def no_tf32():
    """cuDNN's convolutions in full float32, so that two paths' kernels differ by rounding only."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def _fast_cfg(fast_run, name, *opts):
    tmp, data, teacher = fast_run
    cfg, _ = tiny_cfg(tmp, data, "DISTILL.METHOD", "topkd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS",
                      str(teacher), "DISTILL.TOPKD.K", 3, "DISTILL.WARMUP", 1.0, "LOG.PERIOD", 1, *opts, name=name)
    return cfg


def test_fast_path_on_cuda_matches_the_loader_path(fast_run, no_tf32):
    """The inductor-compiled step replayed from its CUDA graph, two epochs with an LR decay between them
    and a last smaller batch each: the same losses and weights as the DataLoader path (tolerances of GPU
    kernels and compilation, as the loss tests above)."""
    runs = {}
    for mode in ("never", "always"):
        cfg = _fast_cfg(fast_run, f"cuda_{mode}", "FAST_PATH", mode)
        trainer = Trainer(cfg)
        assert trainer.env.device.type == "cuda" and (trainer.fast is not None) == (mode == "always")
        runs[mode] = trainer.train(), trainer.student.state_dict(), trainer
    (ref, ref_weights, _), (out, weights, trainer) = runs["never"], runs["always"]
    assert trainer.fast.graph is not None  # the full batches were replayed from the captured graph
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name].float(), value.float(), rtol=1e-3, atol=1e-4, msg=name)
    for key in ("val/loss", "test/loss"):
        assert out["last"][key] == pytest.approx(ref["last"][key], rel=1e-3), key


def test_fast_path_steps_never_wait_for_the_gpu(fast_run):
    """Epoch 1 compiles and captures (which synchronises); epoch 2's steps, replays and the last uncaptured
    batch, never wait for the GPU."""
    cfg = _fast_cfg(fast_run, "cuda_nosync", "FAST_PATH", "always")
    trainer = Trainer(cfg)
    trainer.distiller.train()
    for epoch in range(2):
        trainer.sampler.set_epoch(epoch)
        trainer.fast.start_epoch(*trainer._epoch_plan())  # one copy of the epoch's plan to the GPU
        iters = trainer.fast.iterations()
        with no_host_sync() if epoch else contextlib.nullcontext():
            for it in range(iters):
                trainer.fast.run(it, epoch + it / iters)
        assert trainer.fast.take().reduce(trainer.env)["loss"] > 0


def test_fast_path_on_cuda_resumes_where_it_stopped(fast_run, monkeypatch, no_tf32):
    """Killed after epoch 1 and resumed: the graph is captured again on the restored weights and momentum
    (whose layout must follow the channels_last parameters), and ends where the uninterrupted run does."""
    opts = ["FAST_PATH", "always", "SOLVER.EPOCHS", 3, "SOLVER.LR_DECAY_STAGES", "[2]"]
    whole = _fast_cfg(fast_run, "cuda_whole", *opts)
    Trainer(whole).train()
    cfg = _fast_cfg(fast_run, "cuda_killed", *opts)
    killed_after_first_checkpoint_then_resumed(cfg, monkeypatch)
    ref, out = load_file(f"{whole.OUTPUT_DIR}/last.pth")["model"], load_file(f"{cfg.OUTPUT_DIR}/last.pth")["model"]
    for name, value in ref.items():
        torch.testing.assert_close(out[name].float(), value.float(), rtol=1e-3, atol=1e-4, msg=name)


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
