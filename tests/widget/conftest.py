"""A real browser (Debian's Chromium through Playwright) and host pages on other origins.

The browser tests need /usr/bin/chromium and axe-core's axe.min.js (`./scripts/test` fetches it
with npm into .cache/). A bare local run without them skips, saying why; CI sets
REQUIRE_BROWSER=1 and fails instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
AXE_PATH = Path(
    os.environ.get(
        "AXE_PATH", Path(__file__).resolve().parents[2] / ".cache" / "axe-core" / "axe.min.js"
    )
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(what: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {what}")
    pytest.skip(f"browser tests skipped: {what}")


class HostSite:
    """A website on its own origin (127.0.0.1 and a port of its own) serving pages the
    tests write, each pasting a snippet."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, str | None]] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                html, csp = pages.get(self.path.split("?")[0], ("not found", None))
                body = html.encode()
                self.send_response(200 if self.path.split("?")[0] in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                if csp:
                    self.send_header("Content-Security-Policy", csp)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def page(
        self, path: str, snippet: str, *, head: str = "", lang: str = "en", csp: str | None = None
    ) -> str:
        self.pages[path] = (
            f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Acme shop</title>{head}</head><body>"
            '<header><a href="#main">Skip to content</a></header>'
            '<main id="main"><h1>Acme shop</h1><p class="intro">Fine blenders since 1999.</p>'
            '<button type="button" id="host-button">Host button</button>'
            '<div class="panel">host panel</div><form class="host-form"><p>host form</p></form>'
            f"</main>{snippet}</body></html>",
            csp,
        )
        return f"{self.origin}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def site() -> Iterator[HostSite]:
    host = HostSite()
    yield host
    host.close()


@pytest.fixture(scope="session")
def other_site() -> Iterator[HostSite]:
    host = HostSite()
    yield host
    host.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed")
    from playwright.sync_api import expect

    # Waits for a state (not a time bound): generous, for a loaded machine under coverage.
    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def context(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    yield context
    context.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_PATH.exists():
        missing(f"axe-core is not at {AXE_PATH} (./scripts/test fetches it with npm)")
    return AXE_PATH.read_text()
