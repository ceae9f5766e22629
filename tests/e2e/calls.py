"""Whole calls over LiveKit: the worker as a `python -m worker start` subprocess, its providers
local stand-ins, and a caller on the official `livekit` SDK in the test process.

`stand_ins` serves the recording's clips (`ClipMatcher`), a `Script` and `HumVoice`;
`voice_worker` runs the worker against them (or its local models) until it has registered with
the test server; `call` creates and dispatches a room and puts a `Caller` in it, who talks into
it in real time and records what comes back: the agent's audio level over time and the JSON
events on the worker's topic, each with the time it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pytest
from livekit import api, rtc

from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording
from tests.lkserver.workers import RegisteredWorker
from tests.polling import until
from tests.standins.deepgram import ClipMatcher, DeepgramStandIn
from tests.standins.elevenlabs import ElevenLabsStandIn, HumVoice
from tests.standins.openai import OpenAIStandIn, Responder, Script
from worker.protocol import TOPIC
from worker.settings import DEFAULT_AGENT_NAME

ROOT = Path(__file__).resolve().parents[2]
SUPPORT_PROMPT = ROOT / "prompts" / "support.md"
SUPPORT_PREFIX = "5b710eca"
GREETING = "Hi there, this is Ava from Acme support. How can I help you today?"
KEYS = {"DEEPGRAM_API_KEY": "dg-e2e", "OPENAI_API_KEY": "sk-e2e", "ELEVEN_API_KEY": "el-e2e"}

REGISTER_S = 60
"""Importing livekit-agents and the plugins, then forking a warm process, on a busy machine."""
JOIN_S = 30
TURN_S = 20
"""For one turn of a call: the caller's words heard, the agent's answer spoken."""
STOP_S = 15
RATE = 16000
FRAME = RATE // 100
"""10 ms: the resolution of the agent's audio levels."""
CHUNK_MS = 50
"""What the caller hands the SDK and takes from it at once: fewer wake-ups of the test's event
loop, which the test server's WebRTC shares (a late loop overflows its jitter buffers)."""
SPEECH_RMS = 300.0
"""The int16 RMS of a 10 ms frame of the agent's audio that counts as speech (HumVoice: ~3000)."""

Samples = npt.NDArray[np.int16]
Event = dict[str, Any]


@dataclass
class StandIns:
    stt: DeepgramStandIn
    llm: OpenAIStandIn
    tts: ElevenLabsStandIn

    def env(self) -> dict[str, str]:
        """What points the worker's plugins at these stand-ins."""
        return {
            **KEYS,
            "DEEPGRAM_BASE_URL": self.stt.url,
            "OPENAI_BASE_URL": self.llm.url,
            "ELEVENLABS_BASE_URL": self.tts.url,
        }


def script(replies: Sequence[tuple[str, str]]) -> Script:
    """Replies by regex on the caller's last words; "I see." to anything else."""
    return Script([(match, [say]) for match, say in replies], ["I see."])


@asynccontextmanager
async def stand_ins(
    recording: Recording, llm: Responder, min_score: float = 0.5
) -> AsyncIterator[StandIns]:
    """Deepgram knowing the recording's clips (`min_score`: how closely a segment must match
    one), the LLM answering with `llm`, a humming TTS."""
    clips = recording.spoken_clips()
    # the clips reach the stand-in through Opus twice (caller -> server -> worker), and through
    # aiortc's jitter buffer on a loaded machine (a CI run heard a clean question at 0.70-0.74):
    # a much looser match than the default. The best clip still wins: these recordings' long
    # clips score at most 0.58 against each other, so the bar only turns away what is no clip
    matcher = ClipMatcher(clips, min_score=min_score)
    stt = DeepgramStandIn(api_key=KEYS["DEEPGRAM_API_KEY"], transcriber=matcher)
    llm_service = OpenAIStandIn(api_key=KEYS["OPENAI_API_KEY"], responder=llm)
    tts = ElevenLabsStandIn(api_key=KEYS["ELEVEN_API_KEY"], voice=HumVoice())
    async with stt, llm_service, tts:
        yield StandIns(stt, llm_service, tts)
    print(f"--- STT results (final, text) ---\n{stt.results}")
    needed = matcher.min_score
    print(f"--- segments (seconds, best score; {needed} needed) ---\n{matcher.heard}")


