"""The LiveKit worker: dispatch, per-process prewarm, one call per job, load and shutdown.

`VoiceWorker` is what runs inside LiveKit's processes. It is pickled into each job process with
the agent registry already loaded and validated by the main process, so configs are read once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import signal
import sqlite3
from pathlib import Path

from livekit.agents import AgentServer, JobContext, JobProcess, JobRequest, NotGivenOr
from livekit.agents.ipc.job_executor import JobExecutor
from livekit.agents.types import NOT_GIVEN
from livekit.agents.utils import http_context
from livekit.agents.worker import ServerEnvOption, _DefaultLoadCalc

from worker.call.greetings import GreetingCache
from worker.call.lifecycle import GOODBYE_TIMEOUT, CallSetup, run_call
from worker.call.pipeline import load_vad
from worker.config import AgentConfig, AgentRegistry
from worker.crash_guard import CallLedger, CrashGuard, DeadJob, ledger_path
from worker.dispatch import recording_wanted
from worker.local.runtime import LocalRuntime
from worker.logs import install_redaction
from worker.placeholders import parse_metadata
from worker.protocol import EndReason, new_call_id
from worker.providers import build_providers
from worker.records.report import CallRecorder, record_target
from worker.records.signing import SecretError, secret_key
from worker.records.store import RecordStore
from worker.records.webhook import WebhookSender
from worker.routing import RoomName, RoutingError, parse_room
from worker.settings import SettingsError, WorkerSettings
from worker.tools.check import secret_values
from worker.tools.spec import McpServer
from worker.transports.room import RoomTransport

logger = logging.getLogger("worker")

SECRET_VARIABLE = "WORKER_WEBHOOK_SECRET"  # noqa: S105 (its name)
WEBHOOK_FLUSH = 2.0
"""Seconds a stopping worker gives the last calls' records before leaving them for its next
start."""
SHUTDOWN_SIGNAL = signal.SIGUSR2
"""Sent by the main process to each job when the worker starts draining (SIGUSR1 is taken by
LiveKit for stack dumps; SIGTERM and SIGINT are ignored in job processes)."""


class VoiceWorker:
    """Routes rooms to agents and runs their calls. Picklable: it travels to job processes."""

    def __init__(
        self,
        settings: WorkerSettings,
        registry: AgentRegistry,
        *,
        pinned_agent: str | None = None,
        local_llm_url: str | None = None,
        shared_models: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry
        """The agents as they run: providers already resolved (see `providers.resolve`)."""
        self.pinned_agent = pinned_agent
        """Set by `console` / `connect --agent`: their rooms have no routable name."""
        self.local_llm_url = local_llm_url
        """The main process's local LLM server, when some agent uses it."""
        self.shared_models = shared_models
        """Whisper and Piper live in the worker's inference process (`share_models`)."""
        self.calls_dir: Path | None = None
        """Where each job keeps its call's ledger for the main process (`create_server` sets it)."""

    # --- main process ---------------------------------------------------------------------------

    async def on_request(self, req: JobRequest) -> None:
        """Accept a dispatch only for a room that names a configured agent."""
        try:
            agent, _ = self.route(req.room.name)
        except RoutingError as exc:
            logger.warning("rejecting job %s for room %r: %s", req.id, req.room.name[:200], exc)
            await req.reject()
            return
        await req.accept(name=agent.name, attributes={"voice_agent.id": agent.id})

    def load(self, server: AgentServer) -> float:
        """1.0 (full) at `max_calls` concurrent calls, or earlier when the CPU passes its limit."""
        calls = len(server.active_jobs) / self.settings.max_calls
        if self.settings.cpu_limit is None:
            return calls
        return max(calls, _DefaultLoadCalc.get_load(server) / self.settings.cpu_limit)

    # --- job processes --------------------------------------------------------------------------

    def prewarm(self, proc: JobProcess) -> None:
        """Once per process, before any job: the log guard, the MCP client if an agent uses
        one, the TLS context, the VAD and the local models the agents use (none, with cloud
        providers only)."""
        install_redaction(extra=secret_values(self.registry, os.environ))
        if any(isinstance(t, McpServer) for agent in self.registry for t in agent.tools):
            # 0.7 s of pydantic models on a call's loop otherwise, at its first MCP connect
            importlib.import_module("livekit.agents.llm.mcp")
        # the TLS context every job's shared HTTP session uses (cached per process): parsing the
        # CA bundle stalled each call's loop 50-120 ms as its TTS connected for the greeting
        http_context._create_ssl_context()
        proc.userdata["local"] = LocalRuntime.load(
            self.registry,
            vad_model=load_vad(self.settings.vad),
            llm_url=self.local_llm_url,
            shared=self.shared_models,
        )

    async def entrypoint(self, ctx: JobContext) -> None:
        call_id = new_call_id()
        ledger = None
        if self.calls_dir is not None and not ctx.is_fake_job():
            ledger = CallLedger(ledger_path(self.calls_dir, ctx.job.id), call_id)
        try:
            await self._run_job(ctx, call_id, ledger)
        finally:
            if ledger is not None:
                ledger.close()

    async def _run_job(self, ctx: JobContext, call_id: str, ledger: CallLedger | None) -> None:
        try:
            agent, room = self.route(ctx.job.room.name)
        except RoutingError as exc:
            # `connect` jobs never went through on_request; nothing may join such a room
            logger.warning(
                "ending job %s for room %r: %s", ctx.job.id, ctx.job.room.name[:200], exc
            )
            if ledger is not None:
                ledger.done()  # no call to end
            ctx.shutdown(reason=f"unroutable room: {exc}")
            return
        fields = {"room": ctx.job.room.name, "job_id": ctx.job.id, "agent_id": agent.id}
        ctx.log_context_fields = {**fields, "call_id": call_id}
        local: LocalRuntime = ctx.proc.userdata["local"]
        metadata = ctx.job.metadata or ""
        transport = RoomTransport(ctx, user_id=room.user_id if room else None)
        await transport.connect()  # the room is joined while the call is built
        setup = CallSetup(
            agent=agent,
            call_id=call_id,
            vad=local.vad,
            providers=build_providers(agent, os.environ, local),
            metadata=metadata,
            shutdown=listen_for_shutdown(),
            log_fields=fields,
            turn_runner=local.turn_runner,
            ledger=ledger,
            room=ctx.job.room.name,
            user_id=room.user_id if room else None,
            records=record_target(agent, self.settings.webhook),
            recording=self.settings.recordings if recording_wanted(agent, metadata) else None,
            greetings=GreetingCache(g) if (g := self.settings.greetings) is not None else None,
        )
        await run_call(setup, transport)

    def route(self, room_name: str) -> tuple[AgentConfig, RoomName | None]:
        """The agent for a room, by the pinned agent or by the room name."""
        if self.pinned_agent is not None:
            with contextlib.suppress(RoutingError):
                return self.registry.get(self.pinned_agent), parse_room(room_name)
            return self.registry.get(self.pinned_agent), None
        room = parse_room(room_name)
        return self.registry.get(room.agent_id), room


