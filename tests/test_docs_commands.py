"""The commands in README.md and docs/ run, as far as a CPU can check in seconds:

- every command that runs a script of ``tools/`` or ``benchmarks/`` (a line of a ``bash`` block, or inline
  code) is parsed by that script's own argument parser, so a misspelt, removed or misplaced flag fails;
- its ``--config-file`` under ``configs/`` is loaded with the command's overrides and checked as the
  tool checks it before any work, with no weights and no data read;
- every repository path named in a command or inline code exists (``{a,b}`` expanded, ``*`` globbed);
- every ``make`` target named exists;
- fenced blocks tagged ``test`` (```` ```bash test ````, ```` ```python test ````) run as written.
"""
import argparse
import glob
import itertools
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import pytest

from docs_markdown import REPO, doc_files, inline_code, parse

SCRIPT = re.compile(r"^(tools|benchmarks)/[\w.-]+\.py$")
RUNNERS = {"python", "python3", "torchrun"}
SHELL_OPERATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "2>", "(", ")"}
# A path, or a path-like word, that a reader is asked to substitute or that only exists after a run.
PLACEHOLDER = re.compile(r"\.\.\.|[<>$]|\bX\.yaml\b|ARCHIVE_OR_TREE|\bDIR\b|\bPATH\b")
REPO_PATH = re.compile(r"^(?:tools|benchmarks|configs|docs|requirements|tests|topkd_det|\.ci)/")
CLASSIFICATION_CONFIGS = ("configs/cifar100/", "configs/imagenet/", "configs/fashion_mnist/")


class Command(NamedTuple):
    where: str
    script: str
    argv: List[str]


def _logical_lines(block: str) -> Iterator[str]:
    """A shell block's commands: continuation lines joined."""
    return (text for _, text in _numbered_logical_lines(block))


