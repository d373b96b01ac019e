"""The bad-input catalogue: every case must (a) fail with the expected exception or a non-zero exit,
(b) say which key or file is at fault in one readable line, and (c) fail before any training step.

Cases run in-process: API cases call ``build_loss``; tool cases call the tool's ``cli()``, whose
``SystemExit`` code and last stderr line are checked. "No training step" is checked by counting
``torch.optim.SGD.step`` calls and by the absence of new checkpoints in the case's output folder.
"""
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple, Union

import pytest
import torch

from cls_fixtures import cifar_dir, fashion_dir, tiny_cfg
from conftest import load_tool
from run_fixtures import StepCounter, copy_run, det_config, truncated_copy
from topkd_det.classification.engine import Trainer
from topkd_det.classification.models import build_model
from topkd_det.core import LossOptionError, build_loss

TOOLS = {name: load_tool(name) for name in ("train_cls", "train_net", "lazyconfig_train_net", "demo",
                                            "convert_torchvision_to_d2", "multiseed")}


@dataclass
class Case:
    id: str
    # ctx, out -> None for the API (raises), or (tool name, argv) for a tool.
    action: Callable
    expect: Union[type, int]  # exception type (API) or exit code (tools)
    fragments: Callable[..., List[str]]  # ctx, out -> what the message must contain (key or file)
    absent: Tuple[str, ...] = ()  # files the case must not have created in its output folder


def api(**kwargs):
    return lambda ctx, out: build_loss(**kwargs)


def fixed(*fragments):
    return lambda ctx, out: list(fragments)


