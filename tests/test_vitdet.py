"""ViTDet students and teachers through LazyConfig (docs/vitdet.md).

On the official Detectron2 (main): the COCO configs are projects/ViTDet's own models, data and recipe
(compared against projects/ViTDet/configs from the Detectron2 source archive), every pair builds, the
layer-wise LR decay groups hold the student only, the embedded tiny pair trains offline through
tools/lazyconfig_train_net.py, under CPU autocast, and in two processes with fp16 gradient compression.
On Detectron2 0.6, which has no ViT backbone, every ViTDet config is refused in one line.
"""
import functools
import json
import os
import subprocess
import sys
import tarfile
import types
import uuid
from pathlib import Path

import detectron2
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from omegaconf import DictConfig, ListConfig, OmegaConf

import topkd_det.detection.teacher as teacher_module
from topkd_det.config_io import ConfigError
from topkd_det.data.synthetic_coco import SyntheticConfig, generate, json_path
from topkd_det.detection import build_distill_loss, lazy_engine, tool
from topkd_det.detection.datasets import register_synthetic
from topkd_det.detection.families import family_name
from topkd_det.detection.lazy_engine import load_lazy_config, student_only
from topkd_det.detection.teacher import model_zoo_config_file
from topkd_det.detection.vitdet import vit_backbone_available

from conftest import REPO, load_tool
from detection_fixtures import NUM_CLASSES, batch, distill_cfg

HAS_VIT = vit_backbone_available()
needs_vit = pytest.mark.skipif(not HAS_VIT, reason="this Detectron2 (0.6) has no ViT backbone")
COCO_CONFIGS = sorted((REPO / "configs/COCO-ViTDet").glob("*.py"))
EMBEDDED_CONFIGS = sorted((REPO / "configs/embedded").glob("vitdet_*.py"))
PAIRS = ("cascade_L_mask_B", "cascade_L_cascade_B", "mask_B_mask_R50")
METHODS = {"kd": {"temperature": 1.0, "weight": 1.0}, "dkd": {"alpha": 1.0, "beta": 0.25, "temperature": 1.0,
                                                              "weight": 1.0},
           "topkd": {"k": 10, "alpha": 3.0, "beta": 1.0}}
EMBEDDED = REPO / "configs/embedded/vitdet_topkd.py"


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- Detectron2 0.6 ------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_VIT, reason="this Detectron2 has the ViT backbone")
@pytest.mark.parametrize("config", COCO_CONFIGS + EMBEDDED_CONFIGS, ids=lambda p: p.name)
def test_on_detectron2_0_6_every_vitdet_config_is_refused_in_one_line_naming_the_official_build(config):
    with pytest.raises(ConfigError) as refused:
        load_lazy_config(str(config))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(config))
    assert "needs the official Detectron2 (main, built from source)" in message
    assert "has none (Detectron2 0.6 predates ViTDet)" in message and "tools/install_detectron2.py --source" in message


@pytest.mark.skipif(HAS_VIT, reason="this Detectron2 has the ViT backbone")
def test_on_detectron2_0_6_the_tool_refuses_a_vitdet_config_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools/lazyconfig_train_net.py"), "--config-file", str(EMBEDDED),
                           f"train.output_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "official Detectron2 (main" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


# --- the COCO configs against projects/ViTDet -------------------------------------------------------------
def _source_archive():
    given = os.environ.get("D2_SOURCE")
    found = [Path(given)] if given else sorted((REPO.parent / "shared" / "vendor").glob("detectron2-*.tar.gz"))
    return found[0] if found and found[0].is_file() else None


@pytest.fixture(scope="module")
def projects_vitdet(tmp_path_factory):
    """projects/ViTDet/configs from the official Detectron2 source archive (make test-d2main's D2_SOURCE)."""
    archive = _source_archive()
    if archive is None:
        pytest.skip("no Detectron2 source archive (../shared/vendor/detectron2-*.tar.gz or $D2_SOURCE)")
    out = tmp_path_factory.mktemp("d2_source")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/projects/ViTDet/configs/" in m.name and m.isfile()]
        tar.extractall(out, members=members, filter="data")
    (configs,) = {Path(out, m.name.split("/projects/")[0], "projects/ViTDet/configs") for m in members}
    return configs


def _load_theirs(monkeypatch, path: Path) -> DictConfig:
    """A projects/ViTDet config. They call ``model_zoo.get_config``; here it reads the same files of the
    installed model zoo without importing detectron2.model_zoo (its pkg_resources import fails beside
    this setuptools)."""
    zoo = Path(model_zoo_config_file("common/train.py")).parents[1]
    stub = types.ModuleType("detectron2.model_zoo")
    stub.get_config = lambda name: LazyConfig.load(str(zoo / name))
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "detectron2.model_zoo", stub)
        patched.setattr(detectron2, "model_zoo", stub, raising=False)
        return LazyConfig.load(str(path))


