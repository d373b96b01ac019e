"""The fast classification path (FAST_PATH, fast.py) against the DataLoader path, on the CPU: the same
batches from the same seed, the same losses and weights within float tolerance, the augmentation's
distribution, exact resume, its compiled step as one graph, its config checks, and the loss's fault
record acted on at the logging points (both paths).

On the CPU the fast step runs eagerly and without a CUDA graph; tests/test_cuda_paths.py has the CUDA
graph (skipped without a GPU).
"""
import json
import math
import pickle

import numpy as np
import pytest
import torch

from cls_fixtures import fashion_dir, killed_after_first_checkpoint_then_resumed, tiny_cfg
from conftest import REPO
from topkd_det.classification.checkpoint import load_file
from topkd_det.classification.config import load_cls_cfg
from topkd_det.classification.data import CIFAR100_MEAN, CIFAR100_STD
from topkd_det.classification.engine import Trainer
from topkd_det.classification.fast import FastStep, fast_path_problem, use_fast_path
from topkd_det.classification.models import build_model
from topkd_det.config_io import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 90 train images, 16 held out: 74 a epoch, batches of 16 and a last one of 10.
    return fashion_dir(tmp_path_factory.mktemp("fast_data"), n_train=90)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast_teacher") / "teacher.pth"
    torch.manual_seed(1)
    torch.save(build_model("fmnist_teacher", 10).state_dict(), path)
    return path


def _distill(teacher, method="topkd", *opts):
    return ["DISTILL.METHOD", method, "MODEL.TEACHER", "fmnist_teacher", "MODEL.TEACHER_WEIGHTS", str(teacher),
            "DISTILL.TOPKD.K", 3, "DISTILL.WARMUP", 1.0, *opts]


def _recording(trainer):
    """The trainer, with every batch its distiller sees recorded (input, labels, progress)."""
    seen = []
    forward = trainer.distiller.forward
    trainer.distiller.forward = lambda x, y, progress: seen.append((x.clone(), y.clone(), float(progress))) or \
        forward(x, y, progress)
    return seen


