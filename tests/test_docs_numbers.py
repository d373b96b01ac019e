"""Numbers that appear on two pages stay equal.

- A table that repeats another page's numbers says where they come from in the line above it,
  ``<!-- numbers from: PAGE#ANCHOR -->``; every cell of it must equal the cell of the same row (first
  column) and column (header) in a table under that heading. It may leave rows and columns out.
- The knob reference (docs/knobs.md) quotes the ablations behind its defaults, rounded: every number of
  an "Ablation:" sentence there must be a number of docs/ablations.md, or one rounded to as many decimals.
"""
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from docs_markdown import REPO, doc_files, parse, resolve, section_tables, tables

NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def _marked_tables():
    for path in doc_files():
        page = parse(path)
        for table in tables(page):
            if table.source:
                yield pytest.param(page, table, id=f"{page.name}:{table.line}")


MARKED = list(_marked_tables())


def test_the_readme_headline_tables_are_marked():
    assert sum(1 for p in MARKED if p.values[0].name == "README.md") >= 2


@pytest.mark.parametrize("page, table", MARKED)
def test_repeated_table_equals_its_source(page, table):
    file, anchor = resolve(page, table.source)
    where = f"{page.name}:{table.line} (numbers from {table.source})"
    assert file.is_file() and anchor, f"{where}: the source must be PAGE#ANCHOR of an existing page"
    sources = section_tables(parse(file), anchor)
    assert sources, f"{where}: no table under #{anchor} in {parse(file).name}"
    for row in table.rows:
        match = [(src, cells) for src in sources for cells in src.rows if cells[0] == row[0]]
        assert match, f"{where}: row {row[0]!r} is not in the source"
        source, cells = match[0]
        for column, value in zip(table.header, row):
            assert column in source.header, f"{where}: column {column!r} is not in the source"
            expected = cells[source.header.index(column)]
            assert value == expected, f"{where}: {row[0]} / {column}: {value!r} here, {expected!r} in the source"


def _rounds_to(quoted: str, candidates) -> bool:
    exponent = Decimal(quoted).as_tuple().exponent
    return any(Decimal(c) == Decimal(quoted) or Decimal(c).quantize(Decimal(1).scaleb(exponent),
                                                                     rounding=ROUND_HALF_UP) == Decimal(quoted)
               for c in candidates)


def test_knob_reference_quotes_the_ablations():
    measured = set(NUMBER.findall((REPO / "docs" / "ablations.md").read_text()))
    quoted = []
    for table in tables(parse(REPO / "docs" / "knobs.md")):
        for row in table.rows:
            for cell in row:
                for sentence in re.findall(r"Ablation:([^|]*)", cell):
                    quoted += NUMBER.findall(sentence)
    assert len(quoted) > 20, "the knob reference should quote its ablations"
    unmatched = [q for q in quoted if not _rounds_to(q, measured)]
    assert not unmatched, f"docs/knobs.md quotes numbers docs/ablations.md does not have: {unmatched}"


def test_a_changed_number_is_caught(tmp_path):
    (tmp_path / "source.md").write_text("# S\n\n## Data\n\n| method | AP |\n|---|---|\n| KD | 7.58 |\n")
    (tmp_path / "copy.md").write_text("# C\n\n<!-- numbers from: source.md#data -->\n| method | AP |\n|---|---|\n"
                                      "| KD | 7.59 |\n")
    page = parse(tmp_path / "copy.md")
    with pytest.raises(AssertionError, match="7.59"):
        test_repeated_table_equals_its_source(page, tables(page)[0])