def _plain(node):
    """A config node as plain values; functools.partial (the LR decay, the norm layer) by its parts."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, functools.partial):
        return ["partial", node.func, list(node.args), sorted(node.keywords.items())]
    return node


def _without(node, *keys):
    plain = _plain(node)
    for key in keys:
        parent = plain
        *path, last = key.split(".")
        for part in path:
            parent = parent[part]
        parent.pop(last)
    return plain


@needs_vit
@pytest.mark.parametrize("pair, student, teacher", [
    ("cascade_L_mask_B", "mask_rcnn_vitdet_b_100ep", "cascade_mask_rcnn_vitdet_l_100ep"),
    ("cascade_L_cascade_B", "cascade_mask_rcnn_vitdet_b_100ep", "cascade_mask_rcnn_vitdet_l_100ep"),
    ("mask_B_mask_R50", None, "mask_rcnn_vitdet_b_100ep"),
])
def test_vitdet_models_and_recipe_are_projects_vitdets_own(projects_vitdet, monkeypatch, pair, student, teacher):
    ours = load_lazy_config(str(REPO / f"configs/COCO-ViTDet/topkd_{pair}.py"))
    theirs_teacher = _load_theirs(monkeypatch, projects_vitdet / "COCO" / f"{teacher}.py")
    assert _plain(ours.model.teacher.config) == _plain(theirs_teacher.model)
    if student is None:  # the R50-FPN student: Detectron2's own model on the DKD protocol
        assert ours.model.teacher.input_size == [1024, 1024]
        return
    theirs = _load_theirs(monkeypatch, projects_vitdet / "COCO" / f"{student}.py")
    assert _without(ours.model, "_target_", "teacher", "distill_loss") == _without(theirs.model, "_target_")
    # Where this project differs on purpose: a fixed seed, evaluation results in the run's folder.
    assert _without(ours.train, "seed", "output_dir") == _without(theirs.train, "output_dir")
    assert _without(ours.dataloader, "evaluator.output_dir") == _plain(theirs.dataloader)
    assert _plain(ours.optimizer) == _plain(theirs.optimizer)
    assert _plain(ours.lr_multiplier) == _plain(theirs.lr_multiplier)


@needs_vit
def test_loading_a_vitdet_config_never_imports_the_model_zoo_module():
    """detectron2.model_zoo imports pkg_resources, which the locked setuptools lacks."""
    code = ("import sys; from topkd_det.detection.lazy_engine import load_lazy_config; "
            f"load_lazy_config({str(REPO / 'configs/COCO-ViTDet/topkd_cascade_L_mask_B.py')!r}); "
            "print(sorted(m for m in sys.modules if m.startswith('detectron2.model_zoo')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def _small(cfg: DictConfig) -> None:
    """Two ViT blocks of width 64 instead of 12 or 24 of 768 or 1024, so that a test builds a pair in
    seconds (test_vitdet_models_and_recipe_are_projects_vitdets_own checks the real sizes)."""
    for model in (cfg.model, cfg.model.teacher.config):
        net = OmegaConf.select(model, "backbone.net")
        if net is not None and "depth" in net:
            net.update(depth=2, window_block_indexes=[0], embed_dim=64, num_heads=2)


@needs_vit
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pair", PAIRS)
def test_every_vitdet_pair_and_method_loads_with_its_teacher_loss_and_recipe(pair, method):
    cfg = load_lazy_config(str(REPO / f"configs/COCO-ViTDet/{method}_{pair}.py"))
    options = OmegaConf.to_container(cfg.model.distill_loss.options)
    assert options == {"method": method, method: METHODS[method]}
    assert build_distill_loss(options, cfg.model.roi_heads.num_classes).options[method] is not None
    assert cfg.train.output_dir == f"output/coco/{method}_{pair}"
    assert cfg.model.teacher.weights.startswith("detectron2://ViTDet/COCO/")
    if pair == "mask_B_mask_R50":
        assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        assert cfg.dataloader.train.total_batch_size == 8 and cfg.train.max_iter == 180000
    else:
        assert cfg.train.init_checkpoint.startswith("detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth")
        assert cfg.train.amp.enabled and cfg.train.ddp.fp16_compression
        assert cfg.optimizer.params.lr_factor_func.keywords == {"num_layers": 12, "lr_decay_rate": 0.7}


@needs_vit
@pytest.mark.parametrize("pair, student_family, teacher_family, pairing, flip, input_size", [
    ("cascade_L_mask_B", "Mask R-CNN", "Cascade Mask R-CNN", [0], False, None),
    ("cascade_L_cascade_B", "Cascade Mask R-CNN", "Cascade Mask R-CNN", [0, 1, 2], False, None),
    ("mask_B_mask_R50", "Mask R-CNN", "Mask R-CNN", [0], True, (1024, 1024)),
])
def test_every_vitdet_pair_builds(monkeypatch, tmp_path, pair, student_family, teacher_family, pairing, flip,
                                  input_size):
    """Weights off (nothing is downloaded), two ViT blocks: the families, which teacher head scores which
    student stage, the channel flip, the teacher's input size and its 1024 px square padding."""
    monkeypatch.setattr(teacher_module, "load_teacher_weights", lambda *args: None)
    cfg = load_lazy_config(str(REPO / f"configs/COCO-ViTDet/topkd_{pair}.py"))
    _small(cfg)
    (tmp_path / "unread.pkl").touch()
    cfg.model.teacher.weights = str(tmp_path / "unread.pkl")
    model = instantiate(cfg.model)
    assert family_name(model.roi_heads) == student_family and model.teacher.family == teacher_family
    predictors = model.roi_heads.box_predictor
    predictors = predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    assert [p.distiller.teacher_stage for p in predictors] == pairing
    assert model.teacher.flip_channels is flip and model.teacher.input_size == input_size
    assert model.teacher.square_size == 1024 and model.teacher.num_classes == model.roi_heads.num_classes == 80
    if input_size:  # the student's largest images, as the teacher sees them
        assert model.teacher.image_size(800, 1333) == (615, 1024)


