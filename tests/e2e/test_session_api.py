"""The session API end to end: one HTTP call, then a call with the agent it dispatched.

`python -m worker api` runs as a subprocess against the test server, next to the real worker
(`voice_worker`) and the stand-in providers; the caller joins with nothing but the API's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol.agent_dispatch import AgentDispatch

from tests.e2e.calls import (
    JOIN_S,
    SUPPORT_PROMPT,
    TURN_S,
    Caller,
    StandIns,
    WorkerProcess,
    script,
    stand_ins,
    until,
    voice_worker,
    worker_command,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events
from tests.lkserver.workers import ENDED, JobRecord
from worker.settings import DEFAULT_AGENT_NAME

API_KEY = "e2e-session-api-key-0123456789ab"
"""32 characters: the API refuses keys under 16."""
SUPPORT_ID = "5b710eca-ee67-4c3a-aeb6-8b541f451b40"
CONTEXT = {"customer_name": "Sam"}
GREETING_FOR_SAM = "Hi Sam, this is Ava from Acme support. How can I help you today?"
START_S = 30
"""For the API to import FastAPI and the LiveKit SDK and answer /healthz, on a busy machine."""
END_S = 10
"""For a deleted room's job to end and everyone in it to be disconnected."""

pytestmark = pytest.mark.timeout(150)


@dataclass
class SessionApi:
    """A running `python -m worker api` and an HTTP client for it, holding the test's key."""

    url: str
    http: aiohttp.ClientSession
    process: asyncio.subprocess.Process
    log_path: Path

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """The status and the JSON body (None when empty) of an authorized request."""
        async with self.http.request(
            method, self.url + path, json=body, headers={"X-API-Key": API_KEY}
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/voice-sessions`, which must succeed."""
        status, session = await self.request("POST", "/v1/voice-sessions", body)
        assert status == 201, session
        assert isinstance(session, dict)
        return session


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def session_api(lk: LiveKitFixture, log_dir: Path) -> AsyncIterator[SessionApi]:
    """`python -m worker api` on a free local port, once /healthz answers 200 (it reaches the
    test server); stopped with SIGTERM and its log printed afterwards (shown for a failed test)."""
    prompts_dir = log_dir / "prompts"
    prompts_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SUPPORT_PROMPT, prompts_dir)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WORKER_API_") and name != "LIVEKIT_AGENT_NAME"
    }
    environment.update(
        {
            "LIVEKIT_URL": lk.url,
            "LIVEKIT_API_KEY": lk.api_key,
            "LIVEKIT_API_SECRET": lk.api_secret,
            "LIVEKIT_PUBLIC_URL": "",  # the default: LIVEKIT_URL
            "WORKER_API_KEYS": API_KEY,
            "WORKER_PROMPTS_DIR": str(prompts_dir),
        }
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "api.log"
    command = ["api", "--host", "127.0.0.1", "--port", str(port)]
    async with (
        worker_command(command, environment, log_path) as process,
        aiohttp.ClientSession() as http,
    ):
        await _healthy(http, url, process)
        yield SessionApi(url, http, process, log_path)


async def _healthy(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    try:
        async with asyncio.timeout(START_S):
            while process.returncode is None:
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            assert await response.json() == {"status": "ok"}
                            return
                except aiohttp.ClientConnectionError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out after {START_S} s waiting for the session API's /healthz")
    pytest.fail(f"the session API exited with code {process.returncode} before answering")


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
