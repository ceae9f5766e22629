"""Call setup around the session: a caller who never comes, the room transport's choices."""

from __future__ import annotations

from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentSession, JobContext, JobExecutorType, JobProcess
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from tests.fakes import FakeLLM, FakeSTT, FakeTTS
from tests.harness import make_agent
from worker.call.agent import VoiceAgent
from worker.call.lifecycle import Caller, CallSetup, CallTransport, run_call
from worker.call.pipeline import load_vad
from worker.protocol import EndReason
from worker.providers import Providers
from worker.settings import VADSettings
from worker.transports.room import MAX_BITRATE, RoomTransport, agent_track_options


class NobodyComes(CallTransport):
    def __init__(self) -> None:
        super().__init__()
        self.waited: float | None = None
        self.closed_with: list[EndReason | None] = []

    async def wait_for_caller(self, timeout: float) -> Caller | None:
        self.waited = timeout
        return None

    async def start(self, session: AgentSession[Any], agent: VoiceAgent, caller: Caller) -> None:
        raise AssertionError("no session may start without a caller")

    async def send(self, packet: bytes) -> None:
        raise AssertionError("no event may be sent without a caller")

    async def close(self, reason: EndReason | None) -> None:
        self.closed_with.append(reason)


async def test_no_caller_within_the_join_timeout_ends_the_job_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = NobodyComes()
    setup = CallSetup(
        agent=make_agent(limits={"join_timeout": 7}),
        call_id="CA_nobody",
        vad=load_vad(VADSettings()),
        providers=Providers(FakeSTT([]), FakeLLM(), FakeTTS(), SessionConnectOptions()),
    )
    assert await run_call(setup, transport) is None
    assert transport.waited == 7
    assert transport.closed_with == [None]
    assert "no caller joined within 7s, ending without a call" in caplog.text


def fake_job_context() -> JobContext:
    """What `console` runs: a fake job in a mock room."""
    from livekit.agents.ipc.mock_room import create_mock_room

    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(identity="console", name="", metadata=""),
        job=agent_proto.Job(id="mock-job", room=models.Room(name="console-room")),
        url="",
        token="",
        worker_id="test",
        fake_job=True,
    )
    return JobContext(
        proc=JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None),
        info=info,
        room=create_mock_room(),
        on_connect=lambda: None,
        on_shutdown=lambda _reason: None,
        inference_executor=None,  # type: ignore[arg-type]
    )


async def test_in_console_the_terminal_is_the_caller() -> None:
    transport = RoomTransport(fake_job_context(), user_id=None)
    assert await transport.wait_for_caller(0.1) == Caller(identity="console")


def test_the_agent_voice_is_published_as_documented() -> None:
    options = agent_track_options()
    assert options.source == rtc.TrackSource.SOURCE_MICROPHONE
    assert options.dtx is True
    assert options.red is True
    assert options.audio_encoding.max_bitrate == MAX_BITRATE == 32_000