def listen_for_shutdown() -> asyncio.Event:
    """An event set when this job process receives `SHUTDOWN_SIGNAL` (see `VoiceAgentServer`)."""
    event = asyncio.Event()
    try:
        asyncio.get_running_loop().add_signal_handler(SHUTDOWN_SIGNAL, event.set)
    except (RuntimeError, ValueError):
        logger.debug("job runs outside a main thread (console): no shutdown signal")
    return event


class VoiceAgentServer(AgentServer):
    """LiveKit's server, plus what 1.8.9 lacks: stopping tells running calls to wrap up, and a
    job process that dies mid-call gets its call ended for the caller (`crash_guard`).

    Without the first a SIGTERM'd worker (`start`) waits silently for calls to end on their own,
    then cuts them, and a stopped `dev` worker cuts them at once: no goodbye, no `call_ended`.
    """

    crash_guard: CrashGuard | None = None
    webhooks: WebhookSender | None = None
    max_calls: int = 1
    """`WORKER_MAX_CALLS`: what one call adds to the load (`VoiceWorker.load`)."""
    _delivering: asyncio.Task[None] | None = None

    def _get_effective_load(self) -> float:
        """The load with the dispatches accepted but not running yet, each one call of
        `max_calls`, as `load` counts it once it runs. LiveKit 1.8.9 counts each as
        `load_threshold / idle processes` while no call runs, so an idle worker declined every
        dispatch of a burst past its idle pool: with one idle process, the second of two calls
        dispatched at once was never served (`bench.capacity --idle-processes 1`)."""
        return self._worker_load + self._reserved_slots / self.max_calls

    def start_webhooks(self) -> None:
        """Once started: the main process delivers the records the calls leave in the outbox."""
        if self.webhooks is not None:
            self._delivering = asyncio.create_task(self.webhooks.run(), name="webhooks")

    def watch_job_processes(self) -> None:
        """Once started (LiveKit creates its process pool then)."""
        self._proc_pool.on("process_closed", self._on_process_closed)

    def _on_process_closed(self, proc: JobExecutor) -> None:
        info = proc.running_job
        if info is None or info.fake_job or self.crash_guard is None:
            return  # an idle process, or `console`
        self.crash_guard.job_ended(
            DeadJob(
                job_id=info.job.id,
                room=info.job.room.name,
                agent_identity=info.accept_arguments.identity,
                exit_code=getattr(proc, "exitcode", None),
                metadata=info.job.metadata or "",
            )
        )

    async def drain(self, timeout: NotGivenOr[int | None] = NOT_GIVEN) -> None:
        notified = notify_jobs_of_shutdown(self)
        logger.info("draining: asked %d running call(s) to say goodbye", notified)
        await super().drain(timeout)

    async def aclose(self) -> None:
        if not self._closed and (notified := notify_jobs_of_shutdown(self)):
            logger.info("stopping: asked %d running call(s) to say goodbye", notified)
        await super().aclose()
        if self.crash_guard is not None:
            await self.crash_guard.aclose()
        if self._delivering is not None and self.webhooks is not None:
            # the last calls' records get one more pass; what is left waits for the next start
            await self.webhooks.settle(WEBHOOK_FLUSH)
            self._delivering.cancel()
            await asyncio.gather(self._delivering, return_exceptions=True)