def _lines(cfg, kind):
    with open(f"{cfg.OUTPUT_DIR}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


@pytest.mark.parametrize("method, opts", [
    ("topkd", []),
    ("dkd", ["DISTILL.PLUGIN.TSM", True, "DISTILL.PLUGIN.TDL", True]),
    ("none", []),
])
def test_fast_path_trains_on_the_same_batches_with_the_same_losses_and_weights(tmp_path, data, teacher, method, opts):
    runs = {}
    for mode in ("never", "always"):
        cfg, _ = tiny_cfg(tmp_path, data, "FAST_PATH", mode, "LOG.PERIOD", 1, *_distill(teacher, method, *opts),
                          name=mode)
        trainer = Trainer(cfg)
        assert (trainer.fast is not None) == (mode == "always")
        seen = _recording(trainer)
        results = trainer.train()
        runs[mode] = cfg, seen, trainer.student.state_dict(), results
    (ref_cfg, ref_seen, ref_weights, ref_results), (cfg, seen, weights, results) = runs["never"], runs["always"]

    # The same batches, bitwise, in the same order, at the same progress, the last smaller one included.
    assert [len(y) for _, y, _ in seen] == [16, 16, 16, 16, 10] * 2
    for (x, y, p), (ref_x, ref_y, ref_p) in zip(seen, ref_seen, strict=True):
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and p == ref_p
    # Every step's loss terms (LOG.PERIOD 1) and the weights within float tolerance; the same metrics.
    steps, ref_steps = _lines(cfg, "train_iter"), _lines(ref_cfg, "train_iter")
    assert [set(r) for r in steps] == [set(r) for r in ref_steps] and len(steps) == 10
    for line, ref_line in zip(steps, ref_steps):
        for key, value in ref_line.items():
            if key != "type":
                assert line[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (line["step"], key)
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for record in ("last", "best"):
        assert results[record] == pytest.approx(ref_results[record], rel=1e-5, abs=1e-5)


def test_fast_step_compiles_into_one_graph_and_matches_the_eager_step(tmp_path, data, teacher):
    """The whole step (augmentation, teacher, student, loss) under torch.compile(fullgraph=True); aot_eager,
    because inductor's kernel generation takes minutes on this CPU (the GPU runs inductor)."""
    weights = []
    for backend in (None, "aot_eager"):
        torch._dynamo.reset()
        cfg, _ = tiny_cfg(tmp_path, data, "FAST_PATH", "always", *_distill(teacher), name=f"compiled_{backend}")
        trainer = Trainer(cfg)
        trainer.fast = FastStep(trainer.step, trainer.fast.images, 16, trainer.distiller.loss.term_names,
                                compile=backend)
        trainer.train_one_epoch(0)
        weights.append(trainer.student.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_killed_and_resumed_fast_run_ends_bitwise_equal(tmp_path, data, teacher, monkeypatch):
    opts = ["FAST_PATH", "always", *_distill(teacher), "SOLVER.EPOCHS", 3, "SOLVER.LR_DECAY_STAGES", "[2]"]
    whole_cfg, _ = tiny_cfg(tmp_path, data, *opts, name="whole")
    Trainer(whole_cfg).train()
    cfg, _ = tiny_cfg(tmp_path, data, *opts, name="killed")
    resumed = killed_after_first_checkpoint_then_resumed(cfg, monkeypatch)
    whole, final = load_file(f"{whole_cfg.OUTPUT_DIR}/last.pth"), load_file(f"{cfg.OUTPUT_DIR}/last.pth")
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    assert resumed["last"] == json.loads((tmp_path / "whole" / "results.json").read_text())["last"]


# --- the augmentation's distribution -----------------------------------------------------------------
COORDINATE_IMAGES = 1024


def _coordinate_cifar(root, n=COORDINATE_IMAGES):
    """CIFAR-100 pickles whose pixels say where they are: channel 0 holds row + 1, channel 1 column + 1
    (the zero padding of a crop reads 0), so each augmented image reveals its crop offsets and flip."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)]).astype(np.uint8).reshape(-1)
    for split, count in (("train", n), ("test", 8)):
        entry = {b"data": np.tile(image, (count, 1)), b"fine_labels": [i % 100 for i in range(count)]}
        with open(directory / split, "wb") as f:
            pickle.dump(entry, f)
    with open(directory / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, f)
    return root


def _offsets_and_flips(batches):
    """(dy, dx, flipped) of each image, read from the centre pixels of its un-normalised channels."""
    x = torch.cat([b for b, _, _ in batches])
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    raw = ((x * std + mean) * 255).round()
    row, col_15, col_16 = raw[:, 0, 16, 16], raw[:, 1, 16, 15], raw[:, 1, 16, 16]
    flipped = col_15 > col_16
    # Output (16, 16) shows padded pixel (16 + dy, 16 + dx), i.e. original row 12 + dy (stored + 1);
    # flipped, it shows output column 15's source, original column 11 + dx.
    return (row - 13).long(), torch.where(flipped, col_16 - 12, col_16 - 13).long(), flipped


def _chi2_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of Pearson's chi-square statistic (df = cells - 1) for counts against expected counts."""
    stat = ((observed - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((observed.numel() - 1) / 2), stat / 2))


def _homogeneity_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """p-value of the chi-square test that two count vectors come from one distribution (df = cells - 1)."""
    table = torch.stack([a, b]).double()
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((a.numel() - 1) / 2), stat / 2))


def test_device_augmentation_matches_the_loader_in_distribution(tmp_path):
    """Crop offsets uniform on 0..8 in each direction and flips with p 0.5, in the fast path's batches
    (chi-square against those laws), and the same law as the DataLoader path's batches drawn from
    another seed (chi-square homogeneity). Fixed seeds: the verdict does not vary between runs."""
    root = _coordinate_cifar(tmp_path / "coords")
    samples = {}
    for mode, seed in (("always", 1), ("never", 2)):
        cfg = load_cls_cfg(None, ["DATASET.NAME", "cifar100", "DATASET.ROOT", str(root), "MODEL.STUDENT", "resnet8",
                                  "SOLVER.BATCH_SIZE", 256, "SOLVER.EPOCHS", 1, "FAST_PATH", mode, "SEED", seed,
                                  "LOG.TENSORBOARD", False, "OUTPUT_DIR", str(tmp_path / mode)])
        trainer = Trainer(cfg)
        seen = _recording(trainer)
        trainer.train_one_epoch(0)
        samples[mode] = _offsets_and_flips(seen)
    dy, dx, flipped = samples["always"]
    n = COORDINATE_IMAGES
    assert len(dy) == n and int(dy.min()) >= 0 and int(dy.max()) <= 8 and int(dx.min()) >= 0 and int(dx.max()) <= 8
    uniform = torch.full((9,), n / 9, dtype=torch.float64)
    counts = {name: torch.bincount(v, minlength=9).double() for name, v in (("dy", dy), ("dx", dx))}
    flips = torch.bincount(flipped.long(), minlength=2).double()
    assert _chi2_p(counts["dy"], uniform) > 1e-3
    assert _chi2_p(counts["dx"], uniform) > 1e-3
    assert _chi2_p(flips, torch.tensor([n / 2, n / 2], dtype=torch.float64)) > 1e-3
    ref_dy, ref_dx, ref_flipped = samples["never"]
    assert _homogeneity_p(counts["dy"], torch.bincount(ref_dy, minlength=9)) > 1e-3
    assert _homogeneity_p(counts["dx"], torch.bincount(ref_dx, minlength=9)) > 1e-3
    assert _homogeneity_p(flips, torch.bincount(ref_flipped.long(), minlength=2)) > 1e-3
    # The test can fail: offsets of 0..7 only (a crop window one pixel short) are rejected.
    assert _chi2_p(torch.bincount(dy.clamp(max=7), minlength=9).double(), uniform) < 1e-6


# --- configuration -----------------------------------------------------------------------------------
def test_fast_path_settings_are_checked_before_any_work(tmp_path, data):
    with pytest.raises(ConfigError, match="FAST_PATH='sometimes' is unknown; valid: never, auto, always"):
        tiny_cfg(tmp_path, data, "FAST_PATH", "sometimes")
    with pytest.raises(ConfigError, match="FAST_PATH always: AMP.DTYPE fp16 needs the grad scaler"):
        tiny_cfg(tmp_path, data, "FAST_PATH", "always", "AMP.ENABLED", True, "AMP.DTYPE", "fp16")
    with pytest.raises(ConfigError, match="FAST_PATH always: DATASET.TRANSFORM randaug runs per image"):
        load_cls_cfg(None, ["FAST_PATH", "always", "DATASET.TRANSFORM", "randaug", "DATASET.ROOT", "x"])
    cfg, _ = tiny_cfg(tmp_path, data, "FAST_PATH", "always")
    with pytest.raises(ConfigError, match="FAST_PATH always: 2 processes: the fast path runs one"):
        use_fast_path(cfg, torch.device("cpu"), 2)
    auto, _ = tiny_cfg(tmp_path, data, "FAST_PATH", "auto")
    assert not use_fast_path(auto, torch.device("cpu"), 1) and use_fast_path(auto, torch.device("cuda"), 1)
    assert not use_fast_path(auto, torch.device("cuda"), 2)
    fp16, _ = tiny_cfg(tmp_path, data, "FAST_PATH", "auto", "AMP.ENABLED", True, "AMP.DTYPE", "fp16")
    assert not use_fast_path(fp16, torch.device("cuda"), 1)


def test_every_cnn_config_of_cifar100_can_take_the_fast_path():
    """The CNN protocol's configs (every pair, method, plug-in and LS variant) qualify; the ViT setting's
    (randaug) name why they stay on the DataLoader path."""
    eligible, other, problems = 0, 0, set()
    for path in sorted((REPO / "configs" / "cifar100").rglob("*.yaml")):
        if path.name == "base.yaml":
            continue
        cfg = load_cls_cfg(str(path), check_files=False)
        problem = fast_path_problem(cfg)
        if cfg.DATASET.TRANSFORM == "crop_flip":
            assert problem is None and (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.EPOCHS) == (64, 240), path
            eligible += 1
        else:
            other += 1
            problems.add(problem)
    assert (eligible, other) == (142, 38)
    assert problems == {"DATASET.TRANSFORM randaug runs per image on the CPU (only crop_flip runs on the device)"}


# --- faults of the loss, acted on at the logging points ----------------------------------------------
def _poison_teacher(trainer, bad_call):
    """The teacher's logits are NaN on its ``bad_call``-th forward (counting from 1; it is not evaluated)."""
    calls = [0]
    teacher_forward = trainer.teacher.forward

    def forward(x):
        calls[0] += 1
        out = teacher_forward(x)
        return out * math.nan if calls[0] == bad_call else out

    trainer.teacher.forward = forward


@pytest.mark.parametrize("mode", ["never", "always"])
def test_nonfinite_terms_stop_the_run_at_the_next_logging_point(tmp_path, data, teacher, mode):
    cfg, _ = tiny_cfg(tmp_path, data, "FAST_PATH", mode, "LOG.PERIOD", 4, "TEST.EVAL_TEACHER", False,
                      *_distill(teacher))
    trainer = Trainer(cfg)
    _poison_teacher(trainer, bad_call=2)
    # The NaN teacher logits of step 2 make its update NaN, so steps 3 and 4 (the student's CE too) are
    # non-finite as well; the check at step 4 names the first and stops the run before any checkpoint.
    with pytest.raises(FloatingPointError, match=r"in 3 batch\(es\) since the last check, the first at epoch 1, "
                       r"iteration 2 \(non-finite: loss_ce in 2, loss_con in 3, loss_tdl in 3\)"):
        trainer.train()
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize("mode", ["never", "always"])
def test_nonfinite_batches_are_skipped_with_a_warning(tmp_path, data, teacher, mode, caplog):
    cfg, _ = tiny_cfg(tmp_path, data, "FAST_PATH", mode, "TEST.EVAL_TEACHER", False,
                      *_distill(teacher, "topkd", "DISTILL.NONFINITE", "skip"))
    trainer = Trainer(cfg)
    _poison_teacher(trainer, bad_call=7)  # epoch 2, iteration 2
    trainer.train()
    assert "skipped 1 batch(es) with non-finite logits or loss terms, the first at epoch 2, iteration 2" in caplog.text
    assert all(torch.isfinite(v).all() for v in trainer.student.state_dict().values())
