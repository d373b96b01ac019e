"""Every relative link, image and ``#anchor`` in README.md and docs/ leads somewhere: the file exists, and
the anchor is a heading of that page under GitHub's rules (``tests/docs_markdown.github_slug``)."""
from urllib.parse import unquote

import pytest

from docs_markdown import REPO, anchors, doc_files, doc_pages, github_slug, links, parse, resolve

EXTERNAL = ("http://", "https://", "mailto:")


def _cases():
    for path in doc_files():
        page = parse(path)
        for line, target in links(page):
            if not target.startswith(EXTERNAL):
                yield pytest.param(page, line, target, id=f"{page.name}:{line}:{target}")


@pytest.mark.parametrize("page, line, target", list(_cases()))
def test_relative_link_leads_to_a_file_and_anchor(page, line, target):
    file, anchor = resolve(page, unquote(target))
    where = f"{page.name}:{line}: link {target!r}"
    assert file.exists(), f"{where}: {file} does not exist"
    assert REPO in file.parents or file == REPO, f"{where} leaves the repository"
    if anchor:
        assert file.suffix == ".md", f"{where}: an anchor needs a Markdown page, not {file.name}"
        known = anchors(parse(file))
        assert anchor in known, (f"{where}: no heading of {file.relative_to(REPO)} has the anchor "
                                 f"#{anchor}; its anchors: {', '.join(sorted(known))}")


def test_every_page_is_reachable_from_the_readme():
    """No page of docs/ is an orphan: each is linked from README.md or from a page that is."""
    seen, queue = set(), [REPO / "README.md"]
    while queue:
        path = queue.pop()
        if path in seen or path.suffix != ".md":
            continue
        seen.add(path)
        page = parse(path)
        for _, target in links(page):
            if not target.startswith(EXTERNAL):
                file, _ = resolve(page, unquote(target))
                if file.is_file():
                    queue.append(file)
    orphans = [str(p.relative_to(REPO)) for p in doc_pages() if p not in seen]
    assert not orphans, f"pages no link leads to: {', '.join(orphans)}"


def test_every_docs_page_opens_with_a_title_and_what_it_is_for():
    for path in doc_pages():
        page = parse(path)
        lines = [line for line in page.prose.split("\n") if line.strip()]
        if len(page.text.strip().split("\n")) <= 1:
            continue  # a one-line placeholder of a page written elsewhere
        assert lines[0].startswith("# "), f"{page.name} does not open with a '# ' title"
        assert not lines[1].startswith("#"), f"{page.name}: a paragraph saying what the page is for comes first"


@pytest.mark.parametrize("heading, slug", [
    ("The demo (`make demo`)", "the-demo-make-demo"),
    ("Detection only (`add_topkd_config`)", "detection-only-add_topkd_config"),
    ("ViT students (CIFAR-100, the paper's ViT results)", "vit-students-cifar-100-the-papers-vit-results"),
    ("Fashion-MNIST: transfer probe, t-SNE and logit correlation (Table 7 / Figs. 5–6 on a CPU)",
     "fashion-mnist-transfer-probe-t-sne-and-logit-correlation-table-7--figs-56-on-a-cpu"),
    ("Upstream's `pkg_resources` issue", "upstreams-pkg_resources-issue"),
    ("**Bold** and [a link](x.md) ≤ 2×", "bold-and-a-link--2"),
])
def test_github_slug_rules(heading, slug):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page_file = tmp_path / "p.md"
    page_file.write_text("# A\n\n## Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n")
    assert list(anchors(parse(page_file))) == ["a", "notes", "notes-1"]
