"""The comparison tool (tools/compare.py, topkd_det.comparison): the statistics on hand-computed inputs,
the pairing of rows by seed, resuming a killed sweep, and tiny end-to-end sweeps for detection (YAML and
LazyConfig) and classification."""
import csv
import math
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from cls_fixtures import fashion_dir, tiny_cfg, trained_teacher
from conftest import REPO, load_tool
from run_fixtures import det_config
from topkd_det.comparison import report, sweep
from topkd_det.comparison.runs import Row
from topkd_det.comparison.stats import mean_sd, paired_difference, seeds_to_resolve, t_half_width
from topkd_det.config_io import ConfigError
from topkd_det.detection.config import load_config

pytestmark = pytest.mark.usefixtures("single_thread")

# Two-sided 95 % Student-t quantiles t(0.975, df) from a printed t table.
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 16: 2.1199, 17: 2.1098}


# --- statistics -----------------------------------------------------------------------------------------
def test_interval_of_three_paired_differences_by_hand():
    # first − second = 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) · 1 / √3.
    d = paired_difference("A", {0: 11.0, 1: 12.0, 2: 13.0}, "B", {0: 10.0, 1: 10.0, 2: 10.0})
    assert d.differences == (1.0, 2.0, 3.0) and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(2.0) and d.sd == pytest.approx(1.0)
    assert d.half_width == pytest.approx(T_TABLE[2] / math.sqrt(3), abs=1e-4)  # 2.4841
    assert (d.low, d.high) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    assert (d.wins, d.ties, d.losses) == (3, 0, 0)
    assert not d.resolved and d.interval_text() == "[-0.48, +4.48]"


def test_interval_of_two_and_of_five_differences_by_hand():
    d = paired_difference("A", {3: 0.5, 7: 1.5}, "B", {3: 0.0, 7: 0.0})
    assert d.half_width == pytest.approx(T_TABLE[1] * math.sqrt(0.5) / math.sqrt(2), abs=1e-3)  # 6.3531
    values = [0.9, 1.4, 0.2, 1.1, 0.4]  # mean 0.8, sd sqrt(0.245)
    d = paired_difference("A", dict(enumerate(values)), "B", dict.fromkeys(range(5), 0.0))
    assert d.sd == pytest.approx(math.sqrt(0.245))
    assert d.half_width == pytest.approx(T_TABLE[4] * math.sqrt(0.245) / math.sqrt(5), abs=1e-4)  # 0.6146
    assert d.resolved and d.low == pytest.approx(0.8 - 0.6146, abs=1e-4)
    assert d.verdict() == "resolved: A > B"


def test_identical_rows_differ_by_zero_and_are_not_resolved():
    values = {0: 7.3, 1: 5.1, 2: 9.8, 3: 6.0}
    d = paired_difference("A", values, "A again", dict(values))
    assert d.differences == (0.0,) * 4 and d.mean == 0.0 and d.sd == 0.0
    assert (d.low, d.high) == (0.0, 0.0) and (d.wins, d.ties, d.losses) == (0, 4, 0)
    assert not d.resolved
    assert d.verdict() == "not resolved (2 seeds would resolve 0.5)"


@pytest.mark.parametrize("shift", [1.3, -0.01])
def test_a_constant_shift_is_resolved_whatever_the_seed_noise(shift):
    base = {0: 3.0, 1: 11.0, 2: -4.0}  # a spread far larger than the shift
    d = paired_difference("B", {s: v + shift for s, v in base.items()}, "A", base)
    assert d.mean == pytest.approx(shift) and d.sd == pytest.approx(0.0, abs=1e-12)
    assert d.resolved
    assert d.verdict() == ("resolved: B > A" if shift > 0 else "resolved: A > B")
    assert (d.wins, d.losses) == ((3, 0) if shift > 0 else (0, 3))


def test_seeds_needed_to_resolve_half_a_point():
    # sd 1: t(0.975, 16) / √17 = 0.514 >= 0.5, t(0.975, 17) / √18 = 0.497 < 0.5.
    assert T_TABLE[16] / math.sqrt(17) > 0.5 > T_TABLE[17] / math.sqrt(18)
    assert seeds_to_resolve(1.0, 0.5) == 18
    d = paired_difference("A", {0: 1.0, 1: 3.0}, "B", {0: 0.0, 1: 0.0})  # sd √2
    n = d.seeds_needed
    assert t_half_width(d.sd, n) < 0.5 <= t_half_width(d.sd, n - 1)
    assert d.verdict() == f"not resolved ({n} seeds would resolve 0.5)"
    assert seeds_to_resolve(0.0) == 2 and seeds_to_resolve(math.nan) is None


