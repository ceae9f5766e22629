"""One call's promises: the worker subprocess, a caller on the LiveKit SDK, stand-in providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc
from livekit.protocol.agent import JS_FAILED, JS_SUCCESS

from tests.e2e.calls import (
    GREETING,
    JOIN_S,
    ROOT,
    TURN_S,
    Event,
    StandIns,
    WorkerProcess,
    call,
    dispatch,
    room_name,
    script,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events
from tests.lkserver.workers import ENDED
from tests.polling import until

ANSWER = "We open at nine on Saturday and close at five."
LEAVE_S = 3
LONG_ANSWER = (
    "Of course. You can return any item within thirty days of delivery, in its original "
    "packaging, with the receipt or the order number. Refunds go back to the card you paid with, "
    "usually within five working days, and exchanges ship as soon as the return arrives."
)
"""About fifteen seconds of `HumVoice`: long enough to be talked over."""
ADDRESS_ANSWER = "We are at twelve Harbor Street."
STOP_S = 1.5
"""How soon the agent's audio must stop after the caller starts talking over it: the VAD's
minimum interruption speech, the stop, and the audio already in flight in WebRTC (the pipeline
benchmark measures the stop itself)."""

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def recording(request: pytest.FixtureRequest) -> Recording:
    """The caller's recording (its clips are what the Deepgram stand-in knows)."""
    return Recording.load(getattr(request, "param", "single_question"))


@pytest.fixture
async def services(recording: Recording) -> AsyncIterator[StandIns]:
    replies = [("saturday", ANSWER), ("return policy", LONG_ANSWER), ("address", ADDRESS_ANSWER)]
    async with stand_ins(recording, script(replies)) as running:
        yield running


@pytest.fixture
async def worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    async with voice_worker(livekit_server, tmp_path, services.env()) as started:
        yield started