@needs_vit
def test_a_yacs_student_takes_a_vitdet_teacher_through_its_lazy_config_file(tmp_path):
    """MODEL.TEACHER.CONFIG_FILE naming a ViTDet model file, shrunk by MODEL.TEACHER.OPTS, at
    MODEL.TEACHER.INPUT_SIZE: the tiny YAML student trains a step with it."""
    from detectron2.modeling import build_model

    vit = str(REPO / "configs/common/models/mask_rcnn_vitdet_b.py")
    # Two blocks of width 64, and a 256 px square instead of 1024 px, for the test's time.
    opts = ["model.backbone.net.depth=2", "model.backbone.net.window_block_indexes=[0]",
            "model.backbone.net.embed_dim=64", "model.backbone.net.num_heads=2", "model.backbone.square_pad=256",
            f"model.roi_heads.num_classes={NUM_CLASSES}"]
    weights = tmp_path / "vit.pth"
    torch.save({"model": instantiate(LazyConfig.apply_overrides(LazyConfig.load(vit), opts).model).state_dict()},
               weights)
    cfg = distill_cfg(tmp_path, "topkd", teacher=(vit, str(weights)))
    cfg.MODEL.TEACHER.OPTS = opts
    cfg.MODEL.TEACHER.INPUT_SIZE = (256, 256)
    model = build_model(cfg)
    assert model.teacher.family == "Mask R-CNN" and model.teacher.input_size == (256, 256)
    assert model.teacher.square_size == 256 and model.teacher.image_size(96, 96) == (256, 256)
    with EventStorage(0):
        losses = model.train()(batch(2))
    assert torch.isfinite(losses["loss_con"]) and torch.isfinite(losses["loss_tdl"])


