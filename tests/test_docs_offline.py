"""/docs works offline: Swagger UI's script, style and icon are served by sarnn-serve itself.

The first test reads the page in-process; the second opens it in a real headless Chromium
against a real sarnn-serve process, with every request to another host refused, and waits for
the operations of the OpenAPI schema to render.
"""

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from sarnn_serve.api.app import create_app
from sarnn_serve.settings import Settings
from tests.service_fixtures import LiveServer, start_server, stop_server

MODELS = Path(__file__).resolve().parent.parent / "models"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]


class _Assets(HTMLParser):
    """Collects the URLs of a page's scripts, stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        elif tag == "link" and a.get("href"):
            rel = a.get("rel") or ""
            (self.styles if "stylesheet" in rel else self.icons).append(a["href"])


def test_docs_page_serves_its_own_assets() -> None:
    with TestClient(create_app(Settings(model_dir=MODELS))) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text
        assets = _Assets()
        assets.feed(page.text)
        assert assets.scripts and assets.styles and assets.icons
        for url in assets.scripts + assets.styles + assets.icons:
            assert not urlsplit(url).scheme and not urlsplit(url).netloc, url
        for url in assets.scripts:
            r = client.get(url)
            assert r.status_code == 200, url
            assert "javascript" in r.headers["content-type"]
            assert len(r.content) > 100_000 and b"SwaggerUIBundle" in r.content
        for url in assets.styles:
            r = client.get(url)
            assert r.status_code == 200, url
            assert r.headers["content-type"].startswith("text/css")
            assert len(r.content) > 10_000 and b".swagger-ui" in r.content
        for url in assets.icons:
            assert client.get(url).status_code == 200, url
        assert client.get("/openapi.json").json()["info"]["title"] == "sarnn-serve"


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real sarnn-serve process serving the shipped models."""
    server = start_server(MODELS, tmp_path_factory.mktemp("docs"))
    yield server
    stop_server(server)


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
)
def test_docs_render_in_a_browser_without_internet(shipped_server: LiveServer) -> None:
    from playwright.sync_api import sync_playwright

    own = urlsplit(shipped_server.url).netloc
    refused: list[str] = []
    errors: list[str] = []

    def only_this_server(route, request) -> None:
        if urlsplit(request.url).netloc == own:
            route.continue_()
        else:
            refused.append(request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_this_server)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(urljoin(shipped_server.url, "/docs"))
            page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert refused == []
    assert errors == []
    assert any("/v1/sessions" in p for p in paths), paths
