"""The call page (`GET /` of `python -m worker api`) in Debian's chromium, end to end.

The page runs the official JavaScript SDK (`livekit-client`, served by the API) against the test
server, the real worker process and the provider stand-ins; Chromium's fake microphone plays a
fixture recording. Everything is asserted through the page's DOM, and what the SDK itself saw of
the agent (`lk.agent.state`, `lk.transcription`) through `window.voiceCall.observed`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from examples.order_api import order
from tests.browser.conftest import Launch
from tests.e2e.calls import GREETING, JOIN_S, TURN_S, script, stand_ins, voice_worker
from tests.e2e.conftest import LiveKitFixture
from tests.e2e.session_api import session_api
from tests.harness import Recording
from tests.standins.openai import Script, ToolCall
from worker.audio_files import write_wav
from worker.routing import parse_room

SUPPORT_ID = "5b710eca-ee67-4c3a-aeb6-8b541f451b40"
LONG_ANSWER = (
    "Of course. You can return any item within thirty days of delivery, in its original "
    "packaging, with the receipt or the order number. Refunds go back to the card you paid with, "
    "usually within five working days, and exchanges ship as soon as the return arrives."
)
"""About fifteen seconds of `HumVoice`: long enough to be talked over."""
ADDRESS_ANSWER = "We are at twelve Harbor Street."
SHIPPED = "Your order has shipped and arrives on Friday."
ORDER_API_PORT = 8099
"""Where the shipped support agent's `order_status` tool looks orders up."""
LEAD_S = 12.0
"""Silence the microphone plays first: the page joins, the agent is dispatched and greets
(about 4 s of voice), on a busy machine."""
GAP_S = 4.0
"""From the end of the question to the interruption: the long answer has started by then."""
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", "build/browser-artifacts"))
"""Where the mid-call screenshot is saved (CI keeps it; the README shows one)."""

AGENT_FINAL = "#transcript li[data-role=agent][data-final=true]"
USER_FINAL = "#transcript li[data-role=user][data-final=true]"

pytestmark = pytest.mark.timeout(180)


def microphone(path: Path, recording: Recording, *clips: str) -> Path:
    """The fake microphone's file at `path`: silence through the greeting, then each clip of
    `recording` with `GAP_S` of silence after it."""

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * recording.rate), np.int16)

    parts = [silence(LEAD_S)]
    for clip in clips:
        parts += [recording.clip(clip), silence(GAP_S)]
    write_wav(path, np.concatenate([*parts, silence(1.0)]), recording.rate)
    return path


async def start_call(page: Page, url: str) -> None:
    await page.goto(url)
    await page.get_by_role("button", name="Start call").click()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def test_a_call_from_the_page_greets_answers_is_interrupted_and_ends(
    livekit_server: LiveKitFixture, chromium: Launch, tmp_path: Path, artifacts: Path
) -> None:
    recording = Recording.load("barge_in")
    caller = microphone(tmp_path / "caller.wav", recording, "question", "interrupt")
    replies = [("return policy", LONG_ANSWER), ("address", ADDRESS_ANSWER)]
    demo = {"WORKER_DEMO_AGENTS": SUPPORT_ID}
    async with (
        stand_ins(recording, script(replies)) as services,
        voice_worker(livekit_server, tmp_path / "worker", services.env()),
        session_api(livekit_server, tmp_path / "api", demo) as api,
        chromium(caller) as browser,
    ):
        context = await browser.new_context(
            permissions=["microphone"], viewport={"width": 420, "height": 860}
        )
        page = await context.new_page()
        await page.goto(api.url + "/")
        await expect(page.get_by_label("Agent", exact=True)).to_have_value(SUPPORT_ID)
        await page.get_by_role("button", name="Start call").click()

        await expect(page.locator(AGENT_FINAL).first).to_have_text(GREETING, timeout=JOIN_S * 1000)
        # the agent's track is playing: its level, read with WebAudio in the page
        await page.wait_for_function(
            "Number(document.getElementById('level').dataset.peak) > 0.02", timeout=5000
        )
        question = page.locator(USER_FINAL).first
        await expect(question).to_have_text(recording.text("question"), timeout=TURN_S * 1000)

        cut = page.locator("#transcript li[data-role=agent][data-interrupted=true]")
        await expect(cut).to_have_count(1, timeout=TURN_S * 1000)
        said = (await cut.inner_text()).rstrip(".").rstrip()
        assert LONG_ANSWER.startswith(said), said
        assert len(said) < len(LONG_ANSWER) / 2, "the answer ran on"
        await expect(page.locator(AGENT_FINAL).last).to_have_text(
            ADDRESS_ANSWER, timeout=TURN_S * 1000
        )
        await expect(page.locator("#state")).to_have_text("listening", timeout=TURN_S * 1000)
        await page.screenshot(path=artifacts / "call-page.png", full_page=True)

        # what the JavaScript SDK saw of the agent: the React hooks rely on these
        observed = await page.evaluate("window.voiceCall.observed")
        assert {"listening", "thinking", "speaking"} <= set(observed["agentStates"]), observed
        assert observed["streams"] >= 4, observed  # lk.transcription: the caller's and the agent's
        await expect(page.locator("#sdk-state")).to_have_text("listening")

        await page.get_by_role("button", name="End call").click()
        ended = page.locator("#ended")
        await expect(ended).to_be_visible(timeout=TURN_S * 1000)
        await expect(ended).to_have_attribute("data-reason", "client_ended")
        await expect(ended).to_contain_text("you ended the call")
        await expect(page.get_by_role("button", name="Start call")).to_be_enabled()


