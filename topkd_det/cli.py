"""How the command-line tools talk to their user: an error ends as one readable line on stderr and a
non-zero exit (the traceback only with ``--debug``); ``--help`` shows the tool's docstring as written and
names the pages of ``docs/`` that say more."""
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


def docs_line(*pages: str) -> str:
    """Where ``--help`` points for more: pages of ``docs/``, relative to the repository root."""
    return "Documentation: " + ", ".join(pages)


def tool_help(doc: str, *pages: str) -> str:
    """A tool's docstring as written (line breaks and examples kept), then ``docs_line(*pages)``: the
    help text of a parser that shows one block of text, such as Detectron2's ``default_argument_parser``."""
    return doc.strip("\n") + "\n\n" + docs_line(*pages)


def documented_parser(doc: str, *pages: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` shows ``doc`` unwrapped above the options and the docs
    pages below them; every tool builds its parser this way (``tests/test_tool_help.py`` checks)."""
    return argparse.ArgumentParser(description=doc.strip("\n"), epilog=docs_line(*pages),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