def test_one_seed_has_no_interval_and_unpaired_seeds_are_left_out():
    d = paired_difference("A", {0: 2.0, 5: 9.0}, "B", {0: 1.0, 6: 0.0})
    assert d.seeds == (0,) and math.isinf(d.half_width) and not d.resolved
    assert d.interval_text() == "n/a (1 seed)"
    assert d.verdict() == "not resolved (needs ≥ 2 seeds to resolve 0.5)"
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference("A", {0: 1.0}, "B", {1: 1.0})
    assert mean_sd([2.0]) == (2.0, pytest.approx(math.nan, nan_ok=True))


def test_pairs_of_interest():
    methods = {"student": "none", "KD": "kd", "DKD": "dkd", "TopKD": "topkd"}
    assert sweep.pairs_of_interest(methods) == [("KD", "student"), ("DKD", "student"), ("TopKD", "student"),
                                                ("TopKD", "KD"), ("TopKD", "DKD")]
    pairs = sweep.pairs_of_interest({**methods, "KD+TSM+TDL": "kd"}, extra=[("KD+TSM+TDL", "KD")])
    assert pairs[-1] == ("KD+TSM+TDL", "KD") and ("TopKD", "KD+TSM+TDL") in pairs
    # Two rows without a teacher: no baseline unless named.
    two = {"a": "none", "b": "none", "c": "kd"}
    assert sweep.pairs_of_interest(two) == []
    assert sweep.pairs_of_interest(two, baseline="a") == [("b", "a"), ("c", "a")]
    with pytest.raises(ConfigError, match="no row named 'x' to compare; rows: a, b, c"):
        sweep.pairs_of_interest(two, focus=["x"])


# --- detection ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def det(tmp_path_factory, det_run_names):
    tmp = tmp_path_factory.mktemp("cmp_det")
    test_set = ["DATASETS.TEST", f"('{det_run_names['val']}',)"]
    return {"student": str(det_config(tmp, det_run_names, "none")), "kd": str(det_config(tmp, det_run_names, "kd")),
            "test": test_set, "names": det_run_names, "tmp": tmp}


