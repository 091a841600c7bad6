"""The README and the pages under docs/ link to files that exist (and to headings that exist,
for `page.md#anchor` links), the README stays a short front door, and its first code block
keeps the two commands `.ci/run` reads (it runs the second one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_CHARS = 10_000
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks: a `[x](y)` inside code is not a link."""
    return FENCE.sub("", text)


def relative_links(text: str) -> list[str]:
    """Targets of the relative links in a Markdown text (external schemes left out)."""
    without_code = INLINE_CODE.sub("", prose(text))
    return [target for target in LINK.findall(without_code) if not EXTERNAL.match(target)]


def heading_slug(heading: str) -> str:
    """GitHub's anchor for a heading: code marks and punctuation dropped, lower case, spaces
    to hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown_file: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    found: set[str] = set()
    for heading in HEADING.findall(prose(markdown_file.read_text(encoding="utf-8"))):
        slug = base = heading_slug(heading)
        repeat = 0
        while slug in found:
            repeat += 1
            slug = f"{base}-{repeat}"
        found.add(slug)
    return found


def broken_links(document: Path) -> list[str]:
    """The relative links of `document` whose file, or heading in a Markdown file, is missing."""
    broken = []
    for target in relative_links(document.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


def first_code_block(text: str) -> list[str]:
    """The lines of the first fenced code block, read as `.ci/run` reads them (awk between the
    first two fence lines)."""
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert len(fences) >= 2, "the README has no fenced code block"
    return lines[fences[0] + 1 : fences[1]]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(document: Path):
    broken = broken_links(document)
    assert broken == [], f"broken links in {document.relative_to(ROOT)}:\n" + "\n".join(broken)


def linked_pages(start: Path) -> set[Path]:
    """The Markdown files reachable from `start` by relative links, `start` included."""
    reached, to_read = {start.resolve()}, [start.resolve()]
    while to_read:
        document = to_read.pop()
        for target in relative_links(document.read_text(encoding="utf-8")):
            linked = (document.parent / target.partition("#")[0]).resolve()
            if linked.suffix == ".md" and linked.exists() and linked not in reached:
                reached.add(linked)
                to_read.append(linked)
    return reached


def test_every_docs_page_is_reachable_from_the_readme():
    reached = linked_pages(README)
    assert [path.name for path in DOCUMENTS if path.resolve() not in reached] == []


def test_readme_is_short():
    length = len(README.read_text(encoding="utf-8"))
    assert length <= README_MAX_CHARS, f"README.md has {length} characters; move detail into docs/"


def test_readme_first_code_block_holds_the_two_commands_ci_runs():
    commands = [line for line in first_code_block(README.read_text(encoding="utf-8")) if line.strip()]
    assert len(commands) == 2, commands
    assert "pytest" in commands[1], "`.ci/run` runs the second line of the first block as the test command"


def test_checker_reports_a_missing_file_and_a_missing_heading(tmp_path: Path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "plot.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.md").write_text("# Other page\n\n## The `builtin:digits` model\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#the-builtindigits-model) ![plot](figures/plot.png) [here](#page)\n"
        "[web](https://example.com/x.md) [mail](mailto:a@b.c) `[code](nowhere.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n"
        "[gone](missing.md) ![gone too](figures/missing.png) [bad anchor](other.md#no-such-heading)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "figures/missing.png: no such file",
        "other.md#no-such-heading: no heading with anchor #no-such-heading in other.md",
    ]
