"""The README's React snippet (`examples/react/VoiceCall.jsx`), built with esbuild against the
pinned `@livekit/components-react` and run in Chromium against the real worker: the facts it
relies on, the agent's `lk.agent.state` attribute (`useVoiceAssistant`) and `lk.transcription`
streams (`useTranscriptions`), checked where a React app meets them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp import web
from playwright.async_api import expect

from tests.browser.conftest import Launch
from tests.browser.test_call_page import SUPPORT_ID, microphone
from tests.e2e.calls import GREETING, JOIN_S, ROOT, TURN_S, script, stand_ins, voice_worker
from tests.e2e.conftest import LiveKitFixture
from tests.e2e.session_api import free_port, session_api
from tests.harness import Recording

SNIPPET = ROOT / "examples" / "react" / "VoiceCall.jsx"
BUILD = ROOT / "tests" / "browser" / "react"
"""The snippet's npm project (pinned by its package-lock.json; setup.sh installs it)."""
PAGE = (
    '<!doctype html><html><body><div id="root"></div><script src="app.js"></script></body></html>'
)

pytestmark = pytest.mark.timeout(120)


def test_the_readme_shows_the_snippet_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```jsx\n{SNIPPET.read_text(encoding='utf-8')}```" in readme


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The snippet mounted by `react/main.jsx`, bundled into a directory with its page."""
    esbuild = BUILD / "node_modules" / ".bin" / "esbuild"
    if not esbuild.is_file():
        pytest.skip("the React snippet's packages are not installed: run setup.sh (npm)")
    out = tmp_path / "app"
    out.mkdir()
    (out / "index.html").write_text(PAGE, encoding="utf-8")
    command = [str(esbuild), "main.jsx", "--bundle", "--jsx=automatic", "--format=iife"]
    command += ["--log-level=warning", f"--outfile={out / 'app.js'}"]
    node_path = {"NODE_PATH": str(BUILD / "node_modules")}  # the snippet is in examples/react
    subprocess.run(command, cwd=BUILD, env={**os.environ, **node_path}, check=True, timeout=60)
    return out


@asynccontextmanager
async def serve(directory: Path) -> AsyncIterator[str]:
    """`directory` over HTTP on 127.0.0.1 (a secure context: the microphone is allowed)."""

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(directory / (request.match_info["name"] or "index.html"))

    static = web.Application()
    static.router.add_get("/{name:(app\\.js)?}", file)
    runner = web.AppRunner(static)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_react_snippet_calls_the_agent(
    livekit_server: LiveKitFixture, chromium: Launch, tmp_path: Path, app: Path
) -> None:
    recording = Recording.load("single_question")
    quiet = microphone(tmp_path / "quiet.wav", recording)
    async with (
        stand_ins(recording, script([])) as services,
        voice_worker(livekit_server, tmp_path / "worker", services.env()),
        session_api(livekit_server, tmp_path / "api") as api,
        serve(app) as url,
        chromium(quiet) as browser,
    ):
        session = await api.create({"agent_id": SUPPORT_ID})
        page = await (await browser.new_context(permissions=["microphone"])).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(
            f"{url}/#{urlencode({'url': session['livekit_url'], 'token': session['token']})}"
        )

        # useTranscriptions: the greeting, from the agent's lk.transcription stream
        greeting = page.get_by_role("listitem").filter(has_text=GREETING)
        await expect(greeting).to_have_count(1, timeout=JOIN_S * 1000)
        # useVoiceAssistant: the agent's lk.agent.state, after it has spoken
        await expect(page.get_by_test_id("agent-state")).to_have_text(
            "listening", timeout=TURN_S * 1000
        )
        await page.get_by_role("button", name="End call").click()
        await expect(page.get_by_test_id("ended")).to_contain_text(
            "Call ended (client_ended)", timeout=TURN_S * 1000
        )
        assert errors == []