def notify_jobs_of_shutdown(server: AgentServer) -> int:
    count = 0
    for proc in server._proc_pool.processes:  # the pool is LiveKit's; pids are only there
        pid = getattr(proc, "pid", None)
        if proc.running_job is None or pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SHUTDOWN_SIGNAL)
            count += 1
    return count


def webhook_sender(worker: VoiceWorker) -> WebhookSender | None:
    """The main process's delivery of call records, if any agent's calls leave one; a secret
    that cannot sign or an outbox that cannot be written stops the start, naming the variable."""
    settings = worker.settings.webhook
    if not any(record_target(agent, settings) for agent in worker.registry):
        return None
    try:
        key = secret_key(os.environ.get(SECRET_VARIABLE, ""))
    except SecretError as exc:
        raise SettingsError(
            f"{SECRET_VARIABLE} {exc} (call records are signed; generate one with: python -c"
            " \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
        ) from None
    try:
        store = RecordStore(settings.outbox)
    except (OSError, sqlite3.Error) as exc:
        raise SettingsError(
            f"WORKER_DATA_DIR: the webhook outbox {settings.outbox} cannot be written"
            f" ({type(exc).__name__}: {exc})"
        ) from None
    return WebhookSender(
        store, key, timeout=settings.timeout, keep_delivered=settings.keep_delivered
    )


async def record_dead_call(
    worker: VoiceWorker, job: DeadJob, call_id: str, started: float, duration: float
) -> None:
    """The record of a call whose job process died: what the main process knows (ids, times,
    `error`), `complete: false`; a record the job wrote before dying has the same id, and wins."""
    try:
        agent, room = worker.route(job.room)
    except RoutingError:
        return
    target = record_target(agent, worker.settings.webhook)
    if target is None:
        return
    recorder = CallRecorder(
        target,
        call_id=call_id,
        agent=agent,
        room=job.room,
        user_id=room.user_id if room else None,
        metadata=parse_metadata(job.metadata, where="dispatch metadata"),
        started=started or None,
    )
    await recorder.ended(
        reason=EndReason.ERROR.value, duration=duration, turns=[], usage=[], complete=False
    )


def check_recordings(worker: VoiceWorker) -> None:
    """Where recordings go must work before any call is recorded: the directory writable, and
    boto3 installed for a bucket."""
    if not any(a.recording.enabled or a.recording.per_session for a in worker.registry):
        return
    settings = worker.settings.recordings
    _check_writable(settings.directory, "WORKER_RECORDINGS_DIR")
    if settings.bucket is not None and importlib.util.find_spec("boto3") is None:
        raise SettingsError(
            "WORKER_RECORDINGS_S3_BUCKET needs boto3: pip install 'livekit-voice-worker[s3]'"
        )


def check_greetings(worker: VoiceWorker) -> None:
    """The greeting cache's directory must be writable, or turned off, before any call."""
    if worker.settings.greetings is not None:
        _check_writable(worker.settings.greetings, "WORKER_GREETING_CACHE (a directory, or off)")


def _check_writable(directory: Path, variable: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(
            f"{variable}: {directory} cannot be written ({type(exc).__name__}: {exc})"
        ) from None


def create_server(worker: VoiceWorker) -> VoiceAgentServer:
    """The configured server with `worker`'s session registered (not running yet)."""
    settings = worker.settings
    longest_call = max((agent.limits.max_duration for agent in worker.registry), default=0)
    server = VoiceAgentServer(
        setup_fnc=worker.prewarm,
        # the plugins themselves are preloaded once imported (see providers.import_plugins)
        preload_modules=["worker.server"],
        load_fnc=worker.load,
        load_threshold=1.0,  # `load` is 1.0 exactly at the call limit, in dev too
        num_idle_processes=ServerEnvOption(dev_default=1, prod_default=settings.idle_processes),
        initialize_process_timeout=settings.initialize_timeout,
        # a stopping call may speak its goodbye (GOODBYE_TIMEOUT) before its process is killed
        shutdown_process_timeout=GOODBYE_TIMEOUT + 5,
        drain_timeout=settings.resolved_drain_timeout(longest_call),
        port=ServerEnvOption(dev_default=0, prod_default=settings.health_port),
        prometheus_port=settings.prometheus_port,
        job_memory_warn_mb=600,
    )
    server.rtc_session(
        worker.entrypoint, agent_name=settings.agent_name, on_request=worker.on_request
    )
    server.max_calls = settings.max_calls
    server.crash_guard = CrashGuard(on_dead_call=functools.partial(record_dead_call, worker))
    server.webhooks = webhook_sender(worker)
    check_recordings(worker)
    check_greetings(worker)
    worker.calls_dir = server.crash_guard.directory
    # LiveKit sets up the main process's log handlers when it starts: guard them then
    server.on("worker_started", install_redaction)
    server.on("worker_started", server.watch_job_processes)
    server.on("worker_started", server.start_webhooks)
    return server
