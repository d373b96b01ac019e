"""The ViT-student setting: the four transformers, AdamW with a warmup-cosine LR, the randaug pipeline,
the teacher's own input size, and the config checks around them."""
import json

import pytest
import timm
import torch
from timm.scheduler.cosine_lr import CosineLRScheduler

from cls_fixtures import cifar_dir, killed_after_first_checkpoint_then_resumed, tiny_cfg
from topkd_det.classification.checkpoint import load_file
from topkd_det.classification.config import ConfigError, load_cls_cfg
from topkd_det.classification.data import build_splits
from topkd_det.classification.distiller import ResizedInput, build_teacher
from topkd_det.classification.engine import Trainer
from topkd_det.classification.models import FIXED_INPUT_SIZE, build_model
from topkd_det.classification.optim import build_optimizer, build_scheduler, cosine_warmup_factor, param_groups
from topkd_det.classification.transforms import IMAGENET_MEAN, IMAGENET_STD

VITS = ("deit_tiny", "t2t_vit_7", "pit_tiny", "pvt_tiny")
# Published ImageNet (1000-class, 224 px) parameter counts, in millions, rounded by their authors:
#   DeiT-Ti 5.7M: PiT paper (Heo et al., ICCV 2021) Table 5 and PVT paper (Wang et al., ICCV 2021) Table 2
#     (the DeiT paper's own Table 1 rounds it to 5M);
#   T2T-ViT-7 4.3M: T2T-ViT paper (Yuan et al., ICCV 2021) Table and its README;
#   PiT-Ti 4.9M: PiT paper Table 5;
#   PVT-Tiny 13.2M: PVT paper Table 2.
PUBLISHED_MILLIONS = {"deit_tiny": 5.7, "t2t_vit_7": 4.3, "pit_tiny": 4.9, "pvt_tiny": 13.2}
# timm ships two of the four; ours must have exactly their parameter count.
TIMM_TWINS = {"deit_tiny": "deit_tiny_patch16_224", "pit_tiny": "pit_ti_224"}


pytestmark = pytest.mark.usefixtures("single_thread")


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", VITS)
def test_parameter_count_matches_the_published_one(name):
    count = _trainable(build_model(name, num_classes=1000))
    # Published counts are rounded to 0.1M (PiT-Ti's 4.85M is printed as 4.9M): allow 1.5 %.
    assert count / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], rel=0.015)
    if name in TIMM_TWINS:
        assert count == _trainable(timm.create_model(TIMM_TWINS[name], pretrained=False))
    # The CIFAR-100 model differs only in its head.
    small = build_model(name, num_classes=100)
    assert count - _trainable(small) == 900 * (small.feature_dim + 1)


@pytest.mark.parametrize("name", VITS)
def test_forward_and_backward_at_the_input_size(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100).train()
    size = FIXED_INPUT_SIZE[name]
    assert size == 224
    logits, feats = model(torch.randn(2, 3, size, size), return_features=True)
    assert logits.shape == (2, 100) and feats.shape == (2, model.feature_dim)
    torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None]
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("fc."))


def test_t2t_fixed_tables_are_buffers_not_parameters():
    model = build_model("t2t_vit_7", num_classes=100)
    buffers = dict(model.named_buffers())
    assert {"pos_embed", "performer1.features", "performer2.features"} <= set(buffers)
    assert buffers["pos_embed"].shape == (1, 14 * 14 + 1, 256)
    # sin at even channels, cos at odd ones: position 0 is (0, 1, 0, 1, ...)
    assert torch.equal(buffers["pos_embed"][0, 0, :4], torch.tensor([0.0, 1.0, 0.0, 1.0]))


# -- optimiser and schedule --------------------------------------------------------------------------
def test_adamw_groups_skip_decay_on_norms_biases_and_tokens():
    model = build_model("deit_tiny", num_classes=10)
    decay, no_decay = param_groups(model, 0.05, True)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "fc.bias", "blocks.0.attn.qkv.bias"} <= skipped
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (single,) = param_groups(model, 5e-4, False)
    assert len(single["params"]) == len(list(model.parameters()))


def test_cosine_with_warmup_equals_timms_scheduler_every_epoch():
    """The setting steps timm's CosineLRScheduler once per epoch: ours must give the same LR throughout."""
    epochs, warmup, lr, min_lr, factor = 300, 20, 5e-4, 5e-6, 1e-3
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ref = CosineLRScheduler(ref_opt, t_initial=epochs, lr_min=min_lr, warmup_t=warmup, warmup_lr_init=factor * lr)
    for epoch in range(epochs):
        ref.step(epoch)
        ours = lr * cosine_warmup_factor(epoch, epochs, warmup, factor, min_lr / lr)
        assert ours == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9), epoch


