"""`python -m worker simulate`: one whole call from a recording, through the worker's own call.

The caller's WAV (any rate, mono or stereo) is played into the session in real time, then
silence; the agent's audio is written on the caller's timeline (silence where the agent is
silent); the client events are printed as JSON lines, exactly what an app in the room would get.
The call ends with `input_ended` once the recording is over and the agent has answered, or at
`--max-seconds` (a `max_duration` ending).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from livekit.agents.utils import http_context

from worker.audio_files import Audio
from worker.call.lifecycle import Caller, CallResult, CallSetup, run_call
from worker.config import AgentConfig
from worker.local.runtime import LocalRuntime
from worker.protocol import new_call_id
from worker.providers import build_providers
from worker.settings import RecordingSettings
from worker.transports.local import CallClock, LocalTransport, PacedAudioInput, VirtualSpeaker

AGENT_RATE = 24000


@dataclass
class Simulated:
    result: CallResult | None
    agent_audio: np.ndarray
    """int16 mono at `AGENT_RATE`, index 0 = the start of the recording."""


async def simulate_call(
    agent: AgentConfig,
    recording: Audio,
    *,
    runtime: LocalRuntime,
    env: dict[str, str],
    on_event: Callable[[bytes], None],
    metadata: str = "",
    max_seconds: int = 120,
    recording_dir: Path | None = None,
) -> Simulated:
    """Run the call; the agent's audio covers at least the recording. `recording_dir`: record
    the call there as a deployment would (`<call_id>.ogg`)."""
    limits = agent.limits.model_copy(
        update={"max_duration": min(agent.limits.max_duration, max_seconds)}
    )
    agent = agent.model_copy(update={"limits": limits})
    clock = CallClock()
    audio_in = PacedAudioInput(clock, sample_rate=recording.rate)
    speaker = VirtualSpeaker(clock, sample_rate=AGENT_RATE)
    transport = LocalTransport(
        audio_in=audio_in, speaker=speaker, on_event=on_event, caller=Caller(identity="caller")
    )

    def recording_over(_: object) -> None:
        if transport.listener is not None:
            transport.listener.input_ended()

    audio_in.play(recording.samples).add_done_callback(recording_over)
    setup = CallSetup(
        agent=agent,
        call_id=new_call_id(),
        vad=runtime.vad,
        providers=build_providers(agent, env, runtime),
        metadata=metadata,
        turn_runner=runtime.turn_runner,
        env=env,
        recording=None if recording_dir is None else RecordingSettings(directory=recording_dir),
    )
    async with http_context.open():  # the cloud plugins' HTTP session, as a job would have
        result = await run_call(setup, transport)
    audio = speaker.timeline
    minimum = int(recording.duration * AGENT_RATE)
    if len(audio) < minimum:
        audio = np.concatenate([audio, np.zeros(minimum - len(audio), dtype=np.int16)])
    return Simulated(result, audio)


@contextlib.contextmanager
def events_only_stdout() -> Iterator[IO[str]]:
    """Yield a stream to the real stdout and send everything else written to fd 1 (C libraries
    included) to stderr, so stdout carries only the events."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    events = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    try:
        yield events
    finally:
        events.flush()
        events.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
