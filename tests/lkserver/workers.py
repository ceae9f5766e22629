"""The agent-worker protocol: the `/agent` WebSocket, dispatch, and each job's lifecycle.

livekit-agents workers connect here exactly as they would to livekit-server, so the tests run the
real worker code: register, availability, assignment, job status and termination. Dispatch is
explicit (`AgentDispatchService.CreateDispatch`, or `CreateRoomRequest.agents`) for workers with an
agent name, and automatic, once per room on its first non-agent participant, for workers without.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from livekit import api
from livekit.protocol import agent as proto_agent
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import models as proto_models

from tests.lkserver.auth import AuthError
from tests.lkserver.server import LiveKitTestServer, Participant, Room

logger = logging.getLogger(__name__)

REGISTER_TIMEOUT = 10.0
"""How long a fresh connection may take to send `register` (the SDK sends it at once)."""
AVAILABILITY_TIMEOUT = 10.0
"""How long a worker may take to answer an availability request (livekit-agents' `on_request`)."""

ENDED = (proto_agent.JS_SUCCESS, proto_agent.JS_FAILED, proto_agent.JS_CANCELLED)


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class RegisteredWorker:
    """One connected worker: what it registered as and the jobs it holds."""

    id: str
    agent_name: str
    ws: web.WebSocketResponse
    jobs: set[str] = field(default_factory=set)
    status: proto_agent.WorkerStatus = proto_agent.WS_AVAILABLE
    """From its `update_worker` messages: a full worker (`WS_FULL`) is not offered jobs."""
    answers: dict[str, asyncio.Future[proto_agent.AvailabilityResponse]] = field(
        default_factory=dict
    )
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: proto_agent.ServerMessage) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(message.SerializeToString())


@dataclass
class JobRecord:
    """A job and what happened to it, for the tests to assert on."""

    job: proto_agent.Job
    """`job.state` holds status, worker_id and participant_identity as the server knows them."""
    declined_by: list[str] = field(default_factory=list)
    """Ids of the workers that answered `available=false` (or not at all), in order."""
    not_now: set[str] = field(default_factory=set)
    """Workers not to ask again until they report themselves available (`WS_AVAILABLE`) anew."""
    terminated: bool = False
    """Whether a `termination` message went to the job's worker."""
    offering: bool = False
    """Whether a `_dispatch` is asking workers right now: one at a time, or two could accept."""


