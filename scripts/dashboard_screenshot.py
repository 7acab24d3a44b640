"""Render docs/dashboard.png: the dashboard following a held-out watch recording streamed into a
session of the large model (models/watch-gru-1024), so that the picture shows measured time saved
next to the multiply-adds saved.

    .venv/bin/python scripts/dashboard_screenshot.py [--model NAME] [--out PNG] [--seconds S]
        [--csv STREAM.csv --start ROW]

With --csv it streams that file (e.g. a stream of `python -m export streams --csv`) from row
--start instead, to show the update rate falling when a bout ends and the sensor rests.

Starts its own sarnn-serve on a free loopback port with the shipped models, streams one
recording (1 sample per message at 50 Hz) and takes the screenshot in headless Debian chromium
once the page has followed the stream for --seconds.
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.browser_fixtures import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.service_fixtures import start_server, stop_server  # noqa: E402


def stream(url: str, session_id: str, rows: list, stop: threading.Event) -> None:
    """Send one sample per message at 50 Hz until `stop` or the recording ends."""
    with connect(f"{url}/v1/sessions/{session_id}/stream", compression=None) as ws:
        json.loads(ws.recv())
        for seq, row in enumerate(rows):
            if stop.is_set():
                return
            ws.send(json.dumps({"seq": seq, "inputs": [row]}))
            ws.recv()
            time.sleep(0.02)


def main() -> int:
    from playwright.sync_api import sync_playwright

    from export.data import load_watch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="watch-gru-1024")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--csv", type=Path, help="stream this CSV file instead (feature columns)")
    p.add_argument("--start", type=int, default=0, help="with --csv: the first row to send")
    args = p.parse_args()
    if args.csv:
        from sarnn_serve.client.recordings import read_csv

        features = ["ax", "ay", "az", "wx", "wy", "wz"]
        rows = read_csv(args.csv, features=features).x[args.start :].tolist()
    else:
        rows = load_watch().test[3].x.tolist()
    tmp = Path("/tmp")
    # routing by measurement, as a real server (the test servers' default is dense)
    env = {"SARNN_DEFAULT_MODEL": args.model, "SARNN_ENGINE_PATH": "auto"}
    server = start_server(ROOT / "models", tmp, env)
    stop = threading.Event()
    try:
        sid = httpx.post(f"{server.url}/v1/sessions", json={"model": args.model}).json()["id"]
        streamer = threading.Thread(target=stream, args=(server.ws_url, sid, rows, stop))
        streamer.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{server.url}/dashboard?session={sid}")
            time.sleep(args.seconds)
            if args.csv:  # the session's raster and strips, below the model cards
                page.locator("#raster").scroll_into_view_if_needed()
            page.screenshot(path=str(args.out))
            browser.close()
        stop.set()
        streamer.join()
    finally:
        stop.set()
        stop_server(server)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
