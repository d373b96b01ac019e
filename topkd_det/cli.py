"""How the command-line tools end on an error: one readable line on stderr and a non-zero exit,
the traceback only with ``--debug``."""
import argparse
import sys
from typing import Any, Callable

# A user's mistake (bad config value, missing or damaged file): the message is the whole story.
USER_ERROR_EXIT = 2
# Anything else: still one line, with the exception type and how to see where it came from.
UNEXPECTED_EXIT = 1
INTERRUPTED_EXIT = 130


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def is_user_error(err: BaseException) -> bool:
    # The project's errors for bad input are ValueErrors (ConfigError, LossOptionError, ResumeRefused,
    # WeightsError, CheckpointError) or OSErrors (DatasetError, missing files).
    return isinstance(err, (ValueError, OSError))


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    if is_user_error(err):
        return text
    lines = [line for line in str(err).splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        # Re-raised from a worker process (torch.multiprocessing): its own last line says what happened.
        return f"{lines[-1].strip()} (in a worker process; --debug shows its traceback)"
    return f"{type(err).__name__}: {text} (unexpected; rerun with --debug for the traceback)"


def run(entry: Callable[[], Any], debug: bool = False) -> Any:
    """Call ``entry()``; turn an exception into ``error: <one line>`` and ``SystemExit``."""
    try:
        return entry()
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    except Exception as err:  # noqa: BLE001 - every error ends as one line unless --debug
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT if is_user_error(err) else UNEXPECTED_EXIT) from None
