"""The rule that decides whether a resume continues the same run (shared by both trainers)."""
import pytest

from topkd_det.resume_rules import ResumeRefused, ResumeRules, check_resume, flatten

RULES = ResumeRules("SOLVER.EPOCHS", ("OUTPUT_DIR", "LOG."), "epochs")
STORED = flatten("SOLVER:\n  EPOCHS: 10\n  LR: 0.1\n  STAGES: [5, 8]\nLOG:\n  PERIOD: 50\nOUTPUT_DIR: a\nSEED: 0\n")


def _check(allow=False, done=4, defaults=None, **changes):
    return check_resume(STORED, {**STORED, **changes}, RULES, done, "ckpt.pth", allow, defaults)


def test_same_config_and_harmless_keys_pass_silently():
    assert _check() == []
    assert _check(**{"OUTPUT_DIR": "b", "LOG.PERIOD": 5}) == []


def test_tuples_and_lists_compare_equal():
    assert _check(**{"SOLVER.STAGES": [5, 8]}) == [] and flatten({"A": (1, 2)}) == {"A": [1, 2]}


def test_a_result_changing_key_is_refused_with_both_values_or_recorded_with_the_flag():
    with pytest.raises(ResumeRefused, match=r"in 2 key\(s\).*SEED: 0 -> 1; SOLVER.LR: 0.1 -> 0.2"):
        _check(**{"SOLVER.LR": 0.2, "SEED": 1})
    changes = _check(allow=True, **{"SOLVER.LR": 0.2})
    assert [(c.key, c.old, c.new) for c in changes] == [("SOLVER.LR", 0.1, 0.2)]


def test_schedule_length_may_change_but_not_to_what_is_done():
    assert [c.key for c in _check(**{"SOLVER.EPOCHS": 20})] == ["SOLVER.EPOCHS"]  # recorded, not refused
    assert _check(**{"SOLVER.EPOCHS": 5}, done=4)
    with pytest.raises(ResumeRefused, match="already done 4 epochs, so SOLVER.EPOCHS 4 leaves nothing"):
        _check(allow=True, **{"SOLVER.EPOCHS": 4})


def test_a_key_newer_than_the_checkpoint_counts_as_its_default():
    assert _check(defaults={"NEW.KEY": 1}, **{"NEW.KEY": 1}) == []
    with pytest.raises(ResumeRefused, match="NEW.KEY: 1 -> 2"):
        _check(defaults={"NEW.KEY": 1}, **{"NEW.KEY": 2})


def test_a_checkpoint_without_a_config_needs_the_flag():
    with pytest.raises(ResumeRefused, match="stores no config.*--allow-config-change"):
        check_resume(None, STORED, RULES, 4, "old.pth", False)
    assert check_resume(None, STORED, RULES, 4, "old.pth", True) == []
