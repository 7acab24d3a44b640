"""The headless browser of the page suites (test_dashboard) and of scripts/dashboard_screenshot.py:
Debian's chromium and the flags it runs with (no sandbox, no GPU, no network of its own).
"""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
