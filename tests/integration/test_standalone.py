"""The repository stands alone: no tracked file refers to something a fresh clone does not have.

Every tracked text file (``git ls-files``) is scanned for references outside the repository: the sibling
``shared`` folder of the development set-up, the three working-notes files by name (case-sensitive, so
``docs/methods.md`` is fine), numbered issue mentions and absolute paths of the development machine. The
documentation's links must resolve: every relative Markdown link in README.md and docs/*.md points to a
file that exists, and every ``docs/<name>.md#anchor`` (in any file) and in-document ``#anchor`` names a
heading of that document.

The patterns are assembled so that this file's own text does not match them; it is scanned like any other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_NOTES = "|".join(("METHODS", "DESIGN", "STACK"))
#: (what is wrong, pattern); each pattern is written so that its source text does not match itself
OUTSIDE_REFERENCES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("the development set-up's shared folder", re.compile(r"\.\.[/\\]shared\b")),
    ("a working-notes file outside the repository", re.compile(rf"\b(?:{_NOTES})\.md\b")),
    ("a numbered issue mention", re.compile(r"\b[Ii]ssues?[ \t]*#?[0-9]")),
    ("an absolute path of the development machine", re.compile(r"(?<![\w.~-])/(?:wo" + r"rk|ro" + r"ot)/")),
)

MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOC_ANCHOR_REFERENCE = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def outside_references(text: str) -> Iterator[tuple[int, str, str]]:
    """(1-based line, what is wrong, the matched text) for every outside reference in ``text``."""
    for number, line in enumerate(text.splitlines(), start=1):
        for reason, pattern in OUTSIDE_REFERENCES:
            for match in pattern.finditer(line):
                yield number, reason, match.group(0)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (fenced code skipped; repeats get -1, -2, …)."""
    anchors: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def markdown_links(markdown: str) -> Iterator[tuple[int, str]]:
    """(1-based line, target) of the links in ``markdown`` outside code blocks and code spans."""
    in_fence = False
    for number, line in enumerate(markdown.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in MARKDOWN_LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def tracked_text_files() -> dict[str, str]:
    """Relative path → text of every tracked UTF-8 text file; skips the test outside a git checkout."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed: the tracked files cannot be listed")
    listing = subprocess.run([git, "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if listing.returncode != 0:
        reason = listing.stderr.decode(errors="replace").strip()
        pytest.skip(f"{REPO} is not a git checkout (git ls-files: {reason})")
    texts = {}
    for name in listing.stdout.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    if not texts:
        pytest.skip(f"git lists no tracked files under {REPO}")
    return texts


# ------------------------------------------------------------------------------- the detectors themselves


def test_the_patterns_catch_each_kind_of_outside_reference() -> None:
    planted = "\n".join(
        [
            "clean line",
            "see ../" + "shared/notes.md",
            "as " + "METHODS" + ".md section 3 says",
            "DESIGN" + ".md and " + "STACK" + ".md",
            "fixed in " + "issue" + " 12, see also " + "Issue" + " #3 and issues" + "#40",
            "built in /" + "work/main and /" + "root/.cache",
            "docs/methods.md, IssuePolicy, issue tracker, n_issue, runs/work/x and a/root/b are fine",
        ]
    )
    found = [(line, reason) for line, reason, _ in outside_references(planted)]
    reasons = [reason for reason, _ in OUTSIDE_REFERENCES]
    assert found == [
        (2, reasons[0]),
        (3, reasons[1]),
        (4, reasons[1]),
        (4, reasons[1]),
        (5, reasons[2]),
        (5, reasons[2]),
        (5, reasons[2]),
        (6, reasons[3]),
        (6, reasons[3]),
    ]


def test_heading_anchors_and_links_follow_github_rules() -> None:
    markdown = "\n".join(
        [
            "# Methods",
            "## Test-time camera term (option)",
            "## Shared ground",
            "## Shared ground",
            "```",
            "# not a heading",
            "[not a link](nowhere.md)",
            "```",
            'A [link](architecture.md#the-data-path), `[code](skipped.md)` and ![img](pic.png "title").',
        ]
    )
    assert heading_anchors(markdown) == {
        "methods",
        "test-time-camera-term-option",
        "shared-ground",
        "shared-ground-1",
    }
    assert list(markdown_links(markdown)) == [(9, "architecture.md#the-data-path"), (9, "pic.png")]


# --------------------------------------------------------------------------------- the repository itself


def test_no_tracked_file_refers_outside_the_repository() -> None:
    hits = [
        f"{name}:{line}: {reason} ({matched!r})"
        for name, text in sorted(tracked_text_files().items())
        for line, reason, matched in outside_references(text)
    ]
    assert not hits, "files refer to things a clone of the repository does not have:\n" + "\n".join(hits)


def test_documentation_links_resolve() -> None:
    texts = tracked_text_files()
    documents = sorted(name for name in texts if name == "README.md" or re.fullmatch(r"docs/[^/]+\.md", name))
    assert "docs/methods.md" in documents and "docs/architecture.md" in documents
    anchors = {name: heading_anchors(texts[name]) for name in texts if name.endswith(".md")}
    broken = []
    for name in documents:
        folder = (REPO / name).parent
        for line, target in markdown_links(texts[name]):
            if URL_SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (folder / path_part).resolve() if path_part else REPO / name
            if not resolved.exists():
                broken.append(f"{name}:{line}: link to {target!r}: {resolved} does not exist")
                continue
            key = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else None
            if anchor and key in anchors and anchor not in anchors[key]:
                broken.append(f"{name}:{line}: link to {target!r}: {key} has no heading #{anchor}")
    assert not broken, "broken documentation links:\n" + "\n".join(broken)


def test_references_to_documentation_sections_name_existing_headings() -> None:
    texts = tracked_text_files()
    broken = []
    for name, text in sorted(texts.items()):
        for number, line in enumerate(text.splitlines(), start=1):
            for match in DOC_ANCHOR_REFERENCE.finditer(line):
                document, anchor = f"docs/{match.group(1)}", match.group(2)
                if document not in texts:
                    broken.append(f"{name}:{number}: {match.group(0)!r}: {document} is not a tracked file")
                elif anchor not in heading_anchors(texts[document]):
                    broken.append(f"{name}:{number}: {match.group(0)!r}: {document} has no heading #{anchor}")
    assert not broken, "references to documentation sections that do not exist:\n" + "\n".join(broken)
