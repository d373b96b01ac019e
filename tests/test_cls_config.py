"""Classification configs: every shipped YAML loads and validates; bad values fail early and clearly."""
from pathlib import Path

import pytest

from topkd_det.classification.config import ConfigError, get_cls_cfg, load_cls_cfg, num_classes

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for d in ("cifar100", "imagenet", "fashion_mnist") for p in (REPO / "configs" / d).rglob("*.yaml"))


def test_configs_are_shipped_for_every_table():
    names = {p.relative_to(REPO / "configs").as_posix() for p in SHIPPED}
    vit_pairs = {f"resnet56_{vit}" for vit in ("deit_tiny", "t2t_vit_7", "pit_tiny", "pvt_tiny")}
    pairs_t1_t2_t8 = {p.parent.name for p in SHIPPED if p.parent.parent.name == "cifar100"} - vit_pairs
    assert len(pairs_t1_t2_t8) == 19
    for pair in vit_pairs:
        for method in ("kd", "kd_ls", "dkd", "dkd_ls", "wttm", "gdkd", "gdkd3", "gdkd3_ls", "topkd"):
            assert f"cifar100/{pair}/{method}.yaml" in names
    for pair in pairs_t1_t2_t8:
        for method in ("kd", "dkd", "dkd_ls", "wttm", "gdkd", "topkd"):
            assert f"cifar100/{pair}/{method}.yaml" in names
    for pair in ("resnet34_resnet18", "resnet50_MobileNetV1"):
        assert f"imagenet/{pair}/topkd.yaml" in names
    plugins = [n for n in names if n.startswith("cifar100/") and "/plugin/" in n]
    assert len(plugins) == 8 * 3
    for method in ("kd", "dkd"):
        assert f"fashion_mnist/plugin/{method}_tsm_tdl.yaml" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_loads_and_validates(path):
    cfg = load_cls_cfg(str(path), check_files=False)
    assert cfg.DATASET.NAME == path.relative_to(REPO / "configs").parts[0]
    if cfg.DISTILL.METHOD != "none":
        assert cfg.MODEL.TEACHER and cfg.MODEL.TEACHER_WEIGHTS


def test_pair_yaml_states_its_hyperparameters():
    cfg = load_cls_cfg(str(REPO / "configs/cifar100/vgg13_MobileNetV2/dkd.yaml"), check_files=False)
    assert (cfg.SOLVER.LR, cfg.DISTILL.DKD.BETA, cfg.DISTILL.WARMUP) == (0.01, 6.0, 20.0)
    plugin = load_cls_cfg(str(REPO / "configs/cifar100/resnet32x4_resnet8x4/plugin/kd_tsm_tdl.yaml"), check_files=False)
    assert plugin.DISTILL.METHOD == "kd" and plugin.DISTILL.PLUGIN.TSM and plugin.DISTILL.PLUGIN.TDL
    assert plugin.DISTILL.CE_WEIGHT == 0.1  # inherited from ../kd.yaml through _BASE_


def test_base_inheritance_and_trailing_opts(tmp_path):
    (tmp_path / "base.yaml").write_text("SOLVER:\n  EPOCHS: 7\n  LR: 0.3\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  LR: 0.1\nDATASET:\n  NAME: fashion_mnist\n"
                                         "MODEL:\n  STUDENT: fmnist_student\n")
    cfg = load_cls_cfg(str(tmp_path / "child.yaml"), ["SOLVER.EPOCHS", "2", "DISTILL.METHOD", "none"])
    assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.LR, num_classes(cfg)) == (2, 0.1, 10)
    assert cfg.is_frozen()


def _fmnist_opts(*extra):
    return ["DATASET.NAME", "fashion_mnist", "MODEL.STUDENT", "fmnist_student", *extra]


@pytest.mark.parametrize("opts, fragments", [
    (_fmnist_opts("MODEL.STUDENT", "resnet9000"), ["MODEL.STUDENT='resnet9000'", "valid names", "resnet8x4"]),
    (_fmnist_opts("DISTILL.METHOD", "kd", "MODEL.TEACHER", "nope", "MODEL.TEACHER_WEIGHTS", "x.pth"),
     ["MODEL.TEACHER='nope'"]),
    (_fmnist_opts("DISTILL.METHOD", "fancykd"), ["DISTILL.METHOD must be one of", "'fancykd'", "topkd"]),
    (_fmnist_opts("DISTILL.METHOD", "topkd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", "t.pth",
                  "DISTILL.TOPKD.K", "10"), ["K=10", "C=10", "1 <= K <= 4"]),
    (_fmnist_opts("DISTILL.METHOD", "gdkd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", "t.pth",
                  "DISTILL.GDKD.K", "10"), ["DISTILL.GDKD.K=10", "1 <= k < C=10"]),
    (_fmnist_opts("DISTILL.METHOD", "kd"), ["needs a teacher", "MODEL.TEACHER"]),
    (_fmnist_opts("DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher"), ["MODEL.TEACHER_WEIGHTS"]),
    (_fmnist_opts("DISTILL.METHOD", "kd", "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", "no/such.pth"),
     ["MODEL.TEACHER_WEIGHTS", "no such file", "no/such.pth"]),
    (["DATASET.NAME", "mnist"], ["DATASET.NAME='mnist'", "cifar100, imagenet, fashion_mnist"]),
    (_fmnist_opts("SOLVER.LR_DECAY_STAGES", "[5, 3]"), ["SOLVER.LR_DECAY_STAGES", "increasing"]),
    (_fmnist_opts("AMP.DTYPE", "fp8"), ["AMP.DTYPE='fp8'"]),
])
def test_bad_config_fails_early_with_the_key(opts, fragments):
    with pytest.raises(ConfigError) as info:
        load_cls_cfg(None, opts)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_config_file_and_unknown_key():
    with pytest.raises(ConfigError, match="no such config file 'nope.yaml'"):
        load_cls_cfg("nope.yaml")
    with pytest.raises(ConfigError, match="Non-existent key: SOLVER.NOPE"):
        load_cls_cfg(None, ["SOLVER.NOPE", "1"])
    with pytest.raises(ConfigError, match="SOLVER.EPOCHS takes an integer .*got a string 'many'"):
        load_cls_cfg(None, ["SOLVER.EPOCHS", "'many'"])


def test_defaults_match_the_cifar_protocol():
    cfg = get_cls_cfg()
    assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.EPOCHS, cfg.SOLVER.LR, list(cfg.SOLVER.LR_DECAY_STAGES)) == \
        (64, 240, 0.05, [150, 180, 210])
    assert (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM, cfg.SOLVER.LR_DECAY_RATE) == (5e-4, 0.9, 0.1)