def test_vit_config_builds_adamw_and_its_schedule():
    cfg = load_cls_cfg("configs/cifar100/resnet56_deit_tiny/topkd.yaml", check_files=False)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    lrs = []
    for _ in range(cfg.SOLVER.EPOCHS):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(5e-7) and lrs[20] == pytest.approx(5e-4 * (0.01 + 0.99 * 0.5 * (1 + 0.9781476)),
                                                                       rel=1e-6)
    assert max(lrs) == lrs[20] and lrs[-1] == pytest.approx(5e-6, rel=0.01)
    assert (cfg.MODEL.TEACHER, cfg.MODEL.TEACHER_INPUT_SIZE, cfg.DATASET.INPUT_SIZE) == ("resnet56", 32, 224)
    assert (cfg.DATASET.TRANSFORM, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.EPOCHS) == ("randaug", 128, 300)


# -- data --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return cifar_dir(tmp_path_factory.mktemp("cifar"))


def _cifar_cfg(tmp_path, root, *opts, name="run"):
    return tiny_cfg(tmp_path, root, *opts, name=name, MODEL={"STUDENT": "resnet8"},
                    DATASET={"NAME": "cifar100", "ROOT": str(root), "VAL_SIZE": 4},
                    SOLVER={"BATCH_SIZE": 8, "EPOCHS": 2, "LR": 0.05, "LR_DECAY_STAGES": [1]})[0]


def test_randaug_pipeline_resizes_augments_and_normalises(tmp_path, cifar):
    cfg = _cifar_cfg(tmp_path, cifar, "DATASET.TRANSFORM", "randaug", "DATASET.INPUT_SIZE", 48)
    splits = build_splits(cfg)
    x, y = splits.train[0]
    assert x.shape == (3, 48, 48) and 0 <= int(y) < 100
    torch.manual_seed(1)
    a = splits.train[0][0]
    torch.manual_seed(2)
    assert not torch.equal(a, splits.train[0][0])  # train is random
    t1, t2 = splits.test[0][0], splits.test[0][0]
    assert torch.equal(t1, t2) and t1.shape == (3, 48, 48)  # test is not
    raw = splits.test.images[0].float().div(255)  # the test image, resized, under ImageNet mean/std
    expected = torch.nn.functional.interpolate(raw[None], size=(48, 48), mode="bilinear", align_corners=False,
                                               antialias=True)[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert (t1 * std + mean - expected).abs().mean() < 0.02
    assert len(splits.val) == 4


def test_crop_flip_pipeline_resizes_batches_to_the_input_size(tmp_path, cifar):
    splits = build_splits(_cifar_cfg(tmp_path, cifar, "DATASET.INPUT_SIZE", 40))
    for ds in (splits.train, splits.val, splits.test):
        x, _ = ds.__getitems__([0, 1])
        assert x.shape == (2, 3, 40, 40)


def test_teacher_reads_its_own_input_size(tmp_path, cifar):
    teacher_cfg = _cifar_cfg(tmp_path, cifar, "SOLVER.EPOCHS", 1, name="teacher")
    Trainer(teacher_cfg).train()
    cfg = _cifar_cfg(tmp_path, cifar, "DATASET.INPUT_SIZE", 64, "DISTILL.METHOD", "kd", "MODEL.TEACHER", "resnet8",
                     "MODEL.TEACHER_INPUT_SIZE", 32, "MODEL.TEACHER_WEIGHTS", f"{teacher_cfg.OUTPUT_DIR}/last.pth")
    teacher = build_teacher(cfg)
    assert isinstance(teacher, ResizedInput) and teacher.size == 32
    seen = []
    teacher.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    teacher(torch.randn(2, 3, 64, 64))
    assert seen == [(2, 3, 32, 32)]
    results = Trainer(cfg).train()  # the teacher is evaluated and distilled from through the resize
    assert results["teacher"]["test/top1"] >= 0 and results["last"]["epoch"] == 2


def test_adamw_cosine_randaug_run_resumes_bitwise(tmp_path, cifar, monkeypatch):
    opts = ["DATASET.TRANSFORM", "randaug", "SOLVER.OPTIMIZER", "adamw", "SOLVER.LR", "0.001",
            "SOLVER.LR_SCHEDULER", "cosine", "SOLVER.WARMUP_EPOCHS", 1, "SOLVER.EPOCHS", 3, "SOLVER.MIN_LR", "1e-5",
            "SOLVER.SKIP_DECAY_NORM_BIAS_TOKENS", "True", "SOLVER.WEIGHT_DECAY", "0.05"]
    whole = _cifar_cfg(tmp_path, cifar, *opts, name="whole")
    Trainer(whole).train()
    cfg = _cifar_cfg(tmp_path, cifar, *opts, name="killed")
    killed_after_first_checkpoint_then_resumed(cfg, monkeypatch)
    a, b = load_file(f"{whole.OUTPUT_DIR}/last.pth"), load_file(f"{cfg.OUTPUT_DIR}/last.pth")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    lrs = [json.loads(line)["lr"] for line in open(f"{whole.OUTPUT_DIR}/metrics.jsonl")
           if json.loads(line)["type"] == "epoch"]
    assert lrs[0] == pytest.approx(1e-6) and lrs[1] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * 1.5)