# --- build_loss (the API: options are named by their lower-case path) ----------------------------------
API_CASES = [
    Case("kd_temperature_negative", api(cfg_or_name="kd", kd={"temperature": -1.0}), LossOptionError,
         fixed("kd.temperature must be > 0, got -1.0")),
    Case("kd_temperature_zero", api(cfg_or_name="kd", kd={"temperature": 0.0}), LossOptionError,
         fixed("kd.temperature must be > 0, got 0.0")),
    Case("dkd_temperature_negative", api(cfg_or_name="dkd", dkd={"temperature": -4.0}), LossOptionError,
         fixed("dkd.temperature must be > 0")),
    Case("gdkd_temperature_negative", api(cfg_or_name="gdkd", gdkd={"temperature": -4.0}), LossOptionError,
         fixed("gdkd.temperature must be > 0")),
    Case("kl_temperature_zero", api(cfg_or_name="topkd", mode="kl", topkd={"kl_temperature": 0.0}),
         LossOptionError, fixed("topkd.kl_temperature must be > 0")),
    Case("temperature_nan", api(cfg_or_name="kd", kd={"temperature": float("nan")}), LossOptionError,
         fixed("kd.temperature must be a finite number")),
    Case("temperature_string", api(cfg_or_name="topkd", topkd={"temperature": "0.2"}), LossOptionError,
         fixed("topkd.temperature must be a number", "the string '0.2'")),
    Case("k_string", api(cfg_or_name="topkd", topkd={"k": "3"}), LossOptionError,
         fixed("topkd.k must be an integer", "the string '3'")),
    Case("k_float", api(cfg_or_name="topkd", topkd={"k": 2.5}), LossOptionError,
         fixed("topkd.k must be an integer", "2.5")),
    Case("k_bool", api(cfg_or_name="topkd", topkd={"k": True}), LossOptionError,
         fixed("topkd.k must be an integer", "the boolean True")),
    Case("k_too_large_for_c", api(cfg_or_name="topkd", num_classes=25, topkd={"k": 12}), LossOptionError,
         fixed("topkd.k=12 is invalid for C=25", "1 <= K <= 11")),
    Case("gdkd_k_not_below_c", api(cfg_or_name="gdkd", num_classes=10, gdkd={"k": 10}), LossOptionError,
         fixed("gdkd.k=10", "k < C=10")),
    Case("kd_weight_negative", api(cfg_or_name="kd", kd={"weight": -0.5}), LossOptionError,
         fixed("kd.weight must be >= 0, got -0.5")),
    Case("ce_weight_negative", api(cfg_or_name="kd", ce_weight=-1.0), LossOptionError,
         fixed("ce_weight must be >= 0")),
    Case("dkd_alpha_negative", api(cfg_or_name="dkd", dkd={"alpha": -1.0}), LossOptionError,
         fixed("dkd.alpha must be >= 0")),
    Case("topkd_alpha_negative", api(cfg_or_name="topkd", topkd={"alpha": -3.0}), LossOptionError,
         fixed("topkd.alpha must be >= 0")),
    Case("max_rows_negative", api(cfg_or_name="topkd", topkd={"max_rows": -5}), LossOptionError,
         fixed("topkd.max_rows must be >= 2 or 0, got -5")),
    Case("wttm_l_negative", api(cfg_or_name="wttm", wttm={"l": -1.0}), LossOptionError,
         fixed("wttm.l must be > 0, got -1.0")),
    Case("ttm_l_zero", api(cfg_or_name="ttm", ttm={"l": 0.0}), LossOptionError, fixed("ttm.l must be > 0")),
    Case("rank_gain_negative", api(cfg_or_name="topkd", topkd={"rank_gain": -0.5}), LossOptionError,
         fixed("topkd.rank_gain must be >= 0")),
    Case("shift_negative", api(cfg_or_name="topkd", topkd={"shift": -1.0}), LossOptionError,
         fixed("topkd.shift must be >= 0")),
    Case("warmup_negative", api(cfg_or_name="kd", warmup=-1.0), LossOptionError, fixed("warmup must be >= 0")),
    Case("gdkd_w1_negative", api(cfg_or_name="gdkd", gdkd={"w1": -8.0}), LossOptionError,
         fixed("gdkd.w1 must be >= 0")),
    Case("normalize_not_bool", api(cfg_or_name="topkd", topkd={"normalize": "yes"}), LossOptionError,
         fixed("topkd.normalize must be True or False", "the string 'yes'")),
    Case("scope_unknown", api(cfg_or_name="topkd", topkd={"scope": "images"}), LossOptionError,
         fixed("topkd.scope must be one of batch, image", "'images'")),
    Case("method_unknown", api(cfg_or_name="fancykd"), LossOptionError,
         fixed("method must be one of", "'fancykd'")),
    Case("nonfinite_unknown", api(cfg_or_name="kd", nonfinite="ignore"), LossOptionError,
         fixed("nonfinite must be one of error, skip", "'ignore'")),
    Case("unknown_option", api(cfg_or_name="topkd", topkd={"kk": 3}), LossOptionError,
         fixed("unknown distillation option 'topkd.kk'")),
    Case("gather_with_image_scope", api(cfg_or_name="topkd", topkd={"gather": True, "scope": "image"}),
         LossOptionError, fixed("topkd.gather", "topkd.scope='image'")),
    Case("foreground_only_without_background", api(cfg_or_name="topkd", topkd={"foreground_only": True}),
         LossOptionError, fixed("topkd.foreground_only needs a background class")),
    Case("empty_batch", lambda ctx, out: build_loss("kd")(torch.zeros(0, 5), torch.zeros(0, 5),
                                                          torch.zeros(0, dtype=torch.long)),
         ValueError, fixed("empty batch, N=0")),
]


# --- tools/train_cls.py: errors name the config key, or the file -----------------------------------------
def cls(*argv, prior=False):
    def action(ctx, out):
        if prior:
            copy_run(ctx["cls_prior"], out)
        return "train_cls", ["--config-file", str(ctx["cls_yaml"]), *argv, "OUTPUT_DIR", str(out)]

    return action


def cls_with(key: str, *argv):
    """A run whose ``key`` names a file made by the module fixture (``ctx[name]``)."""

    def action(ctx, out):
        extra = [str(ctx[a[1:]]) if a.startswith("@") else a for a in argv]
        return "train_cls", ["--config-file", str(ctx[key]), "OUTPUT_DIR", str(out), *extra]

    return action


def kd_opts(teacher: str):
    return ["DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", teacher]