async def test_the_agent_joins_and_greets(
    livekit_server: LiveKitFixture, worker: WorkerProcess
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
        await caller.hang_up()
    check_call_events(caller.events)


async def test_a_question_gets_the_scripted_answer(
    livekit_server: LiveKitFixture, worker: WorkerProcess, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        asked = await caller.say_after_greeting(recording.clip("question"))
        heard = await caller.event(TURN_S, type="transcript", role="user", final=True)
        assert heard["text"] == recording.text("question")
        await until(lambda: caller.spoke_since(asked), TURN_S, "the agent's spoken answer")
        answer = await caller.event(TURN_S, type="transcript", role="agent", text=ANSWER)
        assert (answer["final"], answer["interrupted"]) == (True, False)
        assert caller.arrival(heard) < caller.arrival(answer)
        await caller.hang_up()
    check_call_events(caller.events)


@pytest.mark.parametrize("recording", ["barge_in"], indirect=True)
async def test_talking_over_the_agent_stops_its_audio_and_the_reply_is_interrupted(
    livekit_server: LiveKitFixture, worker: WorkerProcess, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        asked = await caller.say_after_greeting(recording.clip("question"))
        await until(lambda: caller.spoke_since(asked, seconds=1.5), TURN_S, "the long answer")
        talked_over = time.monotonic()
        caller.play(recording.clip("interrupt"))
        cut = await caller.event(TURN_S, type="transcript", role="agent", interrupted=True)
        assert LONG_ANSWER.startswith(cut["text"].rstrip(".").rstrip())
        assert len(cut["text"]) < len(LONG_ANSWER) / 2, "the reply ran on"
        await caller.event(TURN_S, type="transcript", role="agent", text=ADDRESS_ANSWER)
        stopped = talked_over + STOP_S
        # from the stop to the next reply, which cannot start before the caller has finished and
        # the VAD has heard 0.3 s of silence
        quiet_until = talked_over + recording.clip("interrupt").size / 16000 + 0.3
        assert caller.speech_between(stopped, quiet_until) < 0.05, "the agent talked on"
        await caller.hang_up()
    check_call_events(caller.events)


async def test_end_call_from_the_app_ends_the_call_and_the_agent_leaves(
    livekit_server: LiveKitFixture, worker: WorkerProcess
) -> None:
    async with call(livekit_server) as caller:
        await caller.event(TURN_S, type="transcript", role="agent", final=True)
        ended = await caller.hang_up()  # {"type": "end_call"}
        assert isinstance(ended["duration"], float | int)
        assert ended["duration"] > 0
        await until(lambda: caller.agent() is None, JOIN_S, "the agent to leave")
        assert caller.arrival(ended) < caller.left_at()
        # the caller is still in the room: the job ends because the agent ended it
        [job] = [r.job for r in livekit_server.workers.jobs.values()]
        await livekit_server.workers.wait_until(lambda: job.state.status in ENDED, LEAVE_S)
        assert job.state.status == JS_SUCCESS
    check_call_events(caller.events)


async def test_a_caller_leaving_mid_reply_ends_the_job_and_the_worker_takes_the_next_call(
    livekit_server: LiveKitFixture, worker: WorkerProcess, recording: Recording
) -> None:
    async with call(livekit_server) as caller:
        asked = await caller.say_after_greeting(recording.clip("question"))
        await caller.event(TURN_S, type="transcript", role="user", final=True)
        await until(lambda: caller.spoke_since(asked), TURN_S, "the agent's spoken answer")
        assert not caller.find(type="transcript", role="agent", text=ANSWER), "reply already over"
    [job] = [r.job for r in livekit_server.workers.jobs.values()]
    await livekit_server.workers.wait_until(lambda: job.state.status in ENDED, LEAVE_S)

    await _next_call_is_taken(livekit_server, worker)


async def test_a_killed_caller_ends_the_job_and_the_worker_takes_the_next_call(
    livekit_server: LiveKitFixture, worker: WorkerProcess
) -> None:
    room = room_name()
    await dispatch(livekit_server, room)
    token = livekit_server.token("user1", room, can_publish_data=True)
    command = ["-m", "tests.e2e.caller_process", livekit_server.url, token]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, "single_question", "question", cwd=ROOT, stdout=-1
    )
    try:
        assert process.stdout is not None
        events: list[Event] = []
        async with asyncio.timeout(JOIN_S + 2 * TURN_S):
            while not any(e["type"] == "transcript" and e["role"] == "user" for e in events):
                events.append(json.loads(await process.stdout.readline()))
        process.kill()  # no leave: the server sees its sockets close
        killed = time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    [job] = [r.job for r in livekit_server.workers.jobs.values()]
    await livekit_server.workers.wait_until(lambda: job.state.status in ENDED, LEAVE_S)
    assert time.monotonic() - killed < LEAVE_S
    await _next_call_is_taken(livekit_server, worker)


async def _next_call_is_taken(lk: LiveKitFixture, worker: WorkerProcess) -> None:
    """A new call after the last one ended: greeted, by the same worker."""
    async with call(lk, identity="user2") as caller:
        start = time.monotonic()
        greeting = await caller.event(TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"] == GREETING
        assert caller.spoke_since(start, seconds=1.0)
        jobs = [r.job for r in lk.workers.jobs.values()]
        assert [j.state.worker_id for j in jobs] == [worker.id, worker.id]
        await caller.hang_up()
    check_call_events(caller.events)


@pytest.mark.parametrize(
    ("room", "reason"),
    [
        ("lobby", "room name 'lobby' does not start with 'agent_'"),
        ("agent_deadbeef_user_1", "no configured agent matches 'deadbeef'"),
    ],
)
async def test_no_agent_joins_a_room_that_names_no_configured_agent(
    livekit_server: LiveKitFixture, worker: WorkerProcess, room: str, reason: str
) -> None:
    async with call(livekit_server, room) as caller:
        [record] = livekit_server.workers.jobs.values()
        await livekit_server.workers.wait_until(lambda: record.job.state.status in ENDED, JOIN_S)
        assert record.job.state.status == JS_FAILED
        why = f"rejecting job {record.job.id} for room {room!r}: {reason}"
        await until(lambda: why in worker.log(), JOIN_S, "the worker to log why")
        await asyncio.sleep(3)  # time enough for a wrongly accepted agent to have joined
        assert caller.agent() is None
        assert list(livekit_server.server.rooms[room].participants) == ["user1"]
        assert not caller.events
