"""The browser group: the call page in Debian's chromium, driven by Playwright (no downloaded
browser), inside the e2e group's namespace and against its server (`tests/e2e/conftest.py`)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.e2e.conftest import _in_test_namespace, livekit_server

__all__ = ["Launch", "_in_test_namespace", "chromium", "livekit_server"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--no-sandbox",  # as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # this machine's network is closed: no background requests to Google's hosts
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # the test server's aiortc cannot resolve mDNS host candidates: use the real address
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)

Launch = Callable[[Path], AbstractAsyncContextManager[Browser]]


@pytest.fixture
def chromium() -> Launch:
    """Starts Debian's chromium, its fake microphone playing a WAV file once (then silence; its
    default, a beep a second, would be heard as speech)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed: run setup.sh")

    @asynccontextmanager
    async def launch(microphone: Path) -> AsyncIterator[Browser]:
        args = [*FLAGS, f"--use-file-for-fake-audio-capture={microphone}%noloop"]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=args
            )
            try:
                yield browser
            finally:
                await browser.close()

    return launch