class WorkerService:
    """Registers workers on `/agent` and dispatches jobs to them; attach before `server.start()`."""

    def __init__(self, server: LiveKitTestServer) -> None:
        self._server = server
        self.workers: dict[str, RegisteredWorker] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.dispatches: dict[str, proto_dispatch.AgentDispatch] = {}
        self._auto_dispatched: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._closed = False
        server.add_routes([web.get("/agent", self._handle_agent)])
        server.on_participant_joined(self._on_participant_joined)
        server.on_room_closed(self._on_room_closed)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds, checked on each worker, job or join event.

        Raises `TimeoutError` after `timeout` seconds.
        """
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # Dispatches (AgentDispatchService)

    async def create_dispatch(
        self, room_name: str, agent_name: str, metadata: str = ""
    ) -> proto_dispatch.AgentDispatch:
        """Dispatch `agent_name` to the room, creating the room if needed (as livekit-server)."""
        room = self._server.rooms.get(room_name) or await self._server.create_room(room_name)
        dispatch = proto_dispatch.AgentDispatch(
            id=_new_id("AD_"),
            agent_name=agent_name,
            room=room.name,
            metadata=metadata,
            state=proto_dispatch.AgentDispatchState(created_at=time.time_ns()),
        )
        self.dispatches[dispatch.id] = dispatch
        self._start_job(room, agent_name, metadata, dispatch_id=dispatch.id)
        return self._with_jobs(dispatch)

    def list_dispatches(
        self, room_name: str, dispatch_id: str = ""
    ) -> list[proto_dispatch.AgentDispatch]:
        return [
            self._with_jobs(d)
            for d in self.dispatches.values()
            if d.room == room_name and dispatch_id in ("", d.id)
        ]

    async def delete_dispatch(
        self, room_name: str, dispatch_id: str
    ) -> proto_dispatch.AgentDispatch | None:
        """Forget the dispatch and end its jobs, as deleting it on livekit-server does."""
        dispatch = self.dispatches.get(dispatch_id)
        if dispatch is None or dispatch.room != room_name:
            return None
        for record in self._jobs_where(lambda job: job.dispatch_id == dispatch_id):
            await self._terminate(record)
        deleted = self._with_jobs(self.dispatches.pop(dispatch_id))
        deleted.state.deleted_at = time.time_ns()
        return deleted

    def _with_jobs(self, dispatch: proto_dispatch.AgentDispatch) -> proto_dispatch.AgentDispatch:
        """A copy of the dispatch with its jobs' current state."""
        copy = proto_dispatch.AgentDispatch()
        copy.CopyFrom(dispatch)
        copy.state.jobs.extend(
            record.job for record in self._jobs_where(lambda job: job.dispatch_id == dispatch.id)
        )
        return copy

    def _jobs_where(self, predicate: Callable[[proto_agent.Job], bool]) -> list[JobRecord]:
        return [record for record in self.jobs.values() if predicate(record.job)]

    # Server hooks

    def _on_participant_joined(self, room: Room, participant: Participant) -> None:
        """Automatic dispatch: once per room, when its first non-agent participant arrives.

        Hooks are plain functions that spawn tasks here: the server cancels its own hook tasks
        as it stops, and these must not run half-way through the teardown.
        """
        if self._closed:
            return
        self._spawn(self._notify())  # tests wait for agents to join with `wait_until`
        if participant.kind == proto_models.ParticipantInfo.Kind.AGENT:
            return
        if room.name in self._auto_dispatched:
            return
        self._auto_dispatched.add(room.name)
        if any(not worker.agent_name for worker in self.workers.values()):
            self._start_job(room, agent_name="", metadata="", dispatch_id="")

    def _on_room_closed(self, room: Room) -> None:
        """The room is gone: terminate its jobs and drop its dispatches."""
        if self._closed:
            return
        for record in self._jobs_where(lambda job: job.room.name == room.name):
            self._spawn(self._terminate(record))
        for dispatch_id in [d.id for d in self.dispatches.values() if d.room == room.name]:
            del self.dispatches[dispatch_id]
        self._auto_dispatched.discard(room.name)

    # Jobs

    def _start_job(self, room: Room, agent_name: str, metadata: str, dispatch_id: str) -> None:
        job = proto_agent.Job(
            id=_new_id("AJ_"),
            dispatch_id=dispatch_id,
            type=proto_agent.JT_ROOM,
            room=room.info(),
            agent_name=agent_name,
            metadata=metadata,
            state=proto_agent.JobState(status=proto_agent.JS_PENDING, updated_at=time.time_ns()),
        )
        record = JobRecord(job=job)
        self.jobs[job.id] = record
        self._spawn(self._dispatch(record))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("worker service task failed", exc_info=error)

    async def _dispatch(self, record: JobRecord) -> None:
        """Offer the job to matching workers, least busy first, until one accepts.

        A job nobody accepts stays pending and is offered again when a matching worker registers;
        a refusal with `terminate` ends it instead.
        """
        job = record.job
        if record.offering:
            return
        record.offering = True
        try:
            while job.state.status == proto_agent.JS_PENDING and not job.state.worker_id:
                candidates = [
                    worker
                    for worker in self.workers.values()
                    if worker.agent_name == job.agent_name
                    and worker.status == proto_agent.WS_AVAILABLE
                    and worker.id not in record.not_now
                ]
                if not candidates:
                    return
                worker = min(candidates, key=lambda w: len(w.jobs))
                answer = await self._ask(worker, job)
                if job.state.status != proto_agent.JS_PENDING:
                    return  # cancelled meanwhile: a worker left waiting gives up on its own
                if answer is None or not answer.available:
                    record.declined_by.append(worker.id)
                    record.not_now.add(worker.id)
                    if answer is not None and answer.terminate:  # `JobRequest.reject()`'s default
                        self._end(job, proto_agent.JS_FAILED, f"rejected by worker {worker.id}")
                    await self._notify()
                    continue
                await self._assign(record, worker, answer)
        finally:
            record.offering = False

    async def _ask(
        self, worker: RegisteredWorker, job: proto_agent.Job
    ) -> proto_agent.AvailabilityResponse | None:
        """The worker's availability answer, or None if it did not answer in time or left."""
        answer = asyncio.get_running_loop().create_future()
        worker.answers[job.id] = answer
        try:
            await worker.send(
                proto_agent.ServerMessage(availability=proto_agent.AvailabilityRequest(job=job))
            )
            return await asyncio.wait_for(answer, AVAILABILITY_TIMEOUT)
        except (TimeoutError, ConnectionError):
            logger.warning("worker %s gave no availability answer for %s", worker.id, job.id)
            return None
        finally:
            worker.answers.pop(job.id, None)

    async def _assign(
        self,
        record: JobRecord,
        worker: RegisteredWorker,
        answer: proto_agent.AvailabilityResponse,
    ) -> None:
        job = record.job
        identity = answer.participant_identity or f"agent-{job.id}"
        token = (
            api.AccessToken(self._server.api_key, self._server.api_secret)
            .with_identity(identity)
            .with_name(answer.participant_name)
            .with_metadata(answer.participant_metadata)
            .with_attributes(dict(answer.participant_attributes))
            .with_kind("agent")
            .with_grants(
                api.VideoGrants(
                    room_join=True, room=job.room.name, agent=True, can_update_own_metadata=True
                )
            )
            .to_jwt()
        )
        job.state.worker_id = worker.id
        job.state.participant_identity = identity
        job.state.updated_at = time.time_ns()
        worker.jobs.add(job.id)
        await worker.send(
            proto_agent.ServerMessage(
                assignment=proto_agent.JobAssignment(job=job, token=token, url="")
            )
        )
        await self._notify()

    async def _terminate(self, record: JobRecord) -> None:
        """End the job: tell its worker if it has one; a pending job is just cancelled."""
        job = record.job
        if job.state.status in ENDED:
            return
        worker = self.workers.get(job.state.worker_id)
        if worker is not None:
            with contextlib.suppress(ConnectionError):
                await worker.send(
                    proto_agent.ServerMessage(termination=proto_agent.JobTermination(job_id=job.id))
                )
            record.terminated = True
        else:
            self._end(job, proto_agent.JS_CANCELLED)
        await self._notify()

    @staticmethod
    def _end(job: proto_agent.Job, status: proto_agent.JobStatus, error: str = "") -> None:
        job.state.status = status
        job.state.error = error
        job.state.ended_at = job.state.updated_at = time.time_ns()

    # The /agent WebSocket

    async def _handle_agent(self, request: web.Request) -> web.StreamResponse:
        if self._closed:  # workers retry; none may slip in while the fixture tears down
            return web.Response(status=503, text="shutting down")
        try:
            self._server.auth.verify_request(request, require=["agent"])
        except AuthError as e:
            return e.response()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=REGISTER_TIMEOUT)
        except TimeoutError:
            await ws.close()
            return ws
        register = proto_agent.WorkerMessage()
        if first.type == WSMsgType.BINARY:
            register.ParseFromString(first.data)
        if not register.HasField("register"):
            await ws.close(message=b"expected register as the first message")
            return ws
        worker = RegisteredWorker(
            id=_new_id("AW_"),
            agent_name=register.register.agent_name,
            ws=ws,
        )
        await worker.send(
            proto_agent.ServerMessage(
                register=proto_agent.RegisterWorkerResponse(
                    worker_id=worker.id, server_info=self._server.server_info()
                )
            )
        )
        self.workers[worker.id] = worker
        logger.info("worker %s registered (agent_name=%r)", worker.id, worker.agent_name)
        await self._notify()
        self._offer_pending(worker)
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    await self._on_worker_message(
                        worker, proto_agent.WorkerMessage.FromString(message.data)
                    )
        finally:
            await self._on_worker_gone(worker)
        return ws

    def _offer_pending(self, worker: RegisteredWorker) -> None:
        """A worker that registers (or is available again) is offered the jobs nobody took,
        those it declined while busy included: its new status says it has room now."""
        for record in self._jobs_where(
            lambda job: (
                job.agent_name == worker.agent_name
                and job.state.status == proto_agent.JS_PENDING
                and not job.state.worker_id
            )
        ):
            record.not_now.discard(worker.id)
            self._spawn(self._dispatch(record))

    async def _on_worker_message(
        self, worker: RegisteredWorker, message: proto_agent.WorkerMessage
    ) -> None:
        kind = message.WhichOneof("message")
        if kind == "ping":
            pong = proto_agent.WorkerPong(
                last_timestamp=message.ping.timestamp, timestamp=int(time.time() * 1000)
            )
            await worker.send(proto_agent.ServerMessage(pong=pong))
        elif kind == "availability":
            answer = worker.answers.get(message.availability.job_id)
            if answer is not None and not answer.done():
                answer.set_result(message.availability)
        elif kind == "update_job":
            await self._on_update_job(worker, message.update_job)
        elif kind == "update_worker":
            update = message.update_worker
            if update.HasField("status") and update.status != worker.status:
                worker.status = update.status
                if worker.status == proto_agent.WS_AVAILABLE:
                    self._offer_pending(worker)
        else:
            logger.debug("worker %s: ignoring %s", worker.id, kind)

    async def _on_update_job(
        self, worker: RegisteredWorker, update: proto_agent.UpdateJobStatus
    ) -> None:
        record = self.jobs.get(update.job_id)
        if record is None or record.job.state.worker_id != worker.id:
            logger.warning("worker %s updated unknown job %s", worker.id, update.job_id)
            return
        state = record.job.state
        if update.status in ENDED:
            self._end(record.job, update.status, update.error)
            worker.jobs.discard(update.job_id)
        else:
            if update.status == proto_agent.JS_RUNNING and not state.started_at:
                state.started_at = time.time_ns()
            state.status = update.status
            state.updated_at = time.time_ns()
        await self._notify()

    async def _on_worker_gone(self, worker: RegisteredWorker) -> None:
        """Its unanswered requests count as declined; its running jobs have failed."""
        self.workers.pop(worker.id, None)
        for answer in worker.answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError("worker disconnected"))
        for job_id in worker.jobs:
            job = self.jobs[job_id].job
            if job.state.status not in ENDED:
                self._end(job, proto_agent.JS_FAILED, "worker disconnected")
        logger.info("worker %s disconnected", worker.id)
        await self._notify()

    async def aclose(self) -> None:
        """Stop dispatching and close the workers' sockets (aiohttp would wait for them)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in list(self.workers.values()):
            await worker.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
