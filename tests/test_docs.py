"""The manual (README.md and docs/*.md) points only at things that exist.

- Every relative link names a file of the repository, and its `#anchor` a
  heading of the target page, by GitHub's anchor rules (lower-case,
  punctuation dropped, spaces to `-`, `-1`, `-2`, ... for repeated headings).
- Every `mbert_jax/...`, `configs/...`, `tests/...` or `benchmarks/...` path
  written as code (in backticks or in a code block) exists. A placeholder is
  written in angle brackets (`configs/<file>.py`) and stands for no file.
- Every page of docs/ is linked from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REPO_PATH = re.compile(r"(?<![\w./~$<-])((?:mbert_jax|configs|tests|benchmarks)/[\w./-]*)")


def _lines(text: str):
    """(line number, line, inside a fenced code block) for every line of a page."""
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if _FENCE.match(line):
            yield number, line, True
            fenced = not fenced
        else:
            yield number, line, fenced


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before numbering repeats).

    Args:
      heading: the heading's Markdown text, without the leading `#`s.

    Returns:
      The text lower-cased, with every character that is not a letter, a
      digit, `_`, `-` or a space dropped, and spaces turned into `-`.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a page: one per heading, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in _lines(text):
        match = None if fenced else _HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


def link_problems(page: Path, root: Path) -> list[str]:
    """One line per relative link of `page` whose file or anchor does not exist."""
    problems = []
    for number, line, fenced in _lines(page.read_text(encoding="utf-8")):
        if fenced:
            continue
        prose = _CODE_SPAN.sub("code", line)  # a link's text may be code; code is no link
        for target in _LINK.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}:{number}: ({target})"
            if not file.is_relative_to(root) or not file.exists():
                problems.append(f"{where} no file {path}")
            elif anchor and file.suffix != ".md":
                problems.append(f"{where} an anchor into a file that is not Markdown")
            elif anchor and anchor not in anchors(file.read_text(encoding="utf-8")):
                problems.append(f"{where} no heading with the anchor #{anchor} in {path or 'it'}")
    return problems


def path_problems(page: Path, root: Path) -> list[str]:
    """One line per repository path written as code in `page` that does not exist."""
    problems = []
    for number, line, fenced in _lines(page.read_text(encoding="utf-8")):
        code = [line] if fenced else [span for _, span in _CODE_SPAN.findall(line)]
        for text in code:
            for path in _REPO_PATH.findall(text):
                path = path.rstrip(".")
                if not (root / path).exists():
                    problems.append(f"{page.relative_to(root)}:{number}: no {path}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves(page):
    assert link_problems(page, ROOT) == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_code_path_exists(page):
    assert path_problems(page, ROOT) == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p not in linked] == []
    assert len(PAGES) > 1  # the manual has pages


def test_github_anchor_rules():
    # The anchors GitHub shows for these headings (written by hand).
    assert github_anchor("The quickstart (issue 7)") == "the-quickstart-issue-7"
    assert github_anchor("Model sizes: `mbert-jax describe`") == "model-sizes-mbert-jax-describe"
    assert github_anchor("PKT > JKT > AKT") == "pkt--jkt--akt"
    assert github_anchor("The papers' full-size settings") == "the-papers-full-size-settings"
    assert github_anchor("The `stdlib` task") == "the-stdlib-task"
    assert github_anchor("Using [the data](data.md) layer") == "using-the-data-layer"
    assert github_anchor("config_file and NAME") == "config_file-and-name"
    page = "# Top\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n"
    assert anchors(page) == {"top", "notes", "notes-1"}


def test_the_checks_catch_broken_links_and_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "real.py").write_text("")
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its part\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Read me\n\n"
        "[fine](docs/a.md#its-part), [here](#read-me), [web](https://example.org/x.md)\n"
        "[no file](docs/b.md), [no heading](docs/a.md#no-part), [no anchor here](#nothing)\n"
        "[outside](../elsewhere.md)\n"
        "`configs/real.py:runlocal`, `configs/<file>.py`, `configs/missing.py`\n"
        "```bash\nmbert-jax train --config configs/gone.py --workdir runs/x\n"
        "[not a link](docs/b.md)\n```\n"
    )
    assert link_problems(readme, tmp_path) == [
        "README.md:4: (docs/b.md) no file docs/b.md",
        "README.md:4: (docs/a.md#no-part) no heading with the anchor #no-part in docs/a.md",
        "README.md:4: (#nothing) no heading with the anchor #nothing in it",
        "README.md:5: (../elsewhere.md) no file ../elsewhere.md",
    ]
    assert path_problems(readme, tmp_path) == [
        "README.md:6: no configs/missing.py",
        "README.md:8: no configs/gone.py",
    ]
