"""Every example in README.md and the documentation site runs against a real sarnn-serve.

A fenced ```python or ```sh block is preceded by an HTML comment that says what to do with it:
`<!-- test: python -->` or `<!-- test: shell -->` (run it; `server=keys` runs it against a server
with the API keys the security guide turns on), or `<!-- not run: REASON -->` (it starts a
server, builds an image, trains for minutes, needs a cluster). A block with neither fails
`test_every_example_says_whether_it_runs`, so a new example is run unless someone says why not.
A ```text block marked `<!-- output -->` right after a run example is what it must print: line
by line, where `...` stands for any text within a line, or for any lines when alone on one.

The server is a real `sarnn-serve` process on a free loopback port serving the shipped
`watch-gru` (the default model, as `make serve` sets it) and `watch-dense-gru73`; the examples'
addresses (127.0.0.1:8000, localhost:8000, gRPC's 8001) and `.venv/bin/` are rewritten to it and
to this interpreter's directory. Python examples run as a separate interpreter in the repository
root; shell examples run under `bash -euo pipefail` with `curl` made to fail on an HTTP error.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.service_fixtures import LiveServer, free_port, start_server, stop_server

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Generated tables (rewritten by their scripts) and the design notes hold no runnable examples.
SKIPPED_DOCS = ("bench/", "pareto/")
SHIPPED = ("watch-gru", "watch-dense-gru73")
KEYS = "alice-secret,bob-secret,ops-secret:admin"  # docs/guides/security.md
RUNNABLE = ("python", "sh", "bash")
MARKER = re.compile(r"<!-- (?:test: (?P<kind>python|shell)(?P<options>[^>]*)|not run: [^>]+) -->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\n", re.MULTILINE | re.DOTALL)
OUTPUT = "<!-- output -->"
CURL_FAILS = 'curl() { command curl --fail-with-body "$@"; }\n'


@dataclass(frozen=True)
class Example:
    """One fenced code block of a Markdown page, with the marker above it (if any)."""

    path: str
    line: int
    lang: str
    code: str
    marker: str | None
    expected: str | None = None

    @property
    def kind(self) -> str | None:
        match = MARKER.fullmatch(self.marker or "")
        return match["kind"] if match else None

    @property
    def server(self) -> str:
        match = MARKER.fullmatch(self.marker or "")
        return "keys" if match and "server=keys" in match["options"] else "open"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def pages() -> list[Path]:
    docs = [
        p
        for p in sorted(DOCS.rglob("*.md"))
        if not str(p.relative_to(DOCS)).startswith(SKIPPED_DOCS)
    ]
    return [ROOT / "README.md", *docs]


def examples() -> Iterator[Example]:
    for page in pages():
        text = page.read_text()
        found: list[Example] = []
        for fence in FENCE.finditer(text):
            before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if before == OUTPUT and found and found[-1].kind is not None:
                found[-1] = replace(found[-1], expected=fence["code"])
                continue
            found.append(
                Example(
                    path=str(page.relative_to(ROOT)),
                    line=text.count("\n", 0, fence.start()) + 1,
                    lang=fence["lang"],
                    code=fence["code"],
                    marker=before if before.startswith("<!--") else None,
                )
            )
        yield from found


def output_pattern(expected: str) -> re.Pattern[str]:
    """The lines of an <!-- output --> block as a pattern: `...` is any text, or any lines."""
    lines = []
    for line in expected.splitlines():
        if line.strip() == "...":
            lines.append(r"(?:[^\n]*\n)*?")
        else:
            lines.append(".*?".join(map(re.escape, line.split("..."))) + r"\n")
    return re.compile("".join(lines))


RUN = [e for e in examples() if e.kind is not None]


def test_every_example_says_whether_it_runs() -> None:
    unmarked = [str(e) for e in examples() if e.lang in RUNNABLE and e.marker is None]
    assert not unmarked, f"mark each with <!-- test: ... --> or <!-- not run: why -->: {unmarked}"
    bad = [
        str(e)
        for e in examples()
        if e.marker is not None and not MARKER.fullmatch(e.marker) and e.marker != OUTPUT
    ]
    assert not bad, f"markers that are neither test nor not run: {bad}"
    kinds = {(e.kind, e.lang) for e in RUN}
    assert kinds <= {("python", "python"), ("shell", "sh")}, kinds
    # the quickstart's tour, the client guide and the README's tour are run
    run_pages = {e.path for e in RUN}
    assert {"README.md", "docs/quickstart.md", "docs/guides/client.md"} <= run_pages
    assert len(RUN) >= 15
    stray = [str(e) for e in examples() if e.marker == OUTPUT]
    assert not stray, f"output blocks that follow no run example: {stray}"


def test_output_pattern() -> None:
    pattern = output_pattern("a ... c\n...\nlast\n")
    assert pattern.fullmatch("a b c\nx\ny\nlast\n")
    assert pattern.fullmatch("a  c\nlast\n")
    assert not pattern.fullmatch("a b c\nlast\nmore\n")
    assert not pattern.fullmatch("a b d\nlast\n")


def _server(tmp: Path, env: dict[str, str]) -> tuple[LiveServer, int]:
    models = tmp / "models"
    models.mkdir()
    for name in SHIPPED:
        (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    grpc_port = free_port()
    base = {"SARNN_DEFAULT_MODEL": "watch-gru", "SARNN_GRPC_PORT": str(grpc_port)}
    return start_server(models, tmp, {**base, **env}), grpc_port


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, int]]:
    server, grpc_port = _server(tmp_path_factory.mktemp("docs-open"), {})
    yield server, grpc_port
    stop_server(server)


@pytest.fixture(scope="module")
def keys_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, int]]:
    server, grpc_port = _server(tmp_path_factory.mktemp("docs-keys"), {"SARNN_API_KEYS": KEYS})
    yield server, grpc_port
    stop_server(server)


def localise(code: str, port: int, grpc_port: int) -> str:
    """The example pointed at the test's server and this interpreter's scripts."""
    for host in ("127.0.0.1", "localhost"):
        code = code.replace(f"{host}:8000", f"127.0.0.1:{port}")
        code = code.replace(f"{host}:8001", f"127.0.0.1:{grpc_port}")
    return code.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


@pytest.mark.parametrize("example", RUN, ids=str)
def test_example_runs(example: Example, request: pytest.FixtureRequest) -> None:
    server, grpc_port = request.getfixturevalue(f"{example.server}_server")
    port = int(server.url.rsplit(":", 1)[1])
    code = localise(example.code, port, grpc_port)
    if example.kind == "python":
        command = [sys.executable, "-c", code]
    else:
        if "curl" in code and shutil.which("curl") is None:
            pytest.skip("curl is not installed: the shell examples call it")
        command = ["bash", "-euo", "pipefail", "-c", CURL_FAILS + code]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{example} failed:\n{done.stdout}\n{done.stderr}\n{server.log()}"
    assert done.stdout.strip(), f"{example} printed nothing"
    if example.expected is not None:
        printed = "".join(line.rstrip() + "\n" for line in done.stdout.splitlines())
        assert output_pattern(example.expected).fullmatch(printed), (
            f"{example} printed\n{printed}\nnot what its output block shows:\n{example.expected}"
        )
