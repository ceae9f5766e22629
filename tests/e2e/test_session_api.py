"""The session API end to end: one HTTP call, then a call with the agent it dispatched.

`python -m worker api` runs as a subprocess against the test server, next to the real worker
(`voice_worker`) and the stand-in providers; the caller joins with nothing but the API's answer.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from livekit import api, rtc
from livekit.protocol.agent_dispatch import AgentDispatch

from tests.e2e.calls import (
    JOIN_S,
    TURN_S,
    Caller,
    StandIns,
    WorkerProcess,
    script,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.e2e.session_api import SessionApi, session_api
from tests.harness import Recording, check_call_events
from tests.lkserver.workers import ENDED, JobRecord
from tests.polling import until
from worker.settings import DEFAULT_AGENT_NAME

SUPPORT_ID = "5b710eca-ee67-4c3a-aeb6-8b541f451b40"
CONTEXT = {"customer_name": "Sam"}
GREETING_FOR_SAM = "Hi Sam, this is Ava from Acme support. How can I help you today?"

END_S = 10
"""For a deleted room's job to end and everyone in it to be disconnected."""

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
async def services() -> AsyncIterator[StandIns]:
    async with stand_ins(Recording.load("single_question"), script([])) as running:
        yield running


@pytest.fixture
async def worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    async with voice_worker(livekit_server, tmp_path / "worker", services.env()) as started:
        yield started


@pytest.fixture
async def sessions(
    livekit_server: LiveKitFixture, worker: WorkerProcess, tmp_path: Path
) -> AsyncIterator[SessionApi]:
    async with session_api(livekit_server, tmp_path / "api") as running:
        yield running


def _job_of(lk: LiveKitFixture, room_name: str) -> tuple[AgentDispatch, JobRecord]:
    """The one dispatch into `room_name` and its one job."""
    [dispatch] = [d for d in lk.workers.dispatches.values() if d.room == room_name]
    [record] = [r for r in lk.workers.jobs.values() if r.job.dispatch_id == dispatch.id]
    return dispatch, record


def _call_summary(worker: WorkerProcess) -> dict[str, Any] | None:
    """The worker's "call ended" log line (its one call's summary), once it is written."""
    for line in worker.log().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("message", "").startswith("call ended"):
                return record
    return None


async def test_one_post_gives_a_call_whose_agent_greets_with_the_context(
    livekit_server: LiveKitFixture, worker: WorkerProcess, sessions: SessionApi
) -> None:
    body = {"agent_id": SUPPORT_ID[:8], "user_id": "alice", "context": CONTEXT}
    session = await sessions.create(body)

    fields = {"session_id", "room_name", "token", "livekit_url", "agent_id", "agent_name"}
    assert set(session) == fields | {"expires_at"}
    room_name = session["room_name"]
    assert room_name.startswith(f"agent_{SUPPORT_ID}_alice_")
    assert room_name.rsplit("_", 1)[1].isdigit()
    assert (session["agent_id"], session["agent_name"]) == (SUPPORT_ID, "Ava (Acme support)")
    assert session["livekit_url"] == livekit_server.url
    ttl = datetime.fromisoformat(session["expires_at"]) - datetime.now(UTC)
    assert 540 < ttl.total_seconds() <= 600

    room = livekit_server.server.rooms[room_name]
    assert room.sid == session["session_id"]
    assert (room.empty_timeout, room.max_participants) == (120, 3)
    dispatch, record = _job_of(livekit_server, room_name)
    assert dispatch.agent_name == DEFAULT_AGENT_NAME
    assert json.loads(dispatch.metadata) == CONTEXT
    assert record.job.metadata == dispatch.metadata
    # the API answers once a worker has taken the job
    assert record.job.state.worker_id == worker.id

    claims = api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(
        session["token"]
    )
    assert claims.identity == "alice"
    grants = claims.video
    assert grants is not None
    assert (grants.room_join, grants.room) == (True, room_name)
    assert (grants.can_subscribe, grants.can_publish, grants.can_publish_data) == (True,) * 3
    assert grants.can_publish_sources == ["microphone"]
    assert not any((grants.room_admin, grants.room_create, grants.room_list))

    caller = Caller(session["livekit_url"], session["token"])
    start = time.monotonic()
    try:
        await caller.join()
        agent = await until(caller.agent, JOIN_S, "the agent to join")
        assert agent.identity == record.job.state.participant_identity
        assert caller.room.local_participant.identity == "alice"
        greeting = await caller.event(TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"] == GREETING_FOR_SAM  # the context reached the agent
        await until(lambda: caller.spoke_since(start, 1.0), TURN_S, "the spoken greeting")
        await caller.hang_up()
    finally:
        await caller.leave()
    check_call_events(caller.events)


async def test_deleting_the_session_ends_the_call(
    livekit_server: LiveKitFixture, worker: WorkerProcess, sessions: SessionApi
) -> None:
    session = await sessions.create({"agent_id": SUPPORT_ID[:8], "user_id": "bob"})
    room_name = session["room_name"]
    _, record = _job_of(livekit_server, room_name)
    caller = Caller(session["livekit_url"], session["token"])
    disconnected: list[int] = []
    caller.room.on("disconnected", disconnected.append)
    try:
        await caller.join()
        greeting = await caller.event(TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"].startswith("Hi there,")  # no context: the default

        status, body = await sessions.request("DELETE", f"/v1/voice-sessions/{room_name}")
        assert (status, body) == (204, None)
        assert room_name not in livekit_server.server.rooms
        await until(lambda: disconnected, END_S, "the caller to be disconnected")
        assert disconnected == [rtc.DisconnectReason.ROOM_DELETED]
        # the caller is disconnected with the agent, so the agent's leaving shows on the server:
        # its job is ended (by the worker, on the server's termination) and the call is over
        await livekit_server.workers.wait_until(lambda: record.job.state.status in ENDED, END_S)
        assert record.terminated
        summary = await until(lambda: _call_summary(worker), END_S, "the worker to end the call")
        # the same end whichever the agent hears of first, its own disconnection or the caller's
        assert (summary["reason"], summary["detail"]) == ("client_ended", "room deleted")
    finally:
        await caller.leave()

    status, body = await sessions.request("DELETE", f"/v1/voice-sessions/{room_name}")
    assert status == 404
    assert body["detail"] == f"no session in room {room_name!r}"
