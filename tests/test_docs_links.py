"""Cross-references in the docs resolve: every relative markdown link in a tracked `.md` file names a file that exists
and, with `#anchor`, a heading of that file; every `docs/X.md, "Section"` reference in a tracked `.md`, `.py` or
`.sh` file names the start of a heading there. The docs are moved and split as experiments grow
(docs/comparison_log.md came out of docs/demo_world.md), and a reference that no longer resolves sends a reader
nowhere without anyone noticing."""

from __future__ import annotations

import functools
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")
# docs/x.md, "Title" | docs/x.md ("Title") | docs/x.md "Title" | docs/x.md, section "Title"
QUOTED = re.compile(r"(docs/[\w/.-]+\.md)(?:,\s*section\s+|,\s*|\s*\(|\s+section\s+|\s+)[\"“]([^\"”]+)[\"”]")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters and digits of any script kept),
    spaces to hyphens."""
    kept = "".join(ch for ch in heading.strip().lower() if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


@functools.cache
def headings(path: str) -> tuple[str, ...]:
    """The text of every markdown heading of `path`, outside fenced code blocks (read once per file)."""
    out, fenced = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                fenced = not fenced
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m and not fenced:
                out.append(m.group(1))
    return tuple(out)


@functools.cache
def anchors(path: str) -> frozenset[str]:
    """GitHub anchors of every heading of `path`."""
    return frozenset(slug(h) for h in headings(path))


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def broken_references(root: str, files: list[str]) -> list[str]:
    """One line per reference in `files` (paths relative to `root`) that does not resolve."""
    bad = []
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        if rel.endswith(".md"):
            for m in LINK.finditer(text):
                target = m.group(1)
                if target.startswith(("http://", "https://", "mailto:")):
                    continue
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(root, os.path.dirname(rel), path)) if path else \
                    os.path.join(root, rel)
                if not os.path.exists(full):
                    bad.append(f"{rel}: link to a missing file: {target}")
                elif anchor and full.endswith(".md") and anchor not in anchors(full):
                    bad.append(f"{rel}: no heading for the anchor: {target}")
        for m in QUOTED.finditer(text.replace("\n", " ")):
            path, title = m.groups()
            full = os.path.join(root, path)
            if not os.path.exists(full):
                bad.append(f"{rel}: reference to a missing file: {path}")
            elif not any(_norm(h).startswith(_norm(title)) for h in headings(full)):
                bad.append(f'{rel}: no heading of {path} starts with "{title}"')
    return bad


def test_slug_matches_github_anchors():
    assert slug("Result: the easy families at 10 and 100 demos, one fine-tuning seed (stop 33)") == \
        "result-the-easy-families-at-10-and-100-demos-one-fine-tuning-seed-stop-33"
    assert slug("Is it LAPA's layout or its pretraining? The LAPA layout from scratch (stop 40)") == \
        "is-it-lapas-layout-or-its-pretraining-the-lapa-layout-from-scratch-stop-40"
    assert slug("The `1b` step") == "the-1b-step"


def test_checker_finds_broken_references(tmp_path):
    os.makedirs(tmp_path / "docs")
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Real section\n\n```\n# not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#real-section) [gone](docs/b.md) [anchor](docs/a.md#not-a-heading) [web](https://x.org/y)\n")
    (tmp_path / "x.py").write_text('# see docs/a.md, "Real sec" and docs/a.md ("Imaginary")\n')
    bad = broken_references(str(tmp_path), ["README.md", "x.py"])
    assert bad == ["README.md: link to a missing file: docs/b.md",
                   "README.md: no heading for the anchor: docs/a.md#not-a-heading",
                   'x.py: no heading of docs/a.md starts with "Imaginary"']


def test_repository_references_resolve():
    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.sh"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    files = [f for f in files if f != "tests/test_docs_links.py"]  # its examples are broken on purpose
    assert len(files) > 100
    assert broken_references(ROOT, files) == []