CLS_CASES = [
    Case("cls_kd_temperature_negative", cls("DISTILL.KD.TEMPERATURE", "-1.0"), 2,
         fixed("DISTILL.KD.TEMPERATURE must be > 0"), ("config.yaml", "metrics.jsonl")),
    Case("cls_int_for_float_key", cls("DISTILL.WARMUP", "2"), 2,
         fixed("DISTILL.WARMUP takes a float", "write 2.0")),
    Case("cls_k_as_string", cls("DISTILL.TOPKD.K", "'3'"), 2,
         fixed("DISTILL.TOPKD.K takes an integer", "a string '3'")),
    Case("cls_wttm_l_negative", cls("DISTILL.METHOD", "wttm", "DISTILL.WTTM.L", "-1.0"), 2,
         fixed("DISTILL.WTTM.L must be > 0")),
    Case("cls_max_rows_negative", cls("DISTILL.TOPKD.MAX_ROWS", "-5"), 2,
         fixed("DISTILL.TOPKD.MAX_ROWS must be >= 2 or 0")),
    Case("cls_scope_image", cls("DISTILL.TOPKD.SCOPE", "image"), 2, fixed("DISTILL.TOPKD.SCOPE='image'")),
    Case("cls_k_too_large", cls("DISTILL.METHOD", "topkd", "DISTILL.TOPKD.K", "5"), 2,
         fixed("DISTILL.TOPKD.K=5 is invalid for C=10")),
    Case("cls_lr_zero", cls("SOLVER.LR", "0.0"), 2, fixed("SOLVER.LR must be > 0")),
    Case("cls_unknown_key", cls("DISTILL.TOPKD.KK", "3"), 2, fixed("Non-existent key: DISTILL.TOPKD.KK")),
    Case("cls_missing_config", lambda ctx, out: ("train_cls", ["--config-file", str(out / "nope.yaml")]), 2,
         lambda ctx, out: [f"no such config file '{out / 'nope.yaml'}'"]),
    Case("cls_malformed_yaml", cls_with("bad_yaml"), 2, lambda ctx, out: [str(ctx["bad_yaml"]), "not valid YAML"]),
    Case("cls_truncated_teacher", cls_with("cls_yaml", *kd_opts("@truncated_teacher")), 2,
         lambda ctx, out: [f"'{ctx['truncated_teacher']}' is truncated", "MODEL.TEACHER_WEIGHTS",
                           "train it again"]),
    Case("cls_empty_weights", cls_with("cls_yaml", "MODEL.WEIGHTS", "@empty_file"), 2,
         lambda ctx, out: [f"'{ctx['empty_file']}' is empty", "MODEL.WEIGHTS"]),
    Case("cls_text_file_as_weights", cls_with("cls_yaml", "MODEL.WEIGHTS", "@text_file"), 2,
         lambda ctx, out: [f"'{ctx['text_file']}' is not a PyTorch or Detectron2 weights file"]),
    Case("cls_other_architecture_weights", cls_with("cls_yaml", "MODEL.WEIGHTS", "@teacher_weights"), 2,
         lambda ctx, out: [f"'{ctx['teacher_weights']}' does not fit the student 'fmnist_student'",
                           "MODEL.WEIGHTS"]),
    Case("cls_missing_teacher_file", cls_with("cls_yaml", *kd_opts("@missing_file")), 2,
         lambda ctx, out: ["MODEL.TEACHER_WEIGHTS: no such file", str(ctx["missing_file"])]),
    Case("cls_truncated_fashion_gz", cls_with("cls_yaml", "DATASET.ROOT", "@truncated_fashion"), 2,
         lambda ctx, out: [str(ctx["truncated_fashion"] / "train-images-idx3-ubyte.gz"), "is truncated",
                           "download the file again"]),
    Case("cls_corrupt_cifar_pickle", cls_with("cifar_yaml", "DATASET.ROOT", "@corrupt_cifar"), 2,
         lambda ctx, out: [str(ctx["corrupt_cifar"] / "cifar-100-python" / "train"), "is truncated",
                           "cifar-100-python.tar.gz"]),
    # The prior run did 2 epochs of the same config.
    Case("cls_resume_other_config", cls("--resume", "SOLVER.EPOCHS", "2", "DISTILL.CE_WEIGHT", "0.5", prior=True), 2,
         lambda ctx, out: [f"cannot resume from {out / 'last.pth'}", "DISTILL.CE_WEIGHT: 1.0 -> 0.5",
                           "--allow-config-change"]),
    Case("cls_resume_shorter_than_done", cls("--resume", "SOLVER.EPOCHS", "1", prior=True), 2,
         lambda ctx, out: [str(out / "last.pth"), "already done 2 epochs, so SOLVER.EPOCHS 1 leaves nothing"]),
    Case("cls_resume_damaged_checkpoints", cls("--resume", "SOLVER.EPOCHS", "2", prior=True), 2,
         lambda ctx, out: [f"checkpoint {out / 'last.pth'} is truncated",
                           f"checkpoint {out / 'ckpt_epoch_1.pth'} is truncated", "no readable checkpoint"]),
    Case("cls_resume_other_architecture", cls("--resume", "--allow-config-change", "SOLVER.EPOCHS", "2",
                                              "MODEL.STUDENT", "fmnist_teacher", prior=True), 2,
         lambda ctx, out: [f"'{out / 'last.pth'}' does not fit the student 'fmnist_teacher'"]),
    Case("cls_eval_only_without_weights", cls("--eval-only"), 2,
         lambda ctx, out: ["--eval-only needs MODEL.WEIGHTS", str(out / "last.pth")]),
    Case("multiseed_bad_temperature", lambda ctx, out: (
        "multiseed", ["--config-file", str(ctx["cls_yaml"]), "--seeds", "0", "DISTILL.KD.TEMPERATURE", "-2.0"]), 2,
        fixed("DISTILL.KD.TEMPERATURE must be > 0")),
]


