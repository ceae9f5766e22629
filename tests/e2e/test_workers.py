"""Real livekit-agents workers against the test server: register, dispatch, join, terminate.

The workers are `agent_worker.py` subprocesses in `start` mode, exactly as production runs them,
so these exercise the framework's side of the protocol rather than a copy of it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent as proto_agent

from tests.e2e.agent_worker import CONNECTED
from tests.e2e.calls import stop_process
from tests.e2e.conftest import LiveKitFixture
from tests.lkserver.workers import ENDED, JobRecord, RegisteredWorker

AGENT_WORKER = Path(__file__).with_name("agent_worker.py")
ROOM = "e2e-workers"
AGENT_NAME = "e2e-agent"
REGISTER_S = 60
"""Importing livekit-agents and forking its idle process takes long on a busy 2-core machine."""
JOIN_S = 30

pytestmark = pytest.mark.timeout(180)


@asynccontextmanager
async def agent_worker(
    lk: LiveKitFixture, log_dir: Path, *, on_request: str = "accept"
) -> AsyncIterator[RegisteredWorker]:
    """A worker subprocess named `AGENT_NAME`, once it has registered; stopped afterwards."""
    env = {
        **os.environ,
        "LIVEKIT_URL": lk.url,
        "LIVEKIT_API_KEY": lk.api_key,
        "LIVEKIT_API_SECRET": lk.api_secret,
        "E2E_AGENT_NAME": AGENT_NAME,
        "E2E_ON_REQUEST": on_request,
    }
    known = set(lk.workers.workers)
    log_path = log_dir / f"worker-{on_request}-{len(known)}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(AGENT_WORKER),
            "start",
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its job processes go with it at the end
        )
        try:
            yield await _registered(lk, process, known, log_path)
        finally:
            await stop_process(process, log)


async def _registered(
    lk: LiveKitFixture, process: asyncio.subprocess.Process, known: set[str], log_path: Path
) -> RegisteredWorker:
    def new_worker() -> RegisteredWorker | None:
        return next((w for w in lk.workers.workers.values() if w.id not in known), None)

    try:
        async with asyncio.timeout(REGISTER_S):
            while (worker := new_worker()) is None:
                if process.returncode is not None:
                    break
                await asyncio.sleep(0.1)
    except TimeoutError:
        worker = None
    if worker is None:
        pytest.fail(
            f"the agent worker did not register within {REGISTER_S} s; its log:\n{_tail(log_path)}"
        )
    return worker


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def caller_in_room(lk: LiveKitFixture) -> AsyncIterator[asyncio.Future[rtc.Participant]]:
    """An SDK participant in ROOM; the future is the agent, once its `connect()` has returned."""
    caller = rtc.Room()
    agent: asyncio.Future[rtc.Participant] = asyncio.get_running_loop().create_future()

    @caller.on("participant_attributes_changed")
    def on_attributes(changed: dict[str, str], participant: rtc.Participant) -> None:
        if CONNECTED in changed and not agent.done():
            agent.set_result(participant)

    async with asyncio.timeout(JOIN_S):
        await caller.connect(lk.url, lk.token("caller", ROOM))
    try:
        yield agent
    finally:
        await caller.disconnect()


def only_job(lk: LiveKitFixture) -> JobRecord:
    [record] = lk.workers.jobs.values()
    return record


async def test_a_dispatched_worker_joins_as_an_agent_and_its_job_ends_with_the_room(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    lk = livekit_server
    lkapi = lk.api()
    async with agent_worker(lk, tmp_path) as worker, caller_in_room(lk) as agent_connected:
        dispatch = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=ROOM, metadata="hi")
        )
        agent = await asyncio.wait_for(agent_connected, JOIN_S)

        record = only_job(lk)
        job = record.job
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert agent.identity == job.state.participant_identity == f"e2e-agent-{job.id}"
        assert job.dispatch_id == dispatch.id
        assert job.state.worker_id == worker.id
        await lk.workers.wait_until(lambda: job.state.status == proto_agent.JS_RUNNING, 10)
        [listed] = await lkapi.agent_dispatch.list_dispatch(ROOM)
        assert [j.state.status for j in listed.state.jobs] == [proto_agent.JS_RUNNING]

        await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        await lk.workers.wait_until(lambda: job.state.status in ENDED, JOIN_S)
        assert record.terminated
        assert job.state.status == proto_agent.JS_SUCCESS, job.state.error
        assert not lk.workers.dispatches


async def test_a_worker_that_declines_is_skipped_and_the_job_waits_for_another(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    lk = livekit_server
    lkapi = lk.api()
    async with agent_worker(lk, tmp_path, on_request="decline") as decliner:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=ROOM)
        )
        record = only_job(lk)
        await lk.workers.wait_until(lambda: record.declined_by == [decliner.id], JOIN_S)
        assert record.job.state.status == proto_agent.JS_PENDING
        assert not record.job.state.worker_id

        async with (
            caller_in_room(lk) as agent_connected,
            agent_worker(lk, tmp_path) as acceptor,
        ):
            agent = await asyncio.wait_for(agent_connected, JOIN_S)
            assert agent.identity == record.job.state.participant_identity
            assert record.job.state.worker_id == acceptor.id
            assert record.declined_by == [decliner.id]
            assert not decliner.jobs
            # end the job before stopping the worker, or it drains (waits) first
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            await lk.workers.wait_until(lambda: record.job.state.status in ENDED, JOIN_S)


async def test_the_worker_protocol_register_ping_and_a_refusal_that_ends_the_job(
    livekit_server: LiveKitFixture,
) -> None:
    """A hand-driven worker: the exact messages, and what `reject(terminate=True)` means."""
    lk = livekit_server
    url = f"{lk.server.http_url}/agent"
    agent_token = (
        api.AccessToken(lk.api_key, lk.api_secret).with_grants(api.VideoGrants(agent=True)).to_jwt()
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as rejected:
            await http.ws_connect(url, headers={"Authorization": f"Bearer {lk.token('x', ROOM)}"})
        assert rejected.value.status == 403

        async with http.ws_connect(url, headers={"Authorization": f"Bearer {agent_token}"}) as ws:

            async def exchange(message: proto_agent.WorkerMessage) -> proto_agent.ServerMessage:
                await ws.send_bytes(message.SerializeToString())
                return proto_agent.ServerMessage.FromString(await ws.receive_bytes(timeout=10))

            registered = await exchange(
                proto_agent.WorkerMessage(
                    register=proto_agent.RegisterWorkerRequest(
                        type=proto_agent.JT_ROOM, agent_name="hand-driven"
                    )
                )
            )
            assert registered.register.worker_id.startswith("AW_")
            assert registered.register.server_info.protocol > 0

            pong = await exchange(
                proto_agent.WorkerMessage(ping=proto_agent.WorkerPing(timestamp=1234))
            )
            assert pong.pong.last_timestamp == 1234

            await lk.api().agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="hand-driven", room=ROOM)
            )
            request = proto_agent.ServerMessage.FromString(await ws.receive_bytes(timeout=10))
            job = request.availability.job
            assert (job.room.name, job.agent_name, job.type) == (
                ROOM,
                "hand-driven",
                proto_agent.JT_ROOM,
            )
            refusal = proto_agent.AvailabilityResponse(
                job_id=job.id, available=False, terminate=True
            )
            await ws.send_bytes(proto_agent.WorkerMessage(availability=refusal).SerializeToString())
            record = lk.workers.jobs[job.id]
            await lk.workers.wait_until(lambda: record.job.state.status in ENDED, 10)
            assert record.job.state.status == proto_agent.JS_FAILED
            assert not record.job.state.worker_id
