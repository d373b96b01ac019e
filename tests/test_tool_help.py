"""Every tool's ``--help`` reads well: it shows the tool's docstring line for line (its examples and line
breaks kept) and names pages of docs/ that exist. Every ``tools/*.py`` is covered, and every
``benchmarks/*.py`` that takes options, so a tool added later is checked without editing this file.

The tools run in this process (``runpy``, as ``__main__``), which imports torch and Detectron2 once for
all of them; ``test_help_in_a_fresh_interpreter`` runs the two that import neither as real commands,
and README.md's and docs/'s tagged blocks run others that way (tests/test_docs_commands.py)."""
import ast
import re
import runpy
import subprocess
import sys

import pytest

from docs_markdown import REPO

DOCS_PAGE = re.compile(r"\bdocs/[\w/.-]+\.md\b")


def _takes_options(path) -> bool:
    return bool(re.search(r"ArgumentParser\(|documented_parser\(|argument_parser\(", path.read_text()))


TOOLS = sorted(REPO.glob("tools/*.py"))
SCRIPTS = TOOLS + [p for p in sorted(REPO.glob("benchmarks/*.py")) if _takes_options(p)]


def help_text(path, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), f"{path.name} --help exits with {exit_.value.code}"
    return out


def test_every_tool_takes_options():
    assert all(_takes_options(p) for p in TOOLS), [p.name for p in TOOLS if not _takes_options(p)]


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(REPO)) for p in SCRIPTS])
def test_help_shows_the_docstring_and_names_existing_docs_pages(path, monkeypatch, capsys):
    text = help_text(path, monkeypatch, capsys)
    lines = {line.rstrip() for line in text.split("\n")}
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path.name} has no docstring to show in --help"
    missing = [line for line in doc.split("\n") if line.strip() and line.rstrip() not in lines]
    assert not missing, f"{path.name} --help rewraps or drops its docstring's lines: {missing[:3]}"
    pages = DOCS_PAGE.findall(text)
    assert pages, (f"{path.name} --help names no docs page: build the parser with "
                   "topkd_det.cli.documented_parser(__doc__, 'docs/<page>.md')")
    absent = [page for page in pages if not (REPO / page).is_file()]
    assert not absent, f"{path.name} --help names pages that do not exist: {absent}"


@pytest.mark.parametrize("name", ["install_detectron2", "make_synthetic_coco"])
def test_help_in_a_fresh_interpreter(name):
    result = subprocess.run([sys.executable, f"tools/{name}.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert DOCS_PAGE.search(result.stdout)
