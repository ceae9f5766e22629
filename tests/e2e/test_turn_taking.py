"""Turn-taking through a room: the real `python -m worker start` with its shipped support agent
(Smart Turn, acknowledgements on), a caller on the LiveKit SDK, stand-in providers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.calls import (
    TURN_S,
    StandIns,
    WorkerProcess,
    call,
    script,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events
from tests.polling import until

NEW_ADDRESS = "Of course. What is the new address?"
LONG_ANSWER = (
    "Sure. You can return any item within thirty days of delivery, in its original packaging, "
    "with the receipt or the order number. Refunds go back to the card you paid with, usually "
    "within five working days, and exchanges ship as soon as the return arrives."
)

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def recording(request: pytest.FixtureRequest) -> Recording:
    return Recording.load(request.param)


@pytest.fixture
async def services(recording: Recording) -> AsyncIterator[StandIns]:
    replies = [("delivery address", NEW_ADDRESS), ("return policy", LONG_ANSWER)]
    async with stand_ins(recording, script(replies)) as running:
        yield running


@pytest.fixture
async def worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    async with voice_worker(livekit_server, tmp_path, services.env()) as started:
        yield started


@pytest.mark.parametrize("recording", ["hesitant_question"], indirect=True)
async def test_a_caller_pausing_mid_sentence_is_answered_once_after_the_whole_sentence(
    livekit_server: LiveKitFixture, worker: WorkerProcess, recording: Recording
) -> None:
    question = recording.utterances["question"]
    first, second = question["parts"]
    async with call(livekit_server) as caller:
        asked = await caller.say_after_greeting(recording.clip("question"))
        answer = await caller.event(TURN_S, type="transcript", role="agent", text=NEW_ADDRESS)
        assert answer["interrupted"] is False
        users = caller.find(type="transcript", role="user", final=True)
        assert [e["text"] for e in users] == [recording.text("question")], "one turn"
        assert caller.arrival(users[0]) < caller.arrival(answer)
        pause_from = asked + first["end"] - question["start"] + 0.3
        pause_to = asked + second["start"] - question["start"]
        assert caller.speech_between(pause_from, pause_to) < 0.05, (
            f"the agent spoke in the caller's {question['pause']}s pause"
        )
        await caller.hang_up()
    check_call_events(caller.events)


@pytest.mark.parametrize("recording", ["acknowledgement"], indirect=True)
async def test_a_yeah_over_the_agent_neither_stops_it_nor_is_answered(
    livekit_server: LiveKitFixture, worker: WorkerProcess, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        asked = await caller.say_after_greeting(recording.clip("question"))
        await until(lambda: caller.spoke_since(asked, seconds=1.5), TURN_S, "the long answer")
        caller.play(recording.clip("ack1"))  # "Yeah."
        said_at = time.monotonic()
        ack_ends = said_at + recording.clip("ack1").size / recording.rate
        answer = await caller.event(2 * TURN_S, type="transcript", role="agent", text=LONG_ANSWER)
        assert answer["interrupted"] is False, "played to its end"
        users = caller.find(type="transcript", role="user", final=True)
        assert [e["text"] for e in users] == [recording.text("question")], "no turn for 'yeah'"
        assert caller.speech_between(ack_ends + 0.5, ack_ends + 2.5) > 1.0, "it went on at once"
        assert worker.process.returncode is None
        await until(
            lambda: "caller acknowledgement" in worker.log(), 5, "the worker's log line for it"
        )
        await caller.hang_up()
    check_call_events(caller.events)
