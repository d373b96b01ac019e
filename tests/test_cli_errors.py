"""How every tool ends on an error: one line on stderr, a non-zero exit, the traceback only with --debug."""
import pytest

from topkd_det.cli import run
from topkd_det.config_io import ConfigError


def _fail(err):
    def entry():
        raise err

    return entry


def test_a_user_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        run(_fail(ConfigError("SOLVER.LR must be > 0,\n  got 0.0")))
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: SOLVER.LR must be > 0, got 0.0\n"


def test_an_unexpected_error_says_so_and_exits_1(capsys):
    with pytest.raises(SystemExit) as info:
        run(_fail(RuntimeError("CUDA out of memory")))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: CUDA out of memory (unexpected; rerun with --debug for the traceback)\n"


def test_a_worker_process_error_is_reduced_to_its_last_line(capsys):
    class ProcessRaisedException(Exception):
        pass

    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in main\nValueError: MODEL.DISTILL.KD.TEMPERATURE must be > 0, got -1.0\n')
    with pytest.raises(SystemExit):
        run(_fail(ProcessRaisedException(text)))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ValueError: MODEL.DISTILL.KD.TEMPERATURE must be > 0, got -1.0 (in a worker process")


def test_debug_shows_the_original_exception():
    with pytest.raises(ConfigError, match="bad"):
        run(_fail(ConfigError("bad")), debug=True)


def test_interrupt_exits_130(capsys):
    with pytest.raises(SystemExit) as info:
        run(_fail(KeyboardInterrupt()))
    assert info.value.code == 130 and capsys.readouterr().err == "interrupted\n"
