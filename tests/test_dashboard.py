"""The live dashboard in a real headless Chromium against a real sarnn-serve process.

A client streams a real watch recording over the WebSocket while the page is open; the page's
numbers (read from `data-testid` elements, raw values in `data-value`) and its raster canvas
(pixels read back with getImageData) must move with it, and the page must log no errors.
The page is run in the server's three modes: sessions listed to anyone (SARNN_LIST_SESSIONS),
listing off (the default: sessions are picked by id) and API keys on. The model card's engine
fields (measured time saved, work-skipping calls, routing) must match GET
/v1/models/{name}/stats, with the default routing (auto) and with every batch sent to the sparse
graph (SARNN_ENGINE_PATH=sparse).
"""

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.browser_fixtures import CHROMIUM, CHROMIUM_ARGS
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server, watch_steps

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# The tiny test model (2 epochs) updates ~95% of its neurons at tau = 0.5, which costs more than
# the dense cell; at tau = 0.9 it skips about a third of them, so multiply-adds saved grow.
THRESHOLD = 0.9
TIMEOUT_MS = 10_000
USER_KEY, ADMIN_KEY = "user-key", "admin-key"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
    ),
]

# Dark pixels of a canvas (the raster draws an updated neuron dark, a kept one white, and a
# column without data light grey) and a checksum of all its pixels.
DARK_PIXELS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 300) n++;
  return n;
}"""
CHECKSUM = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let h = 0;
  for (let i = 0; i < d.length; i++) h = (Math.imul(h, 31) + d[i]) | 0;
  return h;
}"""
RASTER = '[data-testid="raster"]'


def card(testid: str) -> str:
    return f'[data-model="{TINY_MODEL}"] [data-testid="{testid}"]'


def tid(testid: str) -> str:
    return f'[data-testid="{testid}"]'


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """The start of a real test-subject recording of the watch data (tests/data), eight times
    over (2,400 steps: a stream that lasts while the page is watched): x [T, 6] in raw sensor
    units."""
    return np.tile(watch_steps(), (8, 1))


