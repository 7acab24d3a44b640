"""The documentation site builds with strict checking, README stays a front page, and every
relative link in README.md and docs/ names a file that exists (anchors inside the site are
mkdocs's to check: strict mode fails on a missing one)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
# where the docs name files of the repository in code: each such path must exist
REPO_DIRS = ("sarnn_serve/", "export/", "tests/", "benchmarks/", "scripts/", "docker/", "deploy/",
             "docs/", "models/", ".ci/")  # fmt: skip
# [text](target) and ![alt](target), target up to a space or ')'; <img src="...">
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|src=\"([^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not urlsplit(t).scheme and not t.startswith(("#", "//", "/"))]


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        for target in relative_links(page):
            path = unquote(urlsplit(target).path)
            if not (page.parent / path).exists():
                name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
                broken.append(f"{name}: {target}")
    return broken


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    for needed in ("make serve", "make test", "3.11", "SARNN_PORT", "from sarnn_serve.client"):
        assert needed in text, f"README.md no longer says {needed!r}"


def test_every_relative_link_resolves() -> None:
    assert not broken_links(markdown_files())


def named_paths(page: Path) -> list[str]:
    """Repository paths named in code spans and blocks of a page (`sarnn_serve/frames.py`,
    `docs/bench/degrade*.json`), up to the first character that cannot be in one."""
    words = re.findall(r"[\w.*/-]+", " ".join(re.findall(r"`([^`]+)`", page.read_text())))
    return [w.rstrip(".,:;") for w in words if w.startswith(REPO_DIRS)]


def test_every_named_repository_path_exists() -> None:
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in markdown_files()
        for path in named_paths(page)
        if not any(ROOT.glob(path))
    ]
    assert not missing


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#top) ![img](missing.png) `[not a link](nowhere.md)`\n"
        "```\n[in code](nowhere.md)\n```\n[web](https://example.com) [gone](gone/x.md)\n"
    )
    assert broken_links([page]) == [f"{page}: missing.png", f"{page}: gone/x.md"]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (the dev extra)")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (site / "index.html").is_file()
    assert (site / "quickstart" / "index.html").is_file()
    assert (site / "bench" / "savings.png").is_file()
    shutil.rmtree(site)


def test_named_paths_are_read_from_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "see `sarnn_serve/frames.py`, `docs/bench/degrade*.json`; docs/nowhere.md\n"
        "```sh\nbash scripts/gone.sh\n```\n"
    )
    named = named_paths(page)
    assert named == ["sarnn_serve/frames.py", "docs/bench/degrade*.json", "scripts/gone.sh"]
    assert [p for p in named if not any(ROOT.glob(p))] == ["scripts/gone.sh"]