@dataclass
class WorkerProcess:
    """A registered `python -m worker start` subprocess."""

    registered: RegisteredWorker
    """The test server's record of it: status, jobs."""
    process: asyncio.subprocess.Process
    log_path: Path
    """Its stdout and stderr: JSON log lines."""

    @property
    def id(self) -> str:
        return self.registered.id

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def voice_worker(
    lk: LiveKitFixture,
    log_dir: Path,
    env: Mapping[str, str | None],
    prompts: Sequence[Path] = (SUPPORT_PROMPT,),
    module: str = "worker",
) -> AsyncIterator[WorkerProcess]:
    """`python -m worker start` serving `prompts`, once it has registered; stopped (its process
    group too) and its log printed afterwards, which pytest shows for a failed test. `env` adds
    to the test's environment (None unsets): `StandIns.env()`, settings. `module`: what runs
    instead of `worker` (the same CLI, instrumented: `tests.load.probed_worker`)."""
    prompts_dir = log_dir / "prompts"
    prompts_dir.mkdir(parents=True, exist_ok=True)
    for prompt in prompts:
        shutil.copy(prompt, prompts_dir)
    environment = {
        **os.environ,
        "LIVEKIT_URL": lk.url,
        "LIVEKIT_API_KEY": lk.api_key,
        "LIVEKIT_API_SECRET": lk.api_secret,
        "WORKER_PROMPTS_DIR": str(prompts_dir),
        "WORKER_IDLE_PROCESSES": "1",
        "WORKER_CPU_LIMIT": "off",  # a busy test machine must not make it decline calls
        "WORKER_HEALTH_PORT": "0",
        "WORKER_DATA_DIR": str(log_dir / "data"),  # the outbox and the greetings: this test's
    }
    environment.pop("LIVEKIT_AGENT_NAME", None)
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    known = set(lk.workers.workers)
    log_path = log_dir / "worker.log"
    async with worker_command(["start"], environment, log_path, module) as process:
        registered = await _registered(lk, process, known)
        yield WorkerProcess(registered, process, log_path)