# --- tools/train_net.py: MODEL.DISTILL keys, checkpoints, --config-file ---------------------------------
def det(*argv, config="det_yaml", prior=False):
    def action(ctx, out):
        if prior:
            copy_run(ctx["det_prior"], out)
        extra = [str(ctx[a[1:]]) if a.startswith("@") else a for a in argv]
        flags = [a for a in extra if a.startswith("--")]
        opts = [a for a in extra if not a.startswith("--")]
        return "train_net", ["--config-file", str(ctx[config]), *flags, "OUTPUT_DIR", str(out), *opts]

    return action


DET_CASES = [
    Case("det_no_config_file", lambda ctx, out: ("train_net", ["OUTPUT_DIR", str(out)]), 2,
         fixed("--config-file is required")),
    Case("det_k_too_large", det("MODEL.DISTILL.TOPKD.K", "12"), 2,
         fixed("MODEL.DISTILL.TOPKD.K=12 is invalid for C=25", "MODEL.ROI_HEADS.NUM_CLASSES"), ("config.yaml",)),
    Case("det_kd_temperature_negative", det("MODEL.DISTILL.METHOD", "kd", "MODEL.DISTILL.KD.TEMPERATURE", "-1.0"), 2,
         fixed("MODEL.DISTILL.KD.TEMPERATURE must be > 0"), ("config.yaml",)),
    Case("det_temperature_string", det("MODEL.DISTILL.TOPKD.TEMPERATURE", "'0.2'"), 2,
         fixed("MODEL.DISTILL.TOPKD.TEMPERATURE takes a float", "a string '0.2'"), ("config.yaml",)),
    Case("det_int_for_float_key", det("MODEL.DISTILL.WARMUP", "100"), 2,
         fixed("MODEL.DISTILL.WARMUP takes a float", "write 100.0"), ("config.yaml",)),
    Case("det_negative_weight", det("MODEL.DISTILL.TOPKD.CON_WEIGHT", "-1.0"), 2,
         fixed("MODEL.DISTILL.TOPKD.CON_WEIGHT must be >= 0"), ("config.yaml",)),
    Case("det_teacher_dtype", det("MODEL.TEACHER.DTYPE", "half"), 2, fixed("MODEL.TEACHER.DTYPE must be one of"),
         ("config.yaml",)),
    Case("det_max_iter_zero", det("SOLVER.MAX_ITER", "0"), 2, fixed("SOLVER.MAX_ITER must be >= 1"),
         ("config.yaml",)),
    Case("det_teacher_input_size_one_number", det("MODEL.TEACHER.INPUT_SIZE", "(1024,)"), 2,
         fixed("MODEL.TEACHER.INPUT_SIZE must be (short_edge, max_size)"), ("config.yaml",)),
    Case("det_amp_on_the_cpu", det("SOLVER.AMP.ENABLED", "True"), 2,
         fixed("SOLVER.AMP.ENABLED is on, but MODEL.DEVICE is 'cpu'"), ("config.yaml",)),
    Case("det_truncated_weights", det("MODEL.WEIGHTS", "@truncated_det_weights", config="det_student_yaml"), 2,
         lambda ctx, out: [f"'{ctx['truncated_det_weights']}' is truncated", "download or copy it again"]),
    Case("det_missing_weights", det("MODEL.WEIGHTS", "@missing_file", config="det_student_yaml"), 2,
         lambda ctx, out: [f"'{ctx['missing_file']}' does not exist"]),
    Case("det_resume_other_config", det("--resume", "MODEL.DISTILL.TOPKD.ALPHA", "1.0", prior=True), 2,
         lambda ctx, out: [f"cannot resume from {out / 'model_final.pth'}",
                           "MODEL.DISTILL.TOPKD.ALPHA: 3.0 -> 1.0"]),
    Case("det_resume_every_checkpoint_damaged", det("--resume", prior=True), 2,
         lambda ctx, out: [f"checkpoint {out / 'model_final.pth'} is truncated", "no readable checkpoint"]),
]


