"""Reading README.md and docs/ for the documentation tests: fenced blocks, inline code, links, headings
with their GitHub anchors, and tables. Only the Markdown these pages use (ATX headings, fenced code,
inline links, pipe tables); a construct outside it should be added here, not worked around."""
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<marks>`{3,}|~{3,})(?P<info>.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
_HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:name|id)=\"([^\"]+)\"", re.I)
_MARKER = re.compile(r"^<!--\s*numbers from:\s*(\S+)\s*-->\s*$")


@dataclass
class Fence:
    info: str  # the words after the opening backticks, e.g. "bash test"
    text: str  # the block's lines, de-indented by the fence's own indentation
    line: int  # 1-based line of the opening fence

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def tags(self) -> List[str]:
        return self.info.split()[1:]


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]
    line: int
    source: Optional[str] = None  # the target of a `<!-- numbers from: ... -->` comment right above it


@dataclass
class Page:
    path: Path
    text: str
    fences: List[Fence] = field(default_factory=list)
    prose: str = ""  # the text with fenced blocks blanked out (line numbers kept)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(REPO)) if REPO in self.path.parents else str(self.path)


def doc_files() -> List[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def doc_pages() -> List[Path]:
    """The pages people read: ``doc_files`` without the measurement outputs kept as a script wrote
    them (``docs/gpu/<machine-date>/<run>/``), which its folder's README.md describes."""
    raw = REPO / "docs" / "gpu"
    return [p for p in doc_files() if not (raw in p.parents and len(p.relative_to(raw).parts) > 2)]


@lru_cache(maxsize=None)
def parse(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    page, prose, open_fence = Page(path, text), [], None
    for number, line in enumerate(lines, 1):
        match = _FENCE.match(line)
        if open_fence is None and match and not (match["marks"][0] == "`" and "`" in match["info"]):
            # (CommonMark: the info string of a backtick fence has no backtick, or it is inline code)
            open_fence = (match, number, [])
            prose.append("")
        elif open_fence is not None:
            start, first, body = open_fence
            closing = match and match["marks"][0] == start["marks"][0] and len(match["marks"]) >= len(start["marks"]) \
                and not match["info"].strip()
            if closing:
                indent = len(start["indent"])
                text_lines = [b[indent:] if b[:indent].strip() == "" else b.lstrip() for b in body]
                page.fences.append(Fence(start["info"].strip(), "\n".join(text_lines), first))
                open_fence = None
            else:
                body.append(line)
            prose.append("")
        else:
            prose.append(line)
    if open_fence is not None:
        raise AssertionError(f"{path}: the code block opened at line {open_fence[1]} is never closed")
    page.prose = "\n".join(prose)
    return page


def paragraphs(page: Page) -> List[Tuple[int, str]]:
    """(first line, text) of each block of prose between blank lines: inline code never crosses them."""
    blocks, start, current = [], 1, []
    for number, line in enumerate(page.prose.split("\n"), 1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, "\n".join(current)))
            current = []
    if current:
        blocks.append((start, "\n".join(current)))
    return blocks


def inline_code(page: Page) -> List[Tuple[int, str]]:
    """(line, code) of every inline code span, its line breaks turned into spaces."""
    found = []
    for start, block in paragraphs(page):
        for match in _INLINE_CODE.finditer(block):
            code = " ".join(match[2].split("\n")).strip()
            found.append((start + block.count("\n", 0, match.start()), code))
    return found


def _without_code(block: str) -> str:
    return _INLINE_CODE.sub(lambda m: " " * len(m[0]), block)


def links(page: Page) -> List[Tuple[int, str]]:
    """(line, target) of every link and image outside code: inline, reference definitions and HTML."""
    found = []
    for start, block in paragraphs(page):
        text = _without_code(block)
        for pattern in (_LINK, _REFERENCE_DEFINITION, _HTML_TARGET):
            for match in pattern.finditer(text):
                found.append((start + text.count("\n", 0, match.start()), match[1]))
    return found


def _rendered(heading: str) -> str:
    """The heading's text as GitHub renders it: code, emphasis and link syntax gone, their text kept."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"`+([^`]*)`+", r"\1", text)
    text = re.sub(r"(\*{1,3}|\b_{1,3})(\S(?:.*?\S)?)\1", r"\2", text)
    return re.sub(r"<[^>]+>", "", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text in lower case, every character that is not a
    letter, digit, mark, underscore, hyphen or space dropped, then each space turned into a hyphen."""
    kept = []
    for char in _rendered(heading).strip().lower():
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LNM":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def headings(page: Page) -> List[Tuple[int, int, str]]:
    """(line, level, text) of every ATX heading outside code blocks."""
    found = []
    for number, line in enumerate(page.prose.split("\n"), 1):
        match = _HEADING.match(line)
        if match:
            found.append((number, len(match[1]), match[2]))
    return found


def anchors(page: Page) -> Dict[str, int]:
    """Every anchor of the page and its line: headings (repeats get -1, -2, ... as on GitHub) and HTML
    ``name``/``id`` attributes."""
    found: Dict[str, int] = {}
    for number, _, text in headings(page):
        slug, base, repeat = github_slug(text), github_slug(text), 0
        while slug in found:
            repeat += 1
            slug = f"{base}-{repeat}"
        found[slug] = number
    for match in _HTML_ANCHOR.finditer(page.prose):
        found.setdefault(match[1], page.prose.count("\n", 0, match.start()) + 1)
    return found


def _cells(row: str) -> List[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [" ".join(cell.split()) for cell in re.split(r"(?<!\\)\|", row)]


def tables(page: Page) -> List[Table]:
    """Every pipe table, with the ``<!-- numbers from: PATH#ANCHOR -->`` comment of the line above it."""
    found, lines = [], page.prose.split("\n")
    number = 0
    while number < len(lines):
        line = lines[number]
        is_table = line.lstrip().startswith("|") and number + 1 < len(lines) \
            and re.match(r"^\s*\|?\s*:?-{3,}", lines[number + 1])
        if not is_table:
            number += 1
            continue
        marker = _MARKER.match(lines[number - 1].strip()) if number else None
        end = number + 2
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        found.append(Table(_cells(line), [_cells(row) for row in lines[number + 2:end]], number + 1,
                           marker[1] if marker else None))
        number = end
    return found


def section_tables(page: Page, anchor: str) -> List[Table]:
    """The tables under the heading ``anchor``, up to the next heading of the same or a higher level."""
    spans = headings(page)
    slugs = list(anchors(page).items())
    line = dict(slugs).get(anchor)
    if line is None:
        return []
    level = next(lvl for number, lvl, _ in spans if number == line)
    end = next((number for number, lvl, _ in spans if number > line and lvl <= level), page.text.count("\n") + 2)
    return [t for t in tables(page) if line < t.line < end]


def resolve(page: Page, target: str) -> Tuple[Path, str]:
    """A relative link target as (file, anchor); an anchor alone refers to the page itself."""
    path, _, anchor = target.partition("#")
    file = page.path if not path else (page.path.parent / path).resolve()
    return file, anchor
