"""Dispatch, routing in the job, load, and the shutdown signal, in process."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import JobContext, JobExecutorType, JobProcess, JobRequest
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.agents.utils import http_context
from livekit.plugins import silero
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from tests.harness import make_agent
from worker.config import AgentRegistry, load_registry
from worker.logs import SecretRedactor
from worker.server import (
    SHUTDOWN_SIGNAL,
    VoiceWorker,
    create_server,
    listen_for_shutdown,
    notify_jobs_of_shutdown,
)
from worker.settings import SettingsError, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


@pytest.fixture
def worker() -> VoiceWorker:
    return VoiceWorker(WorkerSettings(max_calls=4, cpu_limit=None), load_registry(PROMPTS))


def job(room: str) -> agent_proto.Job:
    return agent_proto.Job(id="AJ_test", room=models.Room(name=room, sid="RM_test"))


class Answer:
    def __init__(self) -> None:
        self.accepted: JobAcceptArguments | None = None
        self.rejected = False

    async def reject(self, terminate: bool) -> None:
        self.rejected = True

    async def accept(self, args: JobAcceptArguments) -> None:
        self.accepted = args


async def request(worker: VoiceWorker, room: str) -> Answer:
    answer = Answer()
    req = JobRequest(job=job(room), on_reject=answer.reject, on_accept=answer.accept)
    await worker.on_request(req)
    return answer


async def test_routable_rooms_are_accepted_as_their_agent(worker: VoiceWorker) -> None:
    answer = await request(worker, "agent_5b710eca_user_123_1705312800000")
    assert answer.accepted is not None
    assert answer.accepted.name == "Ava (Acme support)"
    assert answer.accepted.attributes == {"voice_agent.id": "5b710eca-ee67-4c3a-aeb6-8b541f451b40"}


@pytest.mark.parametrize(
    ("room", "why"),
    [
        ("support-room-1", "does not start with 'agent_'"),
        ("agent_5b710eca_1705312800000", "is not agent_"),
        ("agent_deadbeef_user_1705312800000", "no configured agent matches 'deadbeef'"),
    ],
)
async def test_other_rooms_are_rejected_with_one_log_line(
    worker: VoiceWorker, room: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await request(worker, room)
    assert answer.rejected
    assert answer.accepted is None
    lines = [r.getMessage() for r in caplog.records if r.name == "worker"]
    assert len(lines) == 1
    assert f"rejecting job AJ_test for room '{room}'" in lines[0]
    assert why in lines[0]


def job_context(room: str, on_shutdown: Any) -> JobContext:
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(identity="agent", name="", metadata=""),
        job=job(room),
        url="",
        token="",
        worker_id="test",
        fake_job=True,
    )
    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    return JobContext(
        proc=proc,
        info=info,
        room=rtc.Room(),
        on_connect=lambda: None,
        on_shutdown=on_shutdown,
        inference_executor=None,  # type: ignore[arg-type]
    )


async def test_the_entrypoint_ends_unroutable_jobs_before_any_session(worker: VoiceWorker) -> None:
    reasons: list[str] = []
    ctx = job_context("console-room", reasons.append)  # what `connect`/`console` jobs look like
    await worker.entrypoint(ctx)
    assert len(reasons) == 1
    assert reasons[0].startswith("unroutable room: room name 'console-room'")
    assert not ctx.room.isconnected()


def test_a_pinned_agent_routes_rooms_without_a_routable_name(worker: VoiceWorker) -> None:
    pinned = VoiceWorker(worker.settings, worker.registry, pinned_agent="hotel-concierge")
    agent, room = pinned.route("console-room")
    assert agent.id == "hotel-concierge"
    assert room is None
    agent, room = pinned.route("agent_5b710eca_user_1")
    assert agent.id == "hotel-concierge", "--agent wins over the room name"
    assert room is not None
    assert room.user_id == "user"


class FakeServer:
    def __init__(self, jobs: int) -> None:
        self.active_jobs = [object()] * jobs


def test_load_is_full_at_the_call_limit(worker: VoiceWorker) -> None:
    assert worker.load(FakeServer(0)) == 0.0  # type: ignore[arg-type]
    assert worker.load(FakeServer(2)) == 0.5  # type: ignore[arg-type]
    assert worker.load(FakeServer(4)) == 1.0  # type: ignore[arg-type]


async def test_the_job_side_shutdown_handler_hears_the_signal() -> None:
    event = listen_for_shutdown()
    try:
        assert not event.is_set()
        os.kill(os.getpid(), SHUTDOWN_SIGNAL)
        await asyncio.wait_for(event.wait(), 2)
    finally:
        asyncio.get_running_loop().remove_signal_handler(SHUTDOWN_SIGNAL)


class FakeProc:
    def __init__(self, pid: int | None, running: bool) -> None:
        self.pid = pid
        self.running_job = object() if running else None


class FakePool:
    def __init__(self, processes: list[FakeProc]) -> None:
        self.processes = processes


async def test_draining_signals_every_running_job_process() -> None:
    event = listen_for_shutdown()
    server: Any = type("S", (), {})()
    server._proc_pool = FakePool(
        [FakeProc(os.getpid(), running=True), FakeProc(None, True), FakeProc(12345678, False)]
    )
    try:
        assert notify_jobs_of_shutdown(server) == 1
        await asyncio.wait_for(event.wait(), 2)
    finally:
        asyncio.get_running_loop().remove_signal_handler(SHUTDOWN_SIGNAL)


def test_the_server_is_configured_from_settings_and_agents(worker: VoiceWorker) -> None:
    server = create_server(worker)
    assert server._agent_name == "voice-agent"
    assert server._load_threshold == 1.0
    assert server._drain_timeout == 1200 + 60  # the longest example agent, plus the margin
    assert server._setup_fnc == worker.prewarm
    assert server._preload_modules == ["worker.server"]


def test_dispatches_accepted_at_once_count_a_call_each_whatever_the_idle_pool(
    worker: VoiceWorker,
) -> None:
    """An idle worker with one warm process takes a burst up to its call limit (LiveKit's own
    estimate, threshold / idle processes a pending call, declined the second of two)."""
    pooled = VoiceWorker(replace(worker.settings, idle_processes=1), worker.registry)
    server = create_server(pooled)
    assert server.max_calls == 4
    # set when LiveKit runs: `start`, at rest, nothing reserved
    server._devmode, server._worker_load, server._reserved_slots = False, 0.0, 0
    answers = []
    for _ in range(5):  # availability requests arriving before any job runs
        answers.append(server._is_available())
        server._reserved_slots += 1
    assert answers == [True, True, True, True, False]


def test_prewarm_loads_the_vad_and_the_tls_context_once_per_process_and_guards_logs(
    worker: VoiceWorker,
) -> None:
    http_context._ssl_context_for.cache_clear()
    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        worker.prewarm(proc)
    finally:
        root.removeHandler(handler)
    local = proc.userdata["local"]
    assert isinstance(local.vad, silero.VAD)
    assert local.vad.min_silence_duration == worker.settings.vad.min_silence
    assert local.whispers == {}, "cloud-only agents load no local model"
    assert local.voices == {}
    assert any(isinstance(f, SecretRedactor) for f in handler.filters)
    # the TLS context of every job's HTTP session is built: not on the call's loop at the greeting
    assert http_context._ssl_context_for.cache_info().currsize >= 1


def test_a_drain_timeout_shorter_than_a_call_is_refused() -> None:
    registry = AgentRegistry([make_agent()])
    with pytest.raises(SettingsError, match="must be at least 1860s"):
        create_server(VoiceWorker(WorkerSettings(drain_timeout=100), registry))


def test_prewarm_imports_the_mcp_client_only_for_agents_with_mcp_servers() -> None:
    """A call's first MCP connect would otherwise import it on the call's loop (0.7 s)."""
    script = """
import sys
from livekit.agents import JobExecutorType, JobProcess
from tests.harness import make_agent
from worker.config import AgentRegistry
from worker.server import VoiceWorker
from worker.settings import WorkerSettings
mcp = {"kind": "mcp", "url": "http://127.0.0.1:9/mcp", "allow": ["lookup"]}
tools = [mcp] if sys.argv[1] == "mcp" else None
agent = make_agent(**({"tools": tools} if tools else {}))
proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
VoiceWorker(WorkerSettings(), AgentRegistry([agent])).prewarm(proc)
print("livekit.agents.llm.mcp" in sys.modules)
"""
    for kind, imported in (("mcp", "True"), ("none", "False")):
        result = subprocess.run(
            [sys.executable, "-c", script, kind],
            capture_output=True, text=True, check=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert result.stdout.strip().splitlines()[-1] == imported, result.stderr[-2000:]