NO_LAZY_DATA = ("dataloader.train.dataset.names=[]", "dataloader.test.dataset.names=[]")


def lazy(*overrides):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "embedded" / "topkd.py")
    return lambda ctx, out: ("lazyconfig_train_net", ["--config-file", config, f"train.output_dir={out}", *overrides])


LAZY_CASES = [
    Case("lazy_no_config_file", lambda ctx, out: ("lazyconfig_train_net", [f"train.output_dir={out}"]), 2,
         fixed("--config-file is required")),
    Case("lazy_misspelt_key", lazy("train.max_iters=3"), 2,
         fixed("the config has no key 'train.max_iters'", "write +train.max_iters=3"), ("config.yaml",)),
    Case("lazy_k_too_large", lazy("model.distill_loss.options.topkd.k=12"), 2,
         fixed("model.distill_loss.options.topkd.k=12 is invalid for C=25"), ("config.yaml",)),
    Case("lazy_negative_temperature", lazy("model.distill_loss.options.topkd.temperature=-0.2"), 2,
         fixed("model.distill_loss.options.topkd.temperature must be > 0"), ("config.yaml",)),
    # No data named: these checks come after the datasets', and a fresh clone has no synthetic data.
    Case("lazy_teacher_input_size_zero", lazy("model.teacher.input_size=[0,1024]", *NO_LAZY_DATA), 2,
         fixed("model.teacher.input_size must be (short_edge, max_size)"), ("config.yaml",)),
    Case("lazy_amp_on_the_cpu", lazy("train.amp.enabled=True", *NO_LAZY_DATA), 2,
         fixed("train.amp.enabled is on, but train.device is 'cpu'"), ("config.yaml",)),
]


# --- tools/demo.py and tools/convert_torchvision_to_d2.py -------------------------------------------------
def demo(*argv):
    return lambda ctx, out: ("demo", ["--output", str(out), "--data-root", str(out / "data"), *argv])


def convert(arch: str, source: str, target: str = "out.pkl"):
    return lambda ctx, out: ("convert_torchvision_to_d2", [
        "--arch", arch, str(ctx[source[1:]]) if source.startswith("@") else str(out / source), str(out / target)])


OTHER_CASES = [
    Case("demo_unknown_key", demo("MODEL.DISTILL.TOPKD.KK", "3"), 2,
         fixed("Non-existent key: MODEL.DISTILL.TOPKD.KK"), ("data",)),
    Case("demo_k_too_large", demo("MODEL.DISTILL.TOPKD.K", "20"), 2, fixed("MODEL.DISTILL.TOPKD.K=20 is invalid"),
         ("data",)),
    Case("demo_temperature_zero", demo("MODEL.DISTILL.TOPKD.TEMPERATURE", "0.0"), 2,
         fixed("MODEL.DISTILL.TOPKD.TEMPERATURE must be > 0"), ("data",)),
    Case("demo_missing_config_dir", demo("--config-dir", "no_such_dir"), 2,
         fixed("--config-dir: no such folder 'no_such_dir'")),
    Case("demo_jobs_zero", demo("--jobs", "0"), 2, fixed("--jobs must be >= 1")),
    Case("convert_missing_input", convert("resnet", "absent.pth"), 2, lambda ctx, out: [f"'{out / 'absent.pth'}'"]),
    Case("convert_truncated_input", convert("resnet", "@truncated_tv"), 2,
         lambda ctx, out: [f"'{ctx['truncated_tv']}' is truncated", "download it again"]),
    Case("convert_text_input", convert("resnet", "@text_file"), 2,
         lambda ctx, out: [f"'{ctx['text_file']}' is not a PyTorch"]),
    Case("convert_wrong_arch", convert("mobilenetv2", "@tv_resnet"), 2,
         lambda ctx, out: [f"'{ctx['tv_resnet']}'", "not torchvision mobilenetv2 weights", "conv1.weight"]),
    Case("convert_missing_output_folder", convert("resnet", "@tv_resnet", "no/such/dir/out.pkl"), 2,
         lambda ctx, out: [f"output folder '{out / 'no/such/dir'}' does not exist"]),
]

