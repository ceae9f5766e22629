"""Whole calls: the worker subprocess, a caller on the LiveKit SDK, providers as stand-ins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc
from livekit.protocol.agent import JS_FAILED

from tests.e2e.calls import (
    GREETING,
    JOIN_S,
    StandIns,
    call,
    stand_ins,
    until,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events
from tests.lkserver.workers import ENDED, RegisteredWorker

ANSWER = "We open at nine on Saturday and close at five."
TURN_S = 20
LEAVE_S = 3

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def recording() -> Recording:
    return Recording.load("single_question")


@pytest.fixture
async def services(recording: Recording) -> AsyncIterator[StandIns]:
    async with stand_ins(recording, [("saturday", ANSWER)]) as running:
        yield running


@pytest.fixture
async def worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> AsyncIterator[RegisteredWorker]:
    async with voice_worker(livekit_server, services, tmp_path) as registered:
        yield registered


async def test_the_agent_joins_and_greets(
    livekit_server: LiveKitFixture, worker: RegisteredWorker
) -> None:
    async with call(livekit_server) as caller:
        start = time.monotonic()
        agent = await until(caller.agent, JOIN_S, "the agent to join")
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        audio = rtc.TrackKind.KIND_AUDIO
        published = agent.track_publications.values
        await until(lambda: any(p.kind == audio for p in published()), JOIN_S, "its audio track")
        greeting = await caller.event(TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"] == GREETING
        assert caller.spoke_since(start, seconds=1.0)
        await caller.send({"type": "end_call"})
        await caller.event(TURN_S, type="call_ended")
    check_call_events(caller.events)


async def test_a_question_gets_the_scripted_answer(
    livekit_server: LiveKitFixture, worker: RegisteredWorker, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        await caller.event(TURN_S, type="transcript", role="agent", final=True)
        asked = time.monotonic()
        caller.play(recording.clip("question"))
        heard = await caller.event(TURN_S, type="transcript", role="user", final=True)
        assert heard["text"] == recording.text("question")
        await until(lambda: caller.spoke_since(asked), TURN_S, "the agent's spoken answer")
        answer = await caller.event(TURN_S, type="transcript", role="agent", text=ANSWER)
        assert (answer["final"], answer["interrupted"]) == (True, False)
        await caller.send({"type": "end_call"})
        await caller.event(TURN_S, type="call_ended")
    check_call_events(caller.events)


async def test_end_call_from_the_app_ends_the_call_and_the_agent_leaves(
    livekit_server: LiveKitFixture, worker: RegisteredWorker
) -> None:
    async with call(livekit_server) as caller:
        await caller.event(TURN_S, type="transcript", role="agent", final=True)
        await caller.send({"type": "end_call"})
        ended = await caller.event(TURN_S, type="call_ended")
        assert ended["reason"] == "client_ended"
        assert isinstance(ended["duration"], float | int)
        assert ended["duration"] > 0
        await until(lambda: caller.agent() is None, JOIN_S, "the agent to leave")
    check_call_events(caller.events)


async def test_a_caller_leaving_mid_reply_ends_the_job_and_the_worker_takes_the_next_call(
    livekit_server: LiveKitFixture, worker: RegisteredWorker, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        await caller.event(TURN_S, type="transcript", role="agent", final=True)
        asked = time.monotonic()
        caller.play(recording.clip("question"))
        await caller.event(TURN_S, type="transcript", role="user", final=True)
        await until(lambda: caller.spoke_since(asked), TURN_S, "the agent's spoken answer")
        assert not caller.find(type="transcript", role="agent", text=ANSWER), "reply already over"
    [job] = [r.job for r in livekit_server.workers.jobs.values()]
    await livekit_server.workers.wait_until(lambda: job.state.status in ENDED, LEAVE_S)

    async with call(livekit_server) as caller:
        start = time.monotonic()
        greeting = await caller.event(TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"] == GREETING
        assert caller.spoke_since(start, seconds=1.0)
        jobs = [r.job for r in livekit_server.workers.jobs.values()]
        assert [j.state.worker_id for j in jobs] == [worker.id, worker.id]
        await caller.send({"type": "end_call"})
        await caller.event(TURN_S, type="call_ended")


@pytest.mark.parametrize("room", ["lobby", "agent_deadbeef_user_1"])
async def test_no_agent_joins_a_room_that_names_no_configured_agent(
    livekit_server: LiveKitFixture, worker: RegisteredWorker, room: str
) -> None:
    async with call(livekit_server, room) as caller:
        [record] = livekit_server.workers.jobs.values()
        await livekit_server.workers.wait_until(lambda: record.job.state.status in ENDED, JOIN_S)
        assert record.job.state.status == JS_FAILED
        await asyncio.sleep(3)  # time enough for a wrongly accepted agent to have joined
        assert caller.agent() is None
        assert list(livekit_server.server.rooms[room].participants) == [caller.identity]
        assert not caller.events
