"""Browser fixtures: a real ``python -m tts_server`` on the tiny model and Debian's Chromium driven by Playwright.

Playwright's own browser download (``playwright install``) comes from a CDN the build machines cannot
reach, so the tests launch the system Chromium (``apt-get install chromium``; another binary through
``PLAYGROUND_CHROMIUM``). When it (or the ``playwright`` package) is missing, the tests fail with a
message saying so when a browser is required, and skip otherwise:

- ``PLAYGROUND_BROWSER=0``: always skip (a machine that cannot run a browser at all).
- ``PLAYGROUND_BROWSER=1`` or ``CI`` set (any non-empty value): required; a missing browser is a failure.
- neither: a developer machine without Chromium skips, with the install command in the reason.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_process import Server, running
from tests.tts_server.serving import sine_wav

API_KEY = "sk-playground-browser-5e1d"
PRESET_VOICE = "preset-voice"
CHROMIUM_FLAGS = [
    "--autoplay-policy=no-user-gesture-required",  # the tests' clicks count as gestures too; this is belt and braces
    "--no-sandbox",  # the sandbox refuses to start as root (CI containers)
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--mute-audio",  # the audio clock still runs; nothing comes out of the machine's speakers
]


def _browser_required() -> bool:
    mode = os.environ.get("PLAYGROUND_BROWSER", "")
    if mode == "0":
        return False
    return mode == "1" or bool(os.environ.get("CI"))


def _unavailable(reason: str) -> None:
    if os.environ.get("PLAYGROUND_BROWSER") == "0":
        pytest.skip("browser tests off (PLAYGROUND_BROWSER=0)")
    if _browser_required():
        pytest.fail(f"{reason} (the browser tests are required here: CI or PLAYGROUND_BROWSER=1)", pytrace=False)
    pytest.skip(f"{reason}; set CI or PLAYGROUND_BROWSER=1 to make this a failure")


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``PLAYGROUND_CHROMIUM``, else Debian's, else one on PATH."""
    explicit = os.environ.get("PLAYGROUND_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module.

    Not session-wide: while Playwright's sync API is open, the main thread has a running event loop, and the
    tests after this folder that drive their own loop (``run_until_complete``) would find it there.
    """
    if os.environ.get("PLAYGROUND_BROWSER") == "0":
        pytest.skip("browser tests off (PLAYGROUND_BROWSER=0)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium found at /usr/bin/chromium or PLAYGROUND_CHROMIUM (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def server(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server the page talks to: an API key, a voices folder with one voice, one slot and a connection cap of 1.

    The cap of 1 lets a test fill the server with one request of its own and see the page's 503.
    """
    root = tmp_path_factory.mktemp("playground")
    args = ("--voices-dir", str(root / "voices"), "--max-num-seqs", "1", "--max-concurrent-connections", "1")
    with running(tiny_v1, root / "server.log", *args, api_key=API_KEY) as served:
        with served.client() as client:
            body = {"name": PRESET_VOICE, "prompt_audio": prompt_audio_b64(), "prompt_text": "A short prompt."}
            response = client.post("/voices", json=body)
            assert response.status_code == 201, response.text
        yield served


def prompt_audio_b64() -> str:
    """One second of a sine as base64 WAV: a valid voice prompt for the tiny model."""
    import base64

    return base64.b64encode(sine_wav(1.0)).decode()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """The playground in a fresh browser context, with the API key typed in and the voices listed.

    An uncaught exception in the page's script fails the test (an error answer the page shows is no exception).
    """
    server.wait_settled()  # the connection cap is 1: the previous test's request must be gone
    context = browser.new_context(base_url=server.url)
    opened = context.new_page()
    uncaught: list[str] = []
    opened.on("pageerror", lambda exc: uncaught.append(str(exc)))
    opened.goto("/playground/")
    opened.fill("#api-key", API_KEY)
    opened.dispatch_event("#api-key", "change")  # as when the user leaves the field: the voices load with the key
    wait_until(opened, f"window.playground.voices.includes({PRESET_VOICE!r})")
    try:
        yield opened
    finally:
        context.close()
    assert not uncaught, f"uncaught errors in the page: {uncaught}"


def wait_until(page: Any, expression: str, timeout_s: float = 10.0) -> Any:
    """Poll a JavaScript expression until it is truthy; returns its value.

    Not ``page.wait_for_function``: that evaluates its predicate with ``eval`` inside the page, which the
    playground's Content-Security-Policy (no ``unsafe-eval``) refuses, and the tests keep that policy on.
    ``page.evaluate`` goes through the DevTools protocol, which the policy does not govern.
    """
    end = time.monotonic() + timeout_s
    while not (value := page.evaluate(expression)):
        if time.monotonic() > end:
            raise AssertionError(
                f"not true within {timeout_s} s: {expression}; state {page.evaluate('window.playground')}"
            )
        time.sleep(0.02)
    return value


def http_client(server: Server) -> httpx.Client:
    """A plain HTTP client with the API key (what the page is compared against)."""
    return server.client(timeout=30.0)