CASES = API_CASES + CLS_CASES + DET_CASES + LAZY_CASES + OTHER_CASES


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, det_run_names):
    tmp = tmp_path_factory.mktemp("catalogue")
    c = {}
    data = fashion_dir(tmp / "data")
    _, c["cls_yaml"] = tiny_cfg(tmp, data, "SOLVER.EPOCHS", 1, name="cls")
    _, c["cifar_yaml"] = tiny_cfg(tmp, data, name="cifar", check_files=False, MODEL={"STUDENT": "resnet8x4"},
                                  DATASET={"NAME": "cifar100", "VAL_SIZE": 0})
    c["bad_yaml"] = tmp / "bad.yaml"
    c["bad_yaml"].write_text("SOLVER:\n  EPOCHS: [1,\n")
    c["student_weights"] = tmp / "student.pth"
    torch.save(build_model("fmnist_student", 10).state_dict(), c["student_weights"])
    c["teacher_weights"] = tmp / "teacher.pth"
    torch.save(build_model("fmnist_teacher", 10).state_dict(), c["teacher_weights"])
    c["truncated_teacher"] = truncated_copy(c["teacher_weights"], tmp / "teacher_truncated.pth")
    c["empty_file"] = tmp / "empty.pth"
    c["empty_file"].write_bytes(b"")
    c["text_file"] = tmp / "notes.pth"
    c["text_file"].write_text("these are not weights\n")
    c["missing_file"] = tmp / "missing.pth"
    c["truncated_fashion"] = shutil.copytree(data, tmp / "fashion_truncated")
    gz = c["truncated_fashion"] / "train-images-idx3-ubyte.gz"
    truncated_copy(gz, gz)
    c["corrupt_cifar"] = cifar_dir(tmp / "cifar")
    train = c["corrupt_cifar"] / "cifar-100-python" / "train"
    truncated_copy(train, train)

    prior, _ = tiny_cfg(tmp, data, "SOLVER.EPOCHS", 2, name="cls_prior")
    Trainer(prior).train()
    c["cls_prior"] = Path(prior.OUTPUT_DIR)

    c["det_yaml"] = det_config(tmp, det_run_names, max_iter=1)
    c["det_student_yaml"] = det_config(tmp, det_run_names, method="none", max_iter=1)
    teacher_weights = next(tmp.glob("teacher_*.pth"))  # the one det_config wrote for the distillation run
    c["truncated_det_weights"] = truncated_copy(teacher_weights, tmp / "det_truncated.pth")
    TOOLS["train_net"].cli(["--config-file", str(c["det_yaml"]), "OUTPUT_DIR", str(tmp / "det_prior")])
    c["det_prior"] = tmp / "det_prior"

    c["tv_resnet"] = tmp / "tv_resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64)}, c["tv_resnet"])
    c["truncated_tv"] = truncated_copy(c["tv_resnet"], tmp / "tv_truncated.pth")
    return c


# Cases whose copied run has its checkpoints damaged first (glob in the output folder).
DAMAGED = {"cls_resume_damaged_checkpoints": "*.pth", "det_resume_every_checkpoint_damaged": "model_*.pth"}


def _checkpoints(out: Path):
    return {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix == ".pth" or p.name == "last_checkpoint"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_early_naming_the_key_or_file(case, ctx, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    steps = StepCounter(monkeypatch)
    # Detectron2's log handlers may still point at an earlier test's captured (closed) stderr.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    if isinstance(case.expect, type):
        with pytest.raises(case.expect) as info:
            case.action(ctx, out)
        message = str(info.value)
    else:
        tool, argv = case.action(ctx, out)
        for path in out.glob(DAMAGED.get(case.id, "")) if case.id in DAMAGED else ():
            truncated_copy(path, path)
        before = _checkpoints(out)
        with pytest.raises(SystemExit) as exit_info:
            TOOLS[tool].cli(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == case.expect, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1, err
        message = lines[0]
        assert _checkpoints(out) == before  # no checkpoint written or rewritten
    for fragment in case.fragments(ctx, out):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    for name in case.absent:
        assert not (out / name).exists(), name
    assert steps.count == 0