async def test_the_page_explains_a_denied_microphone_an_unavailable_service_and_no_server(
    livekit_server: LiveKitFixture, chromium: Launch, tmp_path: Path
) -> None:
    settings = {"WORKER_DEMO_AGENTS": SUPPORT_ID, "WORKER_API_DISPATCH_WAIT": "1"}
    quiet = microphone(tmp_path / "quiet.wav", Recording.load("single_question"))
    async with (
        session_api(livekit_server, tmp_path / "api", settings) as api,  # and no worker
        chromium(quiet) as browser,
    ):
        denied = await (await browser.new_context()).new_page()  # no microphone permission
        await start_call(denied, api.url + "/")
        await expect(denied.get_by_role("alert")).to_contain_text("Microphone access was denied")
        assert not livekit_server.server.rooms, "a session was started without a microphone"

        page = await (await browser.new_context(permissions=["microphone"])).new_page()
        await start_call(page, api.url + "/")
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("unavailable right now", timeout=15000)
        await expect(alert).to_contain_text("no agent worker accepted the call")
        await expect(page.get_by_role("button", name="Start call")).to_be_enabled()

        # a link to a LiveKit server that is not there
        nowhere = {"url": "ws://10.99.0.1:9", "token": livekit_server.token("caller", "a-room")}
        await start_call(page, f"{api.url}/#{urlencode(nowhere)}")
        await expect(alert).to_contain_text("Could not connect to the call", timeout=JOIN_S * 1000)


@asynccontextmanager
async def order_api() -> AsyncIterator[None]:
    """The shipped example order API where the support agent's `order_status` tool calls it."""
    app = web.Application()
    app.router.add_get("/orders/{number}", order)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", ORDER_API_PORT).start()
        yield
    finally:
        await runner.cleanup()


async def test_without_demo_mode_the_page_takes_only_a_call_link(
    livekit_server: LiveKitFixture, chromium: Launch, tmp_path: Path
) -> None:
    recording = Recording.load("single_question")
    caller = microphone(tmp_path / "caller.wav", recording, "question")
    lookup = ToolCall("order_status", {"order_number": "427"})
    llm = Script([("saturday", ["Let me look.", lookup])], ["I see."], after_tool=[SHIPPED])
    async with (
        stand_ins(recording, llm) as services,
        order_api(),
        voice_worker(livekit_server, tmp_path / "worker", services.env()),
        session_api(livekit_server, tmp_path / "api") as api,
        chromium(caller) as browser,
    ):
        page = await (await browser.new_context(permissions=["microphone"])).new_page()
        await page.goto(api.url + "/")
        await expect(page.get_by_role("alert")).to_contain_text("needs a call link")
        await expect(page.get_by_label("Agent", exact=True)).to_be_hidden()
        await expect(page.get_by_role("button", name="Start call")).to_be_disabled()
        status, _ = await api.request("POST", "/demo/sessions", {"agent_id": SUPPORT_ID})
        assert status == 404

        # the operator's backend made the session with its key, and links the page to it
        session = await api.create({"agent_id": SUPPORT_ID})
        fragment = {"url": session["livekit_url"], "token": session["token"], "agent": "Ava"}
        await start_call(page, f"{api.url}/#{urlencode(fragment)}")
        assert "token" not in page.url, "the token stayed in the address bar"
        await expect(page.locator("h1")).to_have_text("Call with Ava", timeout=JOIN_S * 1000)
        await expect(page.locator(AGENT_FINAL).first).to_have_text(GREETING, timeout=JOIN_S * 1000)

        # the question is answered with a tool call, whose progress the page shows
        tool = page.locator("#tools li").last
        await expect(tool).to_have_attribute("data-status", "succeeded", timeout=TURN_S * 1000)
        await expect(tool).to_contain_text("order_status: succeeded in")
        await expect(page.locator(AGENT_FINAL).last).to_contain_text(SHIPPED, timeout=TURN_S * 1000)

        # the connection is lost (here: the server removes the caller)
        room = session["room_name"]
        await livekit_server.server.remove_participant(room, parse_room(room).user_id)
        await expect(page.get_by_role("alert")).to_contain_text(
            "The call dropped (participant removed)", timeout=TURN_S * 1000
        )
        await expect(page.get_by_role("region", name="Call", exact=True)).to_be_hidden()
