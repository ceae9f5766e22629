"""The built-in tools that act on the phone line, through a real room: `transfer_call` (LiveKit's
`TransferSIPParticipant`, which the test server records and completes by taking the caller out
of the room) and `send_dtmf` (key presses the SIP caller receives). Only a SIP caller has a line:
for a browser caller the LLM is told the transfer is impossible and the call goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.calls import (
    SUPPORT_PROMPT,
    TURN_S,
    StandIns,
    WorkerProcess,
    call,
    room_name,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording
from tests.polling import until
from tests.standins.openai import Script, ToolCall

pytestmark = pytest.mark.timeout(150)

COLLEAGUE = "tel:+15550100"
LINE = "Let me connect you with a colleague. One moment."


def agent_with_phone_tools(tmp_path: Path) -> Path:
    """The shipped support agent, with the transfer and the keypad."""
    text = SUPPORT_PROMPT.read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    fields = yaml.safe_load(front)
    fields["tools"] = [
        {"kind": "transfer_call", "to": COLLEAGUE, "line": LINE},
        {"kind": "send_dtmf"},
        {"kind": "end_call"},
    ]
    path = tmp_path / "src" / SUPPORT_PROMPT.name
    path.parent.mkdir()
    path.write_text(f"---\n{yaml.safe_dump(fields)}---\n{body}", encoding="utf-8")
    return path


TRANSFER = [("saturday", ["Sure.", ToolCall("transfer_call")])]
KEYS = [("saturday", ["Pressing two.", ToolCall("send_dtmf", {"digits": "2#"})])]


@pytest.fixture
async def services(request: pytest.FixtureRequest) -> AsyncIterator[StandIns]:
    """The LLM answers the caller's question with the test's tool call (`request.param`)."""
    script = Script(request.param, ["I see."], after_tool=["Done."])
    async with stand_ins(Recording.load("single_question"), script) as running:
        yield running


@pytest.fixture
async def worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    prompts = [agent_with_phone_tools(tmp_path)]
    async with voice_worker(livekit_server, tmp_path, services.env(), prompts) as started:
        yield started


@pytest.mark.parametrize("services", [TRANSFER], indirect=True)
async def test_a_phone_caller_is_transferred_and_the_call_ends_transferred(
    livekit_server: LiveKitFixture, worker: WorkerProcess
) -> None:
    question = Recording.load("single_question").clip("question")
    room = room_name("caller1")
    async with call(livekit_server, room, identity="caller1", kind="sip") as caller:
        await caller.say_after_greeting(question)
        await until(caller.removed.is_set, 4 * TURN_S, "the caller transferred out of the room")
        heard = [e["text"] for e in caller.find(type="transcript", role="agent")]
        statuses = [e["status"] for e in caller.find(type="tool_call", name="transfer_call")]
    (transfer,) = livekit_server.twirp.transfers
    assert (transfer.room_name, transfer.participant_identity) == (room, "caller1")
    assert transfer.transfer_to == COLLEAGUE
    assert any(LINE in text for text in heard), f"the line is said before the transfer: {heard}"
    assert statuses[:1] == ["started"]
    await until(lambda: "call ended: transferred" in worker.log(), TURN_S, "the call's end")


@pytest.mark.parametrize("services", [TRANSFER], indirect=True)
async def test_a_browser_caller_cannot_be_transferred_and_the_call_goes_on(
    livekit_server: LiveKitFixture, worker: WorkerProcess
) -> None:
    question = Recording.load("single_question").clip("question")
    async with call(livekit_server, identity="user3") as caller:
        await caller.say_after_greeting(question)
        failed = await caller.event(4 * TURN_S, type="tool_call", status="failed")
        assert failed["name"] == "transfer_call"
        await until(
            lambda: any("Done." in e["text"] for e in caller.find(type="transcript", role="agent")),
            TURN_S,
            "the answer to the failed transfer",
        )
        assert not caller.removed.is_set()
    assert livekit_server.twirp.transfers == []


@pytest.mark.parametrize("services", [KEYS], indirect=True)
async def test_the_agent_presses_keys_on_a_phone_line(
    livekit_server: LiveKitFixture, worker: WorkerProcess
) -> None:
    question = Recording.load("single_question").clip("question")
    async with call(livekit_server, identity="caller2", kind="sip") as caller:
        await caller.say_after_greeting(question)
        await until(lambda: len(caller.keys) == 2, 4 * TURN_S, "both key presses")
        succeeded = await caller.event(TURN_S, type="tool_call", status="succeeded")
    assert caller.keys == ["2", "#"]
    assert succeeded["name"] == "send_dtmf"