def _numbered_logical_lines(block: str) -> Iterator[Tuple[int, str]]:
    """(index of its first line, text) of each command of a shell block, continuation lines joined."""
    pending, first = "", 0
    for index, line in enumerate(block.split("\n")):
        if not pending:
            first = index
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def _split(text: str) -> List[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    return list(lexer)


def _commands_in(text: str, where: str) -> Iterator[Command]:
    """The tool invocations in one shell command line: ``[ENV=v] python|torchrun [opts] tools/x.py ARGS``."""
    if not re.search(r"(tools|benchmarks)/[\w.-]+\.py", text):
        return
    try:
        tokens = _split(text)
    except ValueError as err:  # unbalanced quotes: the command cannot run as written
        yield Command(where, f"<{err}: {text}>", [])
        return
    for i, token in enumerate(tokens):
        if SCRIPT.match(token) and any(os.path.basename(t) in RUNNERS for t in tokens[:i]):
            rest = list(itertools.takewhile(lambda t: t not in SHELL_OPERATORS, tokens[i + 1:]))
            yield Command(where, token, rest)


def documented_commands() -> List[Command]:
    found = []
    for path in doc_files():
        page = parse(path)
        for fence in page.fences:
            if fence.language in ("bash", "sh", "shell"):
                for offset, line in _numbered_logical_lines(fence.text):
                    found += _commands_in(line, f"{page.name}:{fence.line + 1 + offset}")
        for line, code in inline_code(page):
            found += _commands_in(code, f"{page.name}:{line}")
    return found


class _Parsed(Exception):
    """Raised from inside a tool once its parser has accepted the command line."""


def parse_with_the_tool(command: Command, monkeypatch, capsys) -> Optional[argparse.Namespace]:
    """The tool's own parser judges the documented arguments, and nothing else of the tool runs: its
    ``parse_args(argv)`` if it has one (which may post-process, as tools/multiseed.py's does), else the
    script runs as ``__main__`` until its ``ArgumentParser.parse_args`` returns. ``None`` for
    ``--help``, which the parser answers itself."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        raise _Parsed(real_parse_args(parser, args, namespace))

    monkeypatch.setattr(sys, "argv", [command.script, *command.argv])
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        module = runpy.run_path(str(REPO / command.script), run_name="docs_check")
        if callable(module.get("parse_args")):
            return module["parse_args"](command.argv)
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        runpy.run_path(str(REPO / command.script), run_name="__main__")
    except _Parsed as parsed:
        return parsed.args[0]
    except SystemExit as exit_:
        if exit_.code == 0 and "--help" in command.argv:
            return None
        pytest.fail(f"{command.where}: {command.script} refuses {shlex.join(command.argv)!r} "
                    f"(exit {exit_.code}): {capsys.readouterr().err.strip()}")
    pytest.fail(f"{command.where}: {command.script} ended without parsing its arguments")


def literal_config(args: argparse.Namespace) -> Optional[str]:
    """The command's config file if it is a real file of configs/, not a placeholder or a run's output."""
    config = getattr(args, "config_file", None) if args is not None else None
    if not config or PLACEHOLDER.search(config) or not config.startswith("configs/"):
        return None
    return config


def load_and_check_config(config: str, opts: List[str]) -> None:
    """What the tools check before any work, minus data and weights."""
    if config.startswith(CLASSIFICATION_CONFIGS):
        from topkd_det.classification.config import load_cls_cfg

        load_cls_cfg(config, opts, check_files=False)
    elif config.endswith(".py"):
        from topkd_det.config_io import ConfigError
        from topkd_det.detection import lazy_engine
        from topkd_det.detection.vitdet import vit_backbone_available

        try:
            cfg = lazy_engine.load_lazy_config(config, opts)
        except ConfigError as err:
            if vit_backbone_available() or "needs the official Detectron2" not in str(err):
                raise
            return  # a ViTDet config on Detectron2 0.6: refused in one line, as docs/vitdet.md says
        lazy_engine.check_distill_loss(cfg)
        lazy_engine.check_teacher(cfg)
    else:
        from topkd_det.detection import engine
        from topkd_det.detection.config import load_config
        from topkd_det.detection.validation import check_distill_config

        cfg = load_config(config, opts)
        check_distill_config(cfg)
        engine.check_teacher(cfg)


COMMANDS = documented_commands()


def test_the_docs_document_commands():
    scripts = {c.script for c in COMMANDS}
    assert {"tools/train_net.py", "tools/train_cls.py", "tools/demo.py"} <= scripts, scripts


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}:{c.script}" for c in COMMANDS])
def test_documented_command_parses_and_its_config_loads(command, monkeypatch, capsys):
    assert (REPO / command.script).is_file(), f"{command.where}: {command.script} does not exist"
    monkeypatch.chdir(REPO)
    args = parse_with_the_tool(command, monkeypatch, capsys)
    config = literal_config(args)
    if config is not None:
        assert (REPO / config).is_file(), f"{command.where}: --config-file {config} does not exist"
        opts = [o for o in getattr(args, "opts", []) if o != "--"]
        try:
            load_and_check_config(config, opts)
        except (ValueError, OSError) as err:
            pytest.fail(f"{command.where}: {config} with {opts} fails its checks: {err}")


def _expand(path: str) -> List[str]:
    """Bash's brace expansion (``a_{x,y}.py``), one level per pair, then globbing."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match:
        return [p for part in match[1].split(",") for p in _expand(path[:match.start()] + part + path[match.end():])]
    return [path]


def _named_paths():
    for path in doc_files():
        page = parse(path)
        texts = [(f"{page.name}:{line}", code) for line, code in inline_code(page)]
        texts += [(f"{page.name}:{f.line}", f.text) for f in page.fences if f.language in ("bash", "sh", "shell")]
        for where, text in texts:
            text = re.sub(r"\{[^{}]*\}", lambda m: m[0].replace(" ", ""), text)  # "{a, b}" is one word
            for word in re.findall(r"[^\s`'\"()\[\]]+", text):
                word = word.split("::")[0].rstrip(".,;:")  # path::name names a function in it
                if REPO_PATH.match(word) and not PLACEHOLDER.search(word):
                    yield where, word


@pytest.mark.parametrize("where, path", sorted(set(_named_paths())))
def test_named_repository_path_exists(where, path):
    missing = [p for p in _expand(path) if not glob.glob(str(REPO / p))]
    assert not missing, f"{where}: {', '.join(missing)} does not exist"


def _make_targets_named(text: str) -> Iterator[str]:
    """The targets of a ``make ...`` command line (variables ``X=y`` and options left out)."""
    try:
        tokens = _split(text)
    except ValueError:
        return
    while tokens and "=" in tokens[0]:
        tokens = tokens[1:]
    if tokens[:1] == ["make"]:
        for token in itertools.takewhile(lambda t: t not in SHELL_OPERATORS, tokens[1:]):
            if "=" not in token and not token.startswith("-"):
                yield token


def test_named_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    checked = set()
    for path in doc_files():
        page = parse(path)
        lines = [code for _, code in inline_code(page)]
        lines += [line for f in page.fences if f.language in ("bash", "sh", "shell") for line in _logical_lines(f.text)]
        for line in lines:
            for name in _make_targets_named(line):
                assert name in targets, f"{page.name}: `make {name}` is not a target of the Makefile"
                checked.add(name)
    assert {"demo", "test", "test-d2main", "demo-cls"} <= checked


def test_make_target_extraction():
    assert list(_make_targets_named('make test PYTEST_ARGS="-k detection -x"  # comment')) == ["test"]
    assert list(_make_targets_named("TOPKD_CACHE=/tmp/c make test-d2main && make demo")) == ["test-d2main"]
    assert not list(_make_targets_named("python tools/demo.py  # the teacher `make demo` trained"))


def _tagged(language: str):
    return [pytest.param(fence, id=f"{parse(p).name}:{fence.line}")
            for p in doc_files() for fence in parse(p).fences if fence.language == language and "test" in fence.tags]


@pytest.mark.parametrize("fence", _tagged("bash"))
def test_tagged_shell_block_runs(fence):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", fence.text], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("fence", _tagged("python"))
def test_tagged_python_block_runs(fence, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(fence.text, str(fence), "exec"), {"__name__": "__docs__"})


def test_there_are_tagged_blocks_of_both_kinds():
    assert _tagged("bash") and _tagged("python")


@pytest.mark.parametrize("text, expected", [
    ("OMP_NUM_THREADS=1 python benchmarks/bench_losses.py --repeats 10",
     [("benchmarks/bench_losses.py", ["--repeats", "10"])]),
    ("for t in a b; do python tools/multiseed.py --config-file c/${t}.yaml --seeds 0 1 2; done",
     [("tools/multiseed.py", ["--config-file", "c/${t}.yaml", "--seeds", "0", "1", "2"])]),
    ("torchrun --nproc_per_node 8 tools/train_cls.py --config-file X.yaml   # DDP",
     [("tools/train_cls.py", ["--config-file", "X.yaml"])]),
    ("python tools/train_net.py DATASETS.TRAIN \"('mine_train',)\"",
     [("tools/train_net.py", ["DATASETS.TRAIN", "('mine_train',)"])]),
    ("bench_losses.py --repeats 10", []),
])
def test_command_extraction(text, expected):
    assert [(c.script, c.argv) for c in _commands_in(text, "x")] == expected


def test_a_wrong_flag_is_caught(monkeypatch, capsys):
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        parse_with_the_tool(Command("x", "tools/demo.py", ["--no-such-flag"]), monkeypatch, capsys)


def test_a_bad_override_after_the_seeds_is_caught(monkeypatch, capsys):
    command = Command("x", "tools/multiseed.py", ["--config-file", "configs/cifar100/resnet32x4_resnet8x4/topkd.yaml",
                                                  "--seeds", "0", "1", "DISTILL.TOPKD.KAPPA", "5"])
    with pytest.raises(pytest.fail.Exception, match="KAPPA"):
        test_documented_command_parses_and_its_config_loads(command, monkeypatch, capsys)