# -- config checks -----------------------------------------------------------------------------------
def _fm(*extra):
    return ["DATASET.NAME", "fashion_mnist", "MODEL.STUDENT", "fmnist_student", *extra]


@pytest.mark.parametrize("opts, fragment", [
    (_fm("SOLVER.OPTIMIZER", "adam"), "SOLVER.OPTIMIZER='adam'"),
    (_fm("SOLVER.LR_SCHEDULER", "poly"), "SOLVER.LR_SCHEDULER='poly'"),
    (_fm("SOLVER.LR_SCHEDULER", "cosine", "SOLVER.WARMUP_EPOCHS", "-1"), "SOLVER.WARMUP_EPOCHS"),
    (_fm("SOLVER.LR_SCHEDULER", "cosine", "SOLVER.WARMUP_EPOCHS", "240"), "SOLVER.WARMUP_EPOCHS"),
    (_fm("SOLVER.WARMUP_EPOCHS", "1"), "SOLVER.LR_SCHEDULER cosine only"),
    (_fm("SOLVER.LR_SCHEDULER", "cosine", "SOLVER.WARMUP_FACTOR", "0.0"), "SOLVER.WARMUP_FACTOR"),
    (_fm("SOLVER.MIN_LR", "1.0"), "SOLVER.MIN_LR"),
    (_fm("SOLVER.LR", "0.0"), "SOLVER.LR must be > 0"),
    (_fm("SOLVER.WEIGHT_DECAY", "-0.1"), "SOLVER.WEIGHT_DECAY"),
    (_fm("SOLVER.BETAS", "[0.9]"), "SOLVER.BETAS"),
    (_fm("SOLVER.OPTIMIZER", "adamw", "SOLVER.NESTEROV", "True"), "SOLVER.NESTEROV"),
    (_fm("DATASET.TRANSFORM", "autoaug"), "DATASET.TRANSFORM='autoaug'"),
    (_fm("DATASET.TRANSFORM", "randaug"), "cifar100 only"),
    (_fm("DATASET.INPUT_SIZE", "-2"), "DATASET.INPUT_SIZE"),
    (_fm("MODEL.TEACHER_INPUT_SIZE", "2.5"), "MODEL.TEACHER_INPUT_SIZE"),
    (["MODEL.STUDENT", "deit_tiny"], "DATASET.INPUT_SIZE 224"),
    (["MODEL.STUDENT", "pvt_tiny", "DATASET.INPUT_SIZE", "32"], "reads 224 px"),
    (["DATASET.NAME", "imagenet", "MODEL.STUDENT", "resnet18", "DATASET.INPUT_SIZE", "112"], "DATASET.INPUT_SIZE=112"),
    (_fm("DISTILL.METHOD", "gdkd3", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", "t.pth",
         "DISTILL.GDKD3.K", "1"), "DISTILL.GDKD3.K must be >= 2, got 1"),
    (_fm("DISTILL.METHOD", "gdkd3", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", "t.pth",
         "DISTILL.GDKD3.K", "10"), "DISTILL.GDKD3.K=10 must satisfy 2 <= k < C=10"),
])
def test_bad_solver_and_input_values_name_their_key(opts, fragment):
    with pytest.raises(ConfigError) as info:
        load_cls_cfg(None, opts, check_files=False)
    assert fragment in str(info.value)


def test_shipped_vit_config_trains_through_the_trainer(tmp_path, cifar):
    """configs/cifar100/resnet56_deit_tiny/kd_ls.yaml end to end on fixture data, shortened to one step."""
    teacher = _cifar_cfg(tmp_path, cifar, "MODEL.STUDENT", "resnet56", "SOLVER.EPOCHS", 1, name="teacher")
    Trainer(teacher).train()
    cfg = load_cls_cfg("configs/cifar100/resnet56_deit_tiny/kd_ls.yaml", [
        "DATASET.ROOT", str(cifar), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "4", "DATASET.VAL_SIZE", "2",
        "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "TEST.BATCH_SIZE", "16",
        "MODEL.TEACHER_WEIGHTS", f"{teacher.OUTPUT_DIR}/last.pth", "OUTPUT_DIR", str(tmp_path / "deit"),
        "LOG.TENSORBOARD", "False"])
    results = Trainer(cfg).train()
    epoch = [json.loads(line) for line in open(tmp_path / "deit" / "metrics.jsonl") if '"epoch"' in line][-1]
    assert results["last"]["epoch"] == 1 and 0 <= results["last"]["test/top1"] <= 100
    assert epoch["train/loss_kd"] > 0 and "train/loss_ce" not in epoch  # the setting's KD: CE weight 0
    assert load_file(f"{cfg.OUTPUT_DIR}/last.pth")["model"]["pos_embed"].shape == (1, 197, 192)