# --- the embedded pair ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_teacher_weights(tmp_path_factory):
    """The embedded ViTDet teacher with random weights, as a user's trained file would be given."""
    if not HAS_VIT:
        pytest.skip("this Detectron2 (0.6) has no ViT backbone")
    path = tmp_path_factory.mktemp("vit_teacher") / "teacher.pth"
    teacher = instantiate(student_only(load_lazy_config(str(REPO / "configs/embedded/vitdet_teacher.py")).model))
    torch.save({"model": teacher.state_dict()}, path)
    return str(path)


def _embedded(weights: str, *opts) -> torch.nn.Module:
    cfg = load_lazy_config(str(EMBEDDED), [f"model.teacher.weights={weights}", *opts])
    return cfg, instantiate(cfg.model)


def _batch(n=2):
    inputs = batch(n, size=128)
    for x in inputs:
        x["instances"].gt_classes %= 24
    return inputs


@needs_vit
def test_layer_wise_lr_decay_groups_hold_the_student_only(vit_teacher_weights):
    """The optimizer lazy_engine.train builds (ViTDet's get_default_optimizer_params with
    get_vit_lr_decay_rate) gets every trainable student parameter once, at the LR and weight decay of
    ViTDet's rule for its name, and no teacher parameter."""
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    cfg, model = _embedded(vit_teacher_weights)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    in_groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(in_groups)  # each once
    student = dict(model.named_parameters())
    assert set(in_groups) == {id(p) for p in student.values() if p.requires_grad}
    assert not {id(p) for p in model.teacher.model.parameters()} & set(in_groups)
    assert not any(name.startswith("teacher") for name in student)
    base_lr, depth = cfg.optimizer.lr, cfg.model.backbone.net.depth
    for name, p in student.items():
        assert in_groups[id(p)]["lr"] == pytest.approx(base_lr * get_vit_lr_decay_rate(name, 0.7, depth)), name
    # No weight decay on torch's norm layers and the position embedding; the optimizer's on the rest.
    modules = dict(model.named_modules())
    for name, p in student.items():
        no_decay = "pos_embed" in name or isinstance(modules[name.rsplit(".", 1)[0]], torch.nn.LayerNorm)
        assert in_groups[id(p)]["weight_decay"] == (0.0 if no_decay else cfg.optimizer.weight_decay), name
    # The first block learns slowest, the box predictor at the full rate.
    assert in_groups[id(student["backbone.net.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(base_lr * 0.7 ** 3)
    assert in_groups[id(student["roi_heads.box_predictor.cls_score.weight"])]["lr"] == pytest.approx(base_lr)


@needs_vit
@pytest.mark.parametrize("teacher_dtype", ["float32", "bfloat16"])
def test_distillation_under_cpu_autocast(vit_teacher_weights, teacher_dtype):
    """The student in bfloat16 autocast (what AMP does on a GPU, here on the CPU): finite float32
    distillation terms and gradients, and the teacher in its own precision, not the student's: a
    float32 teacher's logits are bitwise those it gives outside autocast, a bfloat16 teacher's are not."""
    _, model = _embedded(vit_teacher_weights, f"model.teacher.dtype={teacher_dtype}")
    teacher, inputs, seen = model.teacher, _batch(1), []
    original = teacher.box_logits

    def spy(features, boxes, stage):
        seen.append((boxes, stage, original(features, boxes, stage)))
        return seen[-1][2]

    teacher.box_logits = spy
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(inputs)
    assert {"loss_con", "loss_tdl", "loss_cls"} <= set(losses)
    assert all(losses[k].dtype == torch.float32 and torch.isfinite(losses[k]) for k in ("loss_con", "loss_tdl"))
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert not any(p.grad is not None for p in teacher.model.parameters())

    (boxes, stage, inside), = seen
    teacher.dtype = torch.float32
    outside = original(teacher.features(inputs), boxes, stage)
    assert inside.dtype == torch.float32
    if teacher_dtype == "float32":
        assert torch.equal(inside, outside)
    else:
        assert not torch.equal(inside, outside)
        assert torch.allclose(inside, outside, atol=0.05 * outside.abs().max().item())


@pytest.fixture(scope="module")
def vit_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_shapes") / "data"
    generate(root, SyntheticConfig(num_train=4, num_val=1, num_test=1, image_size=64), progress=False)
    return root, register_synthetic(root, name_prefix=f"vit_{uuid.uuid4().hex[:6]}")


def _run_tool(*args):
    tool_module = load_tool("lazyconfig_train_net")
    return tool_module.main(tool_module.parser().parse_args([str(a) for a in args]))


@needs_vit
def test_embedded_vitdet_pair_trains_offline_teacher_then_student(vit_shapes, tmp_path, monkeypatch):
    """The documented example, shortened: the teacher trains, then the TopKD student from its weights;
    the student's checkpoint is a plain student, its optimizer held the student's parameters only."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _, names = vit_shapes
    data = [f"dataloader.train.dataset.names={names['train']}", f"dataloader.test.dataset.names={names['val']}",
            "dataloader.train.total_batch_size=2", "train.max_iter=2"]
    _run_tool("--config-file", REPO / "configs/embedded/vitdet_teacher.py", *data, "dataloader.test.dataset.names=[]",
              f"train.output_dir={tmp_path / 'teacher'}")
    teacher_weights = tmp_path / "teacher" / "model_final.pth"
    _run_tool("--config-file", EMBEDDED, *data, f"model.teacher.weights={teacher_weights}",
              f"train.output_dir={tmp_path / 'student'}")
    out = tmp_path / "student"
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    plain = instantiate(student_only(LazyConfig.load(str(EMBEDDED), "model")))
    plain.load_state_dict(state["model"], strict=True)
    groups = state["trainer"]["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in plain.parameters())
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_con" in r and "loss_tdl" in r for r in records)
    assert any("bbox/AP" in r for r in records)  # COCO evaluation after the last iteration


# --- two processes, fp16 gradient compression ---------------------------------------------------------
def _count_fp16_compression(args):
    """tools/lazyconfig_train_net.py's main, counting the calls of DDP's fp16 compression hook."""
    from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    calls = []
    hook = comm_hooks.fp16_compress_hook

    def counting(state, bucket):
        calls.append(bucket.buffer().dtype)
        return hook(state, bucket)

    comm_hooks.fp16_compress_hook = counting
    load_tool("lazyconfig_train_net").main(args)
    out = Path(lazy_engine.load_lazy_config(args.config_file, args.opts).train.output_dir)
    (out / f"hook_calls{comm.get_rank()}.json").write_text(json.dumps([str(d) for d in calls]))


@needs_vit
@pytest.mark.skipif(not tool.launch_starts_cpu_workers(), reason="this Detectron2's launch needs CUDA GPUs")
@pytest.mark.timeout(900)  # a hang guard only
def test_embedded_vitdet_pair_trains_in_two_processes_with_fp16_gradient_compression(
        vit_shapes, vit_teacher_weights, tmp_path, monkeypatch):
    root, _ = vit_shapes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    for key in tool.TORCHRUN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    # A LazyConfig registers its own data in its file, which every process runs.
    name = f"vit_mp_{uuid.uuid4().hex[:6]}_train"
    config = tmp_path / "vitdet_mine.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from detectron2.data import DatasetCatalog\n"
        "from detectron2.data.datasets import register_coco_instances\n"
        f"if {name!r} not in DatasetCatalog.list():\n"
        f"    register_coco_instances({name!r}, {{}}, {str(json_path(root, 'train'))!r}, {str(root / 'train')!r})\n"
        f"_embedded = LazyConfig.load({str(EMBEDDED)!r})\n"
        "model, dataloader, optimizer, lr_multiplier, train = (\n"
        "    _embedded[k] for k in ('model', 'dataloader', 'optimizer', 'lr_multiplier', 'train'))\n")
    out = tmp_path / "run"
    tool_module = load_tool("lazyconfig_train_net")
    args = tool_module.parse_args(["--config-file", str(config), "--num-gpus", "2", "--dist-url", "auto",
                                   f"dataloader.train.dataset.names={name}", "dataloader.test.dataset.names=[]",
                                   f"model.teacher.weights={vit_teacher_weights}", f"train.output_dir={out}",
                                   "train.max_iter=2"])
    assert lazy_engine.load_lazy_config(str(config), args.opts).train.ddp.fp16_compression  # the recipe's own
    tool.launch_checked(args, _count_fp16_compression, lambda world: tool_module.check(args, world))
    for rank in range(2):
        calls = json.loads((out / f"hook_calls{rank}.json").read_text())
        assert len(calls) >= 2 and set(calls) == {"torch.float32"}  # every step's buckets went through the hook
    assert "all 2 ranks hold the same weights" in (out / "log.txt").read_text()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