@asynccontextmanager
async def worker_command(
    args: Sequence[str], env: Mapping[str, str], log_path: Path, module: str = "worker"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m MODULE ARGS` in its own process group, output to `log_path`; stopped at the
    end (`stop_process`) and its log printed, which pytest shows for a failed test."""
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                *args,
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its child processes go with it at the end
            )
            try:
                yield process
            finally:
                await stop_process(process, log)
    finally:
        print(f"--- {log_path.name} ({log_path}) ---\n{_text(log_path)}")


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _registered(
    lk: LiveKitFixture, process: asyncio.subprocess.Process, known: set[str]
) -> RegisteredWorker:
    def new_worker() -> RegisteredWorker | None:
        return next((w for w in lk.workers.workers.values() if w.id not in known), None)

    def registered_or_exited() -> bool:
        return new_worker() is not None or process.returncode is not None

    await until(registered_or_exited, REGISTER_S, "the worker to register")
    if (worker := new_worker()) is None:
        pytest.fail(f"the worker exited with code {process.returncode} before registering")
    return worker


async def stop_process(process: asyncio.subprocess.Process, log: IO[bytes]) -> None:
    """SIGTERM first (a worker drains); its process group is killed if it lingers."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_S)
        except TimeoutError:
            log.write(b"\n[test] the worker did not stop on SIGTERM: killing its group\n")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def room_name(user_id: str = "user1", agent: str = SUPPORT_PREFIX) -> str:
    return f"agent_{agent}_{user_id}_{int(time.time() * 1000)}"


async def dispatch(lk: LiveKitFixture, room: str) -> None:
    """Create the room and dispatch the worker's agent into it, as the app's backend does."""
    lkapi = lk.api()
    await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=DEFAULT_AGENT_NAME, room=room)
    )


class Caller:
    """A caller's app in a dispatched room: joins with `token`, keeps a microphone track going
    (silence between clips) and records the agent's audio and events."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.room = rtc.Room()
        self.events: list[Event] = []
        self.arrivals: list[float] = []
        """When each of `events` arrived (monotonic time)."""
        self.agent_left_at: float | None = None
        self.removed = asyncio.Event()
        """The server took the caller out of the room (a transfer does)."""
        self.keys: list[str] = []
        """DTMF digits the agent pressed, in order."""
        self._streams: list[_Playout] = []
        self._source = rtc.AudioSource(RATE, 1)
        self._pending: list[Samples] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.room.on("data_received", self._on_data)
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("sip_dtmf_received", lambda dtmf: self.keys.append(dtmf.digit))
        self.room.on("disconnected", lambda _: self.removed.set())

    async def join(self) -> None:
        async with asyncio.timeout(JOIN_S):
            await self.room.connect(self.url, self.token)
            track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await self.room.local_participant.publish_track(track, options)
        self._spawn(self._microphone())

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_S):
                await self.room.disconnect()
        await self._source.aclose()

    def play(self, clip: Samples) -> None:
        """Queue `clip` on the microphone, after what is still playing."""
        self._pending.append(clip)

    async def send(self, message: Event) -> None:
        await self.room.local_participant.publish_data(
            json.dumps(message).encode(), reliable=True, topic=TOPIC
        )

    async def say_after_greeting(self, clip: Samples) -> float:
        """Wait for the agent's greeting to end, then say `clip`; returns when it started."""
        await self.event(TURN_S, type="transcript", role="agent", final=True)
        self.play(clip)
        return time.monotonic()

    async def hang_up(self, timeout: float = TURN_S) -> Event:
        """`end_call`, as the app's hang-up button sends it: the call must end `client_ended`."""
        await self.send({"type": "end_call"})
        ended = await self.event(timeout, type="call_ended")
        assert ended["reason"] == "client_ended", ended
        return ended

    def agent(self) -> rtc.RemoteParticipant | None:
        return next((p for p in self.room.remote_participants.values() if _is_agent(p)), None)

    def spoke_since(self, since: float, seconds: float = 0.3) -> bool:
        """Whether the agent's audio was at speech level for `seconds` in all after `since`."""
        return self.speech_between(since, math.inf) >= seconds

    @property
    def levels(self) -> list[tuple[float, float]]:
        """(monotonic time, RMS) of each 10 ms frame of the agent's audio, on its playout clock."""
        return [level for stream in self._streams for level in stream.levels()]

    def speech_between(self, start: float, end: float) -> float:
        """Seconds of the agent's audio at speech level between two monotonic times."""
        return sum(1 for at, level in self.levels if start <= at < end and level > SPEECH_RMS) / 100

    def left_at(self) -> float:
        """When the agent left the room (it must have)."""
        assert self.agent_left_at is not None, "the agent has not left"
        return self.agent_left_at

    def arrival(self, event: Event) -> float:
        """When `event` (one of `events`) arrived."""
        return self.arrivals[next(i for i, e in enumerate(self.events) if e is event)]

    def find(self, **fields: Any) -> list[Event]:
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    async def event(self, timeout: float, **fields: Any) -> Event:
        """The first event with these field values, waiting for it up to `timeout`."""
        found: list[Event] = await until(lambda: self.find(**fields), timeout, f"event {fields}")
        return found[0]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

    async def _microphone(self) -> None:
        """`CHUNK_MS` frames paced by the clock: the queued clips, silence in between."""
        loop = asyncio.get_running_loop()
        size = RATE * CHUNK_MS // 1000
        start, sent = loop.time(), 0
        buffer = np.zeros(0, dtype=np.int16)
        while True:
            if buffer.size < size and self._pending:
                buffer = np.concatenate([buffer, self._pending.pop(0)])
            frame = np.zeros(size, dtype=np.int16)
            chunk, buffer = buffer[:size], buffer[size:]
            frame[: chunk.size] = chunk
            await self._source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, size))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * CHUNK_MS / 1000 - loop.time()))

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            self.events.append(json.loads(packet.data))
            self.arrivals.append(time.monotonic())

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if _is_agent(participant):
            self.agent_left_at = time.monotonic()

    def _on_track(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(self._listen(track))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=CHUNK_MS)
        playout = _Playout()
        self._streams.append(playout)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                frames = pcm[: pcm.size // FRAME * FRAME].reshape(-1, FRAME)
                playout.add(time.monotonic(), np.sqrt(np.mean(frames**2, axis=1)))
        finally:
            await stream.aclose()


class _Playout:
    """One received track's 10 ms levels, timed by the stream's own clock.

    The stream yields a frame every 10 ms of audio, silence included, so frame `k` plays at
    `anchor + k / 100`, where the anchor is the earliest any frame could have been played. Frames
    the caller's event loop read late, in a burst after a stall of this loaded machine, keep the
    time they were played at instead of the time they were read.
    """

    def __init__(self) -> None:
        self._rms: list[float] = []
        self._anchor = math.inf

    def add(self, read_at: float, rms: npt.NDArray[np.float64]) -> None:
        """A chunk of frames whose last one was read at `read_at`."""
        self._rms.extend(float(level) for level in rms)
        self._anchor = min(self._anchor, read_at - (len(self._rms) - 1) / 100)

    def levels(self) -> list[tuple[float, float]]:
        return [(self._anchor + k / 100, level) for k, level in enumerate(self._rms)]


def _is_agent(participant: rtc.RemoteParticipant) -> bool:
    return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@asynccontextmanager
async def call(
    lk: LiveKitFixture,
    room: str | None = None,
    identity: str = "user1",
    kind: api.AccessToken.ParticipantKind = "standard",
) -> AsyncIterator[Caller]:
    """A dispatched room with the caller in it (`kind: sip`: a phone caller, as LiveKit's SIP
    service joins them); the caller leaves at the end."""
    room = room or room_name(identity)
    await dispatch(lk, room)
    caller = Caller(lk.url, lk.token(identity, room, kind=kind, can_publish_data=True))
    try:
        await caller.join()
        yield caller
    finally:
        await caller.leave()