def _weights(result):
    return torch.load(Path(result.output_dir) / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rows_are_paired_by_seed_and_the_teacher_shifts_nothing(det, tmp_path, monkeypatch):
    """Two rows of one config train the same weights for a seed, and so does a student beside a teacher
    whose loss weighs 0: same initialisation, data order and random draws."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    test_set = tuple(det["test"])
    rows = [Row("student", det["student"], test_set), Row("student again", det["student"], test_set),
            Row("KD weight 0", det["kd"], (*det["test"], "MODEL.DISTILL.KD.WEIGHT", "0.0")),
            Row("KD", det["kd"], tuple(det["test"]))]
    outcome = sweep.run("detection", rows, [0, 1], tmp_path / "cmp", baseline="student", threads=1)
    by = {(r.row, r.seed): r for r in outcome.results}
    for seed in (0, 1):
        plain = _weights(by["student", seed])
        assert _same(plain, _weights(by["student again", seed]))
        assert _same(plain, _weights(by["KD weight 0", seed]))
        assert not _same(plain, _weights(by["KD", seed]))  # the check can fail: the loss changes the weights
        assert by["student", seed].metrics == by["KD weight 0", seed].metrics
    assert not _same(_weights(by["student", 0]), _weights(by["student", 1]))
    again = next(d for d in outcome.differences if d.first == "student again")
    assert again.differences == (0.0, 0.0) and again.ties == 2 and not again.resolved
    assert [d.label for d in outcome.differences] == ["student again − student", "KD weight 0 − student",
                                                      "KD − student"]
    assert {r.selection for r in outcome.results} == {"final model"}
    assert all(r.steps_trained == 3 and r.step_unit == "iteration" for r in outcome.results)


def test_building_a_teacher_draws_nothing_from_the_rng(det):
    """What the pairing rests on, checked directly: the student's weights and the RNG state after the
    model is built are those of the plain student, in both trainers."""
    from detectron2.modeling import build_model as build_detector

    from topkd_det.classification.config import load_cls_cfg
    from topkd_det.classification.distiller import build_teacher as build_cls_teacher

    states = {}
    for name, config in (("plain", det["student"]), ("distill", det["kd"])):
        torch.manual_seed(0)
        model = build_detector(load_config(config, ["MODEL.DEVICE", "cpu"]))
        states[name] = (dict(model.state_dict()), torch.get_rng_state())
    assert type(model).__name__ == "DistillRCNN"
    assert _same(states["plain"][0], states["distill"][0])
    assert torch.equal(states["plain"][1], states["distill"][1])

    cfg = load_cls_cfg(str(REPO / "configs/fashion_mnist/kd.yaml"), check_files=False)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    teacher_weights = det["tmp"] / "fmnist_teacher.pth"
    from topkd_det.classification.models import build_model as build_classifier

    torch.save({"model": build_classifier("fmnist_teacher", 10).state_dict()}, teacher_weights)
    torch.set_rng_state(before)
    cfg.defrost()
    cfg.MODEL.TEACHER_WEIGHTS = str(teacher_weights)
    build_cls_teacher(cfg)
    assert torch.equal(torch.get_rng_state(), before)


class _Killed(BaseException):
    """Stands for the SIGKILL of a sweep: nothing after it runs."""


def test_a_killed_sweep_resumes_where_it_stopped(det, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rows = [Row("student", det["student"], tuple(det["test"])), Row("KD", det["kd"], tuple(det["test"]))]
    steps = []
    original = torch.optim.SGD.step

    def step(optimizer, *args, **kwargs):
        steps.append(1)
        if kill_at and len(steps) == kill_at:
            raise _Killed()
        return original(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    kill_at = 5  # the student's 3 steps, the KD run's first step and checkpoint, killed in its second
    with pytest.raises(_Killed):
        sweep.run("detection", rows, [0], tmp_path / "sweep", threads=1)
    student_dir = next((tmp_path / "sweep" / "student").iterdir())
    stamp = (student_dir / "model_final.pth").stat().st_mtime_ns
    steps.clear()
    kill_at = 0
    resumed = sweep.run("detection", rows, [0], tmp_path / "sweep", threads=1)
    assert len(steps) == 2  # the KD run's iterations 1 and 2; the finished student is read back
    assert (student_dir / "model_final.pth").stat().st_mtime_ns == stamp and resumed.trained == 1
    assert [r.steps_trained for r in resumed.results] == [3, 2]
    steps.clear()
    fresh = sweep.run("detection", rows, [0], tmp_path / "uninterrupted", threads=1)
    assert len(steps) == 6
    for a, b in zip(resumed.results, fresh.results):
        assert _same(_weights(a), _weights(b)) and a.metrics == b.metrics
    steps.clear()
    assert sweep.run("detection", rows, [0], tmp_path / "sweep", threads=1).trained == 0 and not steps


def test_a_changed_row_trains_anew_beside_the_old_run(det, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    row = Row("KD", det["kd"], tuple(det["test"]))
    first = sweep.run("detection", [row], [0], tmp_path / "out", threads=1).results[0]
    changed = sweep.run("detection", [Row("KD", det["kd"], (*det["test"], "MODEL.DISTILL.KD.TEMPERATURE", "2.0"))],
                        [0], tmp_path / "out", threads=1)
    assert changed.trained == 1 and changed.results[0].output_dir != first.output_dir
    assert (Path(first.output_dir) / "model_final.pth").is_file()  # the old run is kept


def test_lazy_and_yaml_rows_in_one_detection_comparison(det, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model(load_config(REPO / "configs/embedded/teacher.yaml")).state_dict()}, teacher)
    names = det["names"]
    lazy = ["train.max_iter=2", f"dataloader.train.dataset.names={names['train']}",
            f"dataloader.test.dataset.names={names['val']}", f"model.teacher.weights={teacher}",
            "model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=16",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[32]",
            "dataloader.train.mapper.augmentations.0.max_size=32",
            "dataloader.test.mapper.augmentations.0.short_edge_length=32",
            "dataloader.test.mapper.augmentations.0.max_size=32"]
    rows = [Row("student", det["student"], tuple(det["test"])),
            Row("TopKD (lazy)", str(REPO / "configs/embedded/topkd.py"), tuple(lazy))]
    outcome = sweep.run("detection", rows, [1], tmp_path / "out", threads=1)
    assert [s.method for s in outcome.specs] == ["none", "topkd"]
    lazy_run = outcome.results[1]
    state = torch.load(Path(lazy_run.output_dir) / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["config"]["train.seed"] == 1 and state["iteration"] == 1  # the comparison's seed, 2 iterations
    assert set(lazy_run.metrics) == {"AP", "AP50", "AP75"} and lazy_run.steps_trained == 2
    assert [d.label for d in outcome.differences] == ["TopKD (lazy) − student"]


def test_detection_rows_need_one_test_dataset(det, tmp_path):
    with pytest.raises(ConfigError, match=r"row 'student' .*DATASETS.TEST names 0 datasets \(none\); a comparison "
                                          r"scores every run on one"):
        sweep.plan("detection", [Row("student", det["student"])], [0], tmp_path)


# --- classification -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp_cls")
    data = fashion_dir(tmp)
    teacher = trained_teacher(tmp, data)
    _, student = tiny_cfg(tmp, data, name="student")
    _, kd = tiny_cfg(tmp, data, name="kd", MODEL={"STUDENT": "fmnist_student", "TEACHER": "fmnist_teacher",
                                                  "TEACHER_WEIGHTS": str(teacher)},
                     DISTILL={"METHOD": "kd", "CE_WEIGHT": 1.0})
    return {"student": str(student), "kd": str(kd), "data": data, "tmp": tmp}


def test_classification_comparison_end_to_end(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rows = [Row("none", cls["student"]), Row("KD weight 0", cls["kd"], ("DISTILL.KD.WEIGHT", "0.0")),
            Row("KD", cls["kd"])]
    tool = load_tool("compare")
    argv = ["--task", "classification", "--seeds", "0", "1", "--output", str(tmp_path / "cmp"), "--threads", "1",
            "--compare", "KD", "KD weight 0"]
    for row in rows:
        argv += ["--row", row.name, row.config, *row.opts]
    text = tool.main(argv)
    outcome_rows = list(csv.DictReader(open(tmp_path / "cmp" / "results.csv")))
    by = {(r["row"], r["seed"]): r for r in outcome_rows}
    for seed in ("0", "1"):
        assert by["none", seed]["top1"] == by["KD weight 0", seed]["top1"]
        a, b = (torch.load(Path(by[row, seed]["output_dir"]) / "last.pth", weights_only=True)["model"]
                for row in ("none", "KD weight 0"))
        assert _same(a, b)
        assert "chosen on val top-1" in by["none", seed]["selection"]
    comparisons = list(csv.DictReader(open(tmp_path / "cmp" / "comparisons.csv")))
    assert [c["comparison"] for c in comparisons] == ["KD weight 0 − none", "KD − none", "KD − KD weight 0"]
    zero = comparisons[0]
    assert float(zero["mean"]) == 0.0 and (zero["wins"], zero["ties"], zero["losses"]) == ("0", "2", "0")
    for fragment in ("## Rows", "| none | none |", "## Paired differences of test top-1",
                     "| KD weight 0 − none | +0.00 |",
                     "test top-1 per seed", "Command: `", "Machine: ", "Wall time of this invocation"):
        assert fragment in text
    assert (tmp_path / "cmp" / "results.png").stat().st_size > 1000


def test_classification_without_a_val_split_reports_the_last_epoch(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    outcome = sweep.run("classification", [Row("none", cls["student"], ("DATASET.VAL_SIZE", "0"))], [0],
                        tmp_path / "cmp", threads=1)
    result = outcome.results[0]
    assert result.selection == "last epoch (no val split)" and result.metrics["top1"] == result.metrics["last_top1"]
    assert result.steps_trained == 2 and result.step_unit == "epoch"


# --- the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--row", "a", "A.yaml", "--row", "a", "B.yaml"], "row names must be unique; given more than once: a"),
    (["--row", "a", "{student}", "--compare", "a", "b"], "no row named 'b' to compare; rows: a"),
    (["--row", "a", "no/such.yaml"], "row 'a' (no/such.yaml): "),
    (["--row", "a", "{student}", "--seeds", "1", "1"], "--seeds lists a seed twice: [1, 1]"),
    (["--row", "a", "{student}", "--metric", "AP"], "--metric for classification must be one of top1, val_top1"),
])
def test_bad_comparisons_fail_in_one_line_before_training(cls, tmp_path, capsys, argv, message):
    tool = load_tool("compare")
    argv = [a.format(student=cls["student"]) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        tool.cli(["--task", "classification", "--output", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_report_of_a_single_seed(tmp_path):
    from topkd_det.comparison.runs import RunResult, RunSpec

    specs = [RunSpec("detection", row, 0, "c.yaml", (), str(tmp_path / row), "k", 10, method)
             for row, method in (("student", "none"), ("TopKD", "topkd"))]
    results = [RunResult(s.row, 0, {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2}, 5.0, 10, "iteration", s.output_dir,
                         "final model") for s, ap in zip(specs, (6.0, 8.5))]
    outcome = sweep.Outcome("detection", "AP", specs, results, [], 60.0, 2, references={"teacher": {"AP": 20.0}})
    outcome.differences = sweep.differences(outcome.values(), [("TopKD", "student")])
    text = report.write(tmp_path / "report", outcome, "Demo", command="python tools/demo.py")
    assert "| teacher | reference | 20.00 |" in text and "| TopKD | topkd | 8.50 | 17.00 | 4.25 | 0.500 | 0 |" in text
    assert ("| TopKD − student | +2.50 | n/a (1 seed) | 1 / 0 / 0 | 1 | not resolved (needs ≥ 2 seeds to resolve "
            "0.5) |") in text
    assert "Wall time of this invocation: 1.0 min (2 of 2 runs trained" in text