@pytest.fixture(scope="module")
def listing_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server that lists recent sessions to anyone, so the page can follow the newest; it
    routes batches by measurement (auto), the default of a real server."""
    env = {"SARNN_LIST_SESSIONS": "true", "SARNN_ENGINE_PATH": "auto"}
    server = start_server(served_models, tmp_path_factory.mktemp("listing"), env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def keyed_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server with API keys on: one user key and one admin key."""
    server = start_server(
        served_models,
        tmp_path_factory.mktemp("keyed"),
        {"SARNN_API_KEYS": f"{USER_KEY},{ADMIN_KEY}:admin"},
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def sparse_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server that runs every batch on the sparse graph (SARNN_ENGINE_PATH=sparse), with
    graceful degradation on (a queueing delay target it never reaches)."""
    env = {"SARNN_ENGINE_PATH": "sparse", "SARNN_DEGRADE_QUEUE_MS": "60000"}
    server = start_server(served_models, tmp_path_factory.mktemp("sparse"), env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A 1280x800 page that records console errors and uncaught exceptions in `page.errors`."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


class Streamer(threading.Thread):
    """Streams a recording over /v1/stream in chunks until it ends or `stop` is set."""

    def __init__(self, server: LiveServer, x: np.ndarray, chunk: int = 4, delay: float = 0.02):
        super().__init__(daemon=True)
        self.url = f"{server.ws_url}/v1/stream?model={TINY_MODEL}&threshold={THRESHOLD}"
        self.x, self.chunk, self.delay = x, chunk, delay
        self.stop = threading.Event()
        self.opened = threading.Event()
        self.session_id: str | None = None
        self.steps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url, compression=None) as ws:
                self.session_id = json.loads(ws.recv())["session"]["id"]
                self.opened.set()
                for seq, i in enumerate(range(0, len(self.x), self.chunk)):
                    if self.stop.is_set():
                        break
                    rows = self.x[i : i + self.chunk].tolist()
                    ws.send(json.dumps({"seq": seq, "inputs": rows}))
                    answer = json.loads(ws.recv())
                    assert answer["type"] == "chunk", answer
                    self.steps += answer["chunk"]["steps"]
                    time.sleep(self.delay)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.opened.set()

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        assert self.error is None, self.error


def page_errors(page, *statuses: int) -> list[str]:
    """The page's errors, less the browser's own line for each HTTP answer with one of
    `statuses` (the dashboard expects a 403 when listing is off, a 401 before it has a key)."""
    expected = tuple(f"the server responded with a status of {s} " for s in statuses)
    return [e for e in page.errors if not any(x in e for x in expected)]


def value(page, selector: str) -> float:
    return float(page.locator(selector).get_attribute("data-value"))


def wait_value(page, selector: str, op: str, bound: float) -> float:
    """Wait until the element's data-value satisfies `op bound`; return it."""
    page.wait_for_function(
        f"""() => {{
          const el = document.querySelector('{selector}');
          return el && el.dataset.value !== undefined && Number(el.dataset.value) {op} {bound};
        }}""",
        timeout=TIMEOUT_MS,
    )
    return value(page, selector)


def pct(text: str) -> float:
    """A percentage as the page writes it ("12.3%", "\u221212.3%") as a number of percent."""
    assert re.fullmatch(r"\u2212?\d+\.\d%", text), text
    return float(text.replace("\u2212", "-")[:-1])


def seconds(text: str) -> float:
    """A duration as the page writes it ("0 s", "850 \u00b5s", "\u22121.25 ms", "2.41 s")."""
    m = re.fullmatch(r"(\u2212?)(\d+(?:\.\d+)?) (\u00b5s|ms|s)", text)
    assert m, text
    scale = {"\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0}[m[3]]
    return (-1 if m[1] else 1) * float(m[2]) * scale


def engine_stats(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/v1/models/{TINY_MODEL}/stats").json()["engine"]


def assert_engine_shown(page, server: LiveServer) -> dict:
    """Once the model card shows as many engine calls as GET /v1/models/{name}/stats counts,
    its measured-time and graph fields must show that answer's numbers; return the answer.
    Call it when no chunks are in flight, so the server's numbers hold still."""
    engine = engine_stats(server)
    calls = sum(engine["calls"].values())
    sparse = calls - engine["calls"].get("dense", 0)  # native kernel or sparse graph
    assert calls > 0
    wait_value(page, card("engine-calls"), "==", calls)
    assert page.locator(card("routing")).inner_text() == engine["routing"]
    assert value(page, card("sparse-calls")) == sparse
    assert value(page, card("sparse-share")) == pytest.approx(sparse / calls)
    share_text = pct(page.locator(card("sparse-share")).inner_text())
    assert 0 <= share_text <= 100
    assert share_text == pytest.approx(100 * sparse / calls, abs=0.051)
    saved = engine["measured_time_saved"]
    assert value(page, card("time-saved")) == pytest.approx(saved)
    assert pct(page.locator(card("time-saved")).inner_text()) == pytest.approx(
        100 * saved, abs=0.051
    )
    for testid, key in (
        ("time-saved-s", "measured_time_saved_s"),
        ("dense-equivalent-s", "dense_equivalent_seconds"),
    ):
        assert value(page, card(testid)) == pytest.approx(engine[key])
        shown = seconds(page.locator(card(testid)).inner_text())
        assert shown == pytest.approx(engine[key], rel=0.01, abs=6e-7)
    assert engine["dense_equivalent_seconds"] > 0
    return engine


def wait_text(page, testid: str, text: str) -> None:
    """Wait until the element's text contains `text`."""
    page.wait_for_function(
        f"document.querySelector('{tid(testid)}').textContent.includes({json.dumps(text)})",
        timeout=TIMEOUT_MS,
    )


def wait_picked(page, session_id: str) -> None:
    """Wait until the session picker shows `session_id`."""
    page.wait_for_function(
        f"document.querySelector('{tid('session-select')}').value === '{session_id}'",
        timeout=TIMEOUT_MS,
    )


def wait_latest_step(page, index: int) -> None:
    page.wait_for_function(
        f"document.querySelector('{tid('latest-step')}').textContent === '{index:,}'",
        timeout=TIMEOUT_MS,
    )


def test_dashboard_follows_a_live_stream(
    listing_server: LiveServer, page, recording: np.ndarray
) -> None:
    page.goto(f"{listing_server.url}/dashboard")
    page.wait_for_selector(f"{card('steps-total')}[data-value]", timeout=TIMEOUT_MS)
    labels = httpx.get(f"{listing_server.url}/v1/models/{TINY_MODEL}").json()["class_labels"]
    macs_before = value(page, card("macs-saved"))
    dark_before = page.evaluate(DARK_PIXELS, RASTER)
    assert dark_before == 0, "the raster is empty before any session streams"

    streamer = Streamer(listing_server, recording)
    streamer.start()
    try:
        assert streamer.opened.wait(10) and streamer.error is None, streamer.error
        # no session chosen: the page follows the most recent one
        wait_picked(page, streamer.session_id)
        assert page.locator(tid("session-note")).is_hidden()
        assert wait_value(page, card("steps-per-s"), ">", 0) > 0
        assert wait_value(page, card("active-sessions"), ">=", 1) >= 1
        macs_first = wait_value(page, card("macs-saved"), ">", macs_before)
        macs_later = wait_value(page, card("macs-saved"), ">", macs_first)
        assert macs_later > macs_first > macs_before

        rate_text = page.locator(card("update-rate")).inner_text()
        assert re.fullmatch(r"\d{1,3}\.\d%", rate_text), rate_text
        assert 0 <= float(rate_text[:-1]) <= 100
        assert 0 <= value(page, card("update-rate")) <= 1
        assert re.fullmatch(r"\d+(\.\d+)? ?[kMGT]?", page.locator(card("macs-saved")).inner_text())
        assert re.fullmatch(r"\d{1,3}\.\d%", page.locator(card("macs-saved-pct")).inner_text())

        # the raster fills with dark (updated) pixels and scrolls as steps arrive
        page.wait_for_function(f"({DARK_PIXELS})('{RASTER}') > 0", timeout=TIMEOUT_MS)
        dark = page.evaluate(DARK_PIXELS, RASTER)
        assert dark > dark_before
        first_step = int(page.locator(tid("latest-step")).inner_text().replace(",", ""))
        checksum = page.evaluate(CHECKSUM, RASTER)
        page.wait_for_function(
            f"Number(document.querySelector('{tid('latest-step')}').textContent"
            f".replace(/,/g, '')) >= {first_step + 100}",
            timeout=TIMEOUT_MS,
        )
        page.wait_for_timeout(100)  # one animation frame
        assert page.evaluate(CHECKSUM, RASTER) != checksum
        assert page.evaluate(DARK_PIXELS, RASTER) > 0

        # predictions: latest label and update count, the recent list, the legend
        assert page.locator(tid("latest-label")).inner_text() in labels
        latest_updates = value(page, tid("latest-updates"))
        assert 0 <= latest_updates <= 16
        shown = page.locator(f"{tid('predictions')} li[data-label] .what").all_inner_texts()
        assert shown and set(shown) <= set(labels)
        assert page.locator(f"{tid('legend')} span.swatch").count() == len(labels)

        # the chosen session's totals
        assert wait_value(page, tid("session-steps"), ">", 0) > 0
        assert 0 < value(page, tid("session-update-rate")) <= 1
        assert wait_value(page, tid("session-macs-saved"), ">", 0) > 0
        assert "watching live" in page.locator(tid("watch-status")).inner_text()

        # beside the counted multiply-adds: measured engine time, work-skipping calls, routing
        assert wait_value(page, card("engine-calls"), ">", 0) > 0
        assert page.locator(card("routing")).inner_text() == "auto"
        assert 0 <= pct(page.locator(card("sparse-share")).inner_text()) <= 100
        assert 0 <= value(page, card("sparse-share")) <= 1
        assert pct(page.locator(card("time-saved")).inner_text()) <= 100
        dense_s = seconds(page.locator(card("dense-equivalent-s")).inner_text())
        assert dense_s > 0
        assert seconds(page.locator(card("time-saved-s")).inner_text()) <= dense_s
        assert_labelled(page)
        assert page.locator(card("degrade-level")).inner_text() == "off"  # not configured
        for testid in ("macs-saved", "time-saved", "sparse-share", "routing"):
            box = page.locator(card(testid)).bounding_box()
            assert box and box["y"] + box["height"] <= page.viewport_size["height"], testid

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "dashboard.png")
    finally:
        streamer.finish()
    assert streamer.steps > 100
    # the stream is over: the page settles on the server's own engine numbers
    assert assert_engine_shown(page, listing_server)["routing"] == "auto"
    assert page.errors == []


def assert_labelled(page) -> None:
    """Each saving says what it is: a visible caption, and the full explanation as a tooltip."""
    macs, time_saved = card("macs-saved-stat"), card("time-saved-stat")
    assert page.locator(f"{macs} .label").inner_text().lower() == "multiply-adds saved"
    assert page.locator(card("macs-saved-caption")).inner_text() == "counted from update counts"
    macs_title = page.locator(macs).get_attribute("title")
    assert macs_title.startswith("Multiply-adds saved (counted from update counts)")
    assert page.locator(f"{time_saved} .label").inner_text().lower() == "measured time saved"
    assert page.locator(card("time-saved-caption")).inner_text() == "engine seconds vs. dense graph"
    time_title = page.locator(time_saved).get_attribute("title")
    assert time_title.startswith(
        "Measured time saved (engine seconds vs. the dense graph: measured on dense calls, "
        "calibrated at load for calls on the native kernel or the sparse graph)"
    )
    share_title = page.locator(card("sparse-share-stat")).get_attribute("title")
    assert "native kernel" in share_title and "sparse graph" in share_title


def bearer(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def create_session(server: LiveServer, key: str | None = None) -> str:
    created = httpx.post(
        f"{server.url}/v1/sessions",
        json={"model": TINY_MODEL, "threshold": THRESHOLD},
        headers=bearer(key),
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def post_chunks(
    server: LiveServer,
    session_id: str,
    x: np.ndarray,
    first_seq: int,
    n: int,
    key: str | None = None,
) -> int:
    """POST n chunks of 20 steps from x; return the session's steps afterwards."""
    for seq in range(first_seq, first_seq + n):
        part = x[20 * seq : 20 * (seq + 1)].tolist()
        r = httpx.post(
            f"{server.url}/v1/sessions/{session_id}/chunks",
            json={"seq": seq, "inputs": part},
            headers=bearer(key),
        )
        assert r.status_code == 200, r.text
    return r.json()["session"]["steps"]


def test_dashboard_session_from_url_and_watch_reconnects(
    live_server: LiveServer, page, recording: np.ndarray
) -> None:
    """?session=ID pins the session; a dropped watch socket is reopened and the raster goes on."""
    session_id = create_session(live_server)
    routes = []

    def proxy(route) -> None:
        routes.append(route)
        route.connect_to_server()

    page.route_web_socket(re.compile(r".*/watch$"), proxy)
    page.goto(f"{live_server.url}/dashboard?session={session_id}")
    wait_text(page, "watch-status", "watching")
    assert page.locator(tid("session-select")).input_value() == session_id

    steps = post_chunks(live_server, session_id, recording, 0, 5)
    wait_latest_step(page, steps - 1)
    # the totals are the server's own numbers
    assert wait_value(page, tid("session-steps"), "==", steps) == steps
    dark = page.evaluate(DARK_PIXELS, RASTER)
    assert dark > 0

    routes[-1].close(code=1011, reason="test drops the socket")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(routes) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets playwright dispatch the route handler
    assert len(routes) == 2, "the page reopened its watch socket"
    wait_text(page, "watch-status", "watching")
    steps = post_chunks(live_server, session_id, recording, 5, 5)
    wait_latest_step(page, steps - 1)
    page.wait_for_timeout(100)
    assert page.evaluate(DARK_PIXELS, RASTER) > dark
    assert "following newest" not in page.locator(tid("session-model")).inner_text()
    assert page_errors(page, 403) == []


def test_dashboard_without_listing_follows_a_session_by_id(
    live_server: LiveServer, page, recording: np.ndarray
) -> None:
    """Listing is off by default: the page says so, follows ?session=ID, and the id box moves
    it to another session."""
    first, second = create_session(live_server), create_session(live_server)
    page.goto(f"{live_server.url}/dashboard?session={first}")
    wait_text(page, "session-note", "listing is off on this server: paste a session id")
    wait_text(page, "watch-status", "watching")
    assert page.locator(tid("session-select")).input_value() == first
    steps = post_chunks(live_server, first, recording, 0, 3)
    wait_latest_step(page, steps - 1)
    page.wait_for_timeout(100)  # one animation frame
    assert page.evaluate(DARK_PIXELS, RASTER) > 0

    page.fill(tid("session-id"), second)
    page.press(tid("session-id"), "Enter")
    wait_picked(page, second)
    assert f"session={second}" in page.url
    wait_text(page, "watch-status", "watching")
    steps = post_chunks(live_server, second, recording, 0, 2)
    wait_latest_step(page, steps - 1)
    assert wait_value(page, tid("session-steps"), "==", steps) == steps
    assert "listing is off" in page.locator(tid("session-note")).inner_text()
    assert page_errors(page, 403) == []


def test_dashboard_with_api_keys(keyed_server: LiveServer, page, recording: np.ndarray) -> None:
    """Keys on: without a key the page says one is needed; with the admin key it lists a session
    another key opened and follows it; the key survives a reload (sessionStorage)."""
    session_id = create_session(keyed_server, USER_KEY)
    post_chunks(keyed_server, session_id, recording, 0, 1, USER_KEY)  # now recently active
    page.goto(f"{keyed_server.url}/dashboard")
    wait_text(page, "server-status", "API key required")
    assert "API key required" in page.locator(tid("session-note")).inner_text()
    assert "API key required" in page.locator(tid("models")).inner_text()

    page.fill(tid("api-key"), "not-a-key")
    page.press(tid("api-key"), "Enter")
    wait_text(page, "server-status", "API key unknown")
    assert "API key unknown" in page.locator(tid("session-note")).inner_text()

    page.fill(tid("api-key"), ADMIN_KEY)
    page.press(tid("api-key"), "Enter")
    wait_picked(page, session_id)
    wait_text(page, "watch-status", "watching")
    wait_text(page, "server-status", "live")
    assert page.locator(tid("session-note")).is_hidden()
    steps = post_chunks(keyed_server, session_id, recording, 1, 4, USER_KEY)
    wait_latest_step(page, steps - 1)
    page.wait_for_timeout(100)  # one animation frame
    assert page.evaluate(DARK_PIXELS, RASTER) > 0
    assert wait_value(page, card("steps-total"), ">=", steps) >= steps

    page.reload()
    wait_picked(page, session_id)
    assert page.locator(tid("api-key")).input_value() == ADMIN_KEY
    wait_text(page, "watch-status", "watching")
    steps = post_chunks(keyed_server, session_id, recording, 5, 2, USER_KEY)
    wait_latest_step(page, steps - 1)
    assert page_errors(page, 401) == []


def test_dashboard_engine_fields_with_sparse_routing(
    sparse_server: LiveServer, page, recording: np.ndarray
) -> None:
    """Routing forced to the sparse graph: before any call the engine fields are blank; after
    some chunks every call is a sparse one and the card shows the server's measured times."""
    page.goto(f"{sparse_server.url}/dashboard")
    page.wait_for_selector(f"{card('engine-calls')}[data-value]", timeout=TIMEOUT_MS)
    assert page.locator(card("routing")).inner_text() == "sparse"
    assert value(page, card("engine-calls")) == 0
    for testid in ("time-saved", "time-saved-s", "dense-equivalent-s", "sparse-share"):
        assert page.locator(card(testid)).inner_text() == "\u2014", testid

    session_id = create_session(sparse_server)
    post_chunks(sparse_server, session_id, recording, 0, 6)
    engine = assert_engine_shown(page, sparse_server)
    assert engine["calls"] == {"sparse": engine["calls"]["sparse"]}
    assert page.locator(card("sparse-share")).inner_text() == "100.0%"
    degradation = httpx.get(f"{sparse_server.url}/v1/models/{TINY_MODEL}/stats").json()[
        "degradation"
    ]
    assert degradation == {
        "enabled": True,
        "queue_target_ms": 60000.0,
        "level": 0,
        "threshold_added": 0.0,
        "degraded_sessions": 0,
    }
    assert page.locator(card("degrade-level")).inner_text() == "level 0"
    assert page.locator(card("degraded-sessions")).inner_text() == "0"
    assert_labelled(page)
    assert page_errors(page, 403) == []


def test_dashboard_static_files_are_local(live_server: LiveServer) -> None:
    """The page loads nothing from elsewhere: no CDN, no web fonts."""
    html = httpx.get(f"{live_server.url}/dashboard").text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/dashboard/static/dashboard.js" in refs
    assert "/dashboard/static/dashboard.css" in refs
    for ref in refs:
        assert ref.startswith(("/dashboard/static/", "data:")), ref
        if ref.startswith("/"):
            assert httpx.get(f"{live_server.url}{ref}").status_code == 200
    for name in ("dashboard.js", "dashboard.css"):
        text = httpx.get(f"{live_server.url}/dashboard/static/{name}").text
        assert not re.search(r"https?://", text.replace("http://www.w3.org", "")), name


def test_closed_watch_socket_is_released(served_models: Path, tmp_path: Path) -> None:
    """A dashboard that goes away must not leave its watch handler waiting: the server then
    shuts down promptly instead of waiting for it."""
    from tests.service_fixtures import start_server

    server = start_server(served_models, tmp_path)
    try:
        session_id = httpx.post(f"{server.url}/v1/sessions", json={}).json()["id"]
        with connect(f"{server.ws_url}/v1/sessions/{session_id}/watch") as ws:
            ws.ping().wait(5)
        with connect(f"{server.ws_url}/v1/sessions/unknown/watch") as ws:
            error = json.loads(ws.recv())
            assert error["type"] == "error" and error["error"]["code"] == "session_not_found"
        time.sleep(0.2)
        server.process.terminate()
        started = time.monotonic()
        server.process.wait(8)
        assert time.monotonic() - started < 5
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_dashboard_shows_no_negative_saving(
    served_models: Path, tmp_path: Path, page, recording: np.ndarray
) -> None:
    """A model whose gates are all open updates every neuron and pays its coordinator on top of
    the dense cell: the counted saving is below zero, and the page shows "none" and says why.
    The tiny model's graphs with the coordinator's bias raised until every gate opens."""
    import onnx
    from onnx import numpy_helper

    models = tmp_path / "models"
    shutil.copytree(served_models / TINY_MODEL, models / TINY_MODEL)
    for graph in (models / TINY_MODEL).glob("*.onnx"):
        proto = onnx.load(graph)
        (bias,) = [t for t in proto.graph.initializer if t.name == "b_a"]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 50.0, "b_a"))
        onnx.save(proto, graph)
    server = start_server(models, tmp_path)
    try:
        session_id = create_session(server)
        post_chunks(server, session_id, recording, 0, 3)
        stats = httpx.get(f"{server.url}/v1/models/{TINY_MODEL}/stats").json()
        assert stats["update_rate"] == 1.0 and stats["saving"] < 0, stats
        page.goto(f"{server.url}/dashboard?session={session_id}")
        wait_value(page, card("macs-saved-pct"), "<", 0)
        wait_value(page, tid("session-macs-saved"), "<", 0)
        for selector in (card("macs-saved"), card("macs-saved-pct"), tid("session-macs-saved")):
            assert page.locator(selector).inner_text() == "none", selector
            assert "coordinator" in page.locator(selector).get_attribute("title"), selector
        assert page.locator(tid("session-macs-saved-pct")).inner_text() == ""
        assert page_errors(page, 403) == []
    finally:
        stop_server(server)
