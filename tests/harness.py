"""A call harness: the worker's own `run_call` over the in-process transport, with fake
providers, fixture audio paced in real time, the agent's audio on a timeline and every client
event decoded for assertions."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import av
import jiwer
import jsonschema
import numpy as np
import yaml
from livekit.agents import APIConnectOptions, llm, vad
from livekit.agents.utils import http_context
from livekit.agents.voice.agent_session import SessionConnectOptions

import worker
from tests.fakes import FakeLLM, FakeSTT, FakeTTS, rms
from worker.call.greetings import GreetingCache
from worker.call.lifecycle import CallResult, CallSetup, run_call
from worker.config import AgentConfig
from worker.local.runtime import load_turn_model
from worker.providers import Providers
from worker.records.report import RecordTarget
from worker.settings import RecordingSettings
from worker.tools.calls import prompt_tools
from worker.transports.local import CallClock, LocalTransport, PacedAudioInput, VirtualSpeaker
from worker.turns.detector import ModelRunner

FIXTURES = Path(__file__).resolve().parent / "fixtures"
Event = dict[str, Any]


@dataclass(frozen=True)
class Recording:
    """A fixture recording and its manifest (see tests/fixtures/make_fixtures.py)."""

    samples: np.ndarray
    rate: int
    utterances: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, name: str) -> Recording:
        manifest = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))
        with wave.open(str(FIXTURES / manifest["file"])) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            rate = w.getframerate()
        return cls(samples, rate, {u["id"]: u for u in manifest["utterances"]})

    def clip(self, utterance_id: str) -> np.ndarray:
        u = self.utterances[utterance_id]
        return self.samples[int(u["start"] * self.rate) : int(u["end"] * self.rate)]

    def text(self, utterance_id: str) -> str:
        return str(self.utterances[utterance_id]["text"])

    def spoken_clips(self) -> list[tuple[np.ndarray, str]]:
        """Each stretch of speech with its words: an utterance, or each part of a hesitant one
        (what a transcriber hears as separate pieces)."""
        clips = []
        for utterance in self.utterances.values():
            for piece in utterance.get("parts") or [utterance]:
                start, end = int(piece["start"] * self.rate), int(piece["end"] * self.rate)
                clips.append((self.samples[start:end], str(piece["text"])))
        return clips


async def end_call_tools() -> list[llm.Tool]:
    """The tools of an agent without `tools:` in its file (`end_call`), as its LLM gets them."""
    return await prompt_tools(make_agent())


def make_agent(**overrides: Any) -> AgentConfig:
    """A valid agent config for tests; nested dicts in `overrides` merge into the defaults."""
    return AgentConfig.model_validate(agent_fields(**overrides))


def agent_fields(**overrides: Any) -> dict[str, Any]:
    """The fields of `make_agent`'s agent, as an agent file's front matter and body hold them."""
    data: dict[str, Any] = {
        "id": "test-agent",
        "name": "Test agent",
        "greeting": "Hello, this is the test agent.",
        "instructions": "You are a test agent.",
        "stt": [{"provider": "deepgram"}],
        "llm": [{"provider": "openai"}],
        "tts": [{"provider": "elevenlabs"}],
        "turn_taking": {"aec_warmup": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@functools.cache
def shared_turn_runner() -> ModelRunner:
    """The end-of-turn model, loaded once per test process as a worker loads it once per job
    process (`python -m worker setup` installs it)."""
    runner = load_turn_model(warm=True)
    assert runner is not None, "the Smart Turn model is not installed: python -m worker setup"
    return runner


def read_ogg(path: Path) -> tuple[np.ndarray, int]:
    """A recording's channels as int16 rows (caller, agent), and its rate."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    planar = np.concatenate(frames, axis=1)  # fltp: one row per channel
    return (np.clip(planar, -1.0, 1.0) * 32767).astype(np.int16), rate


class CallHarness:
    """One call through `run_call`; use as `async with CallHarness(...) as call:`. An agent with
    `smart_turn` detection gets the shared end-of-turn model unless `turn_runner` is given."""

    def __init__(
        self,
        agent: AgentConfig,
        *,
        vad_model: vad.VAD,
        providers: Providers,
        metadata: str = "",
        shutdown: asyncio.Event | None = None,
        turn_runner: ModelRunner | None = None,
        env: Mapping[str, str] | None = None,
        records: RecordTarget | None = None,
        recording: RecordingSettings | None = None,
        greetings: GreetingCache | None = None,
    ) -> None:
        """`env`: where the agent's tools find their `${VAR}` secrets (default: none);
        `records`: where the call's record goes (default: kept in memory only); `greetings`:
        the greeting cache (default: none, every call renders its greeting)."""
        self.agent = agent
        self.clock = CallClock()
        self.audio_in = PacedAudioInput(self.clock)
        self.speaker = VirtualSpeaker(self.clock)
        self.events: list[Event] = []
        self.event_times: list[float] = []
        """Call time at which each event arrived."""
        self._new_event = asyncio.Event()
        self.transport = LocalTransport(
            audio_in=self.audio_in, speaker=self.speaker, on_event=self._on_event
        )
        self.setup = CallSetup(
            agent=agent,
            call_id="CA_test",
            vad=vad_model,
            providers=providers,
            metadata=metadata,
            shutdown=shutdown,
            turn_runner=turn_runner
            or (shared_turn_runner() if agent.turn_taking.detection == "smart_turn" else None),
            env=env or {},
            room="agent_test_user1_1",
            user_id="user1",
            records=records,
            recording=recording,
            greetings=greetings,
        )
        self._wall_offset = time.time() - time.monotonic()
        self._task: asyncio.Task[CallResult | None] | None = None

    async def __aenter__(self) -> Self:
        # the cloud plugins' HTTP session, as a job has it (the call task inherits the context)
        self._http = http_context.open()
        await self._http.__aenter__()
        self._task = asyncio.create_task(run_call(self.setup, self.transport))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if not self._task.done():
            self.transport.hang_up("test finished")
            done, _ = await asyncio.wait({self._task}, timeout=10)
            if not done:
                self._task.cancel()
        await self._http.__aexit__(None, None, None)

    def _on_event(self, packet: bytes) -> None:
        self.events.append(json.loads(packet))
        self.event_times.append(self.clock.now())
        self._new_event.set()

    # --- what the caller does -------------------------------------------------------------------

    def play(self, samples: np.ndarray) -> asyncio.Future[float]:
        return self.audio_in.play(samples)

    # --- what the caller gets -------------------------------------------------------------------

    async def wait_event(
        self, match: Callable[[Event], bool], *, timeout: float = 10.0, after: int = 0
    ) -> Event:
        """The first event at index >= `after` matching `match`, waiting for it if needed."""
        async with asyncio.timeout(timeout):
            index = after
            while True:
                while index < len(self.events):
                    if match(self.events[index]):
                        return self.events[index]
                    index += 1
                self._new_event.clear()
                await self._new_event.wait()

    async def wait_nth(
        self, match: Callable[[Event], bool], nth: int, *, timeout: float = 10.0
    ) -> int:
        """The index of the `nth` event (1-based) matching `match`, waiting for it if needed."""
        index = -1
        for _ in range(nth):
            event = await self.wait_event(match, timeout=timeout, after=index + 1)
            index = self.events.index(event, index + 1)
        return index

    def of_type(self, type_: str, **fields: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e["type"] == type_ and all(e.get(k) == v for k, v in fields.items())
        ]

    async def result(self, timeout: float = 15.0) -> CallResult | None:
        assert self._task is not None
        return await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def agent_rms(self, start: float, end: float) -> float:
        """Loudness of the agent's audio between two call times (seconds)."""
        rate = self.speaker.sample_rate or 24000
        return rms(self.speaker.timeline[int(start * rate) : int(end * rate)])

    def now(self) -> float:
        return self.clock.now()

    def wall_time(self, call_time: float) -> float:
        """A call-clock time as epoch seconds (the recording's timeline is the wall clock)."""
        return self.clock.start + call_time + self._wall_offset


class FakeCallHarness(CallHarness):
    """A call with fake providers of explicit latency, which tests can inspect and steer."""

    def __init__(
        self,
        agent: AgentConfig,
        *,
        vad_model: vad.VAD,
        stt: FakeSTT,
        llm: FakeLLM,
        tts: FakeTTS,
        metadata: str = "",
        shutdown: asyncio.Event | None = None,
        turn_runner: ModelRunner | None = None,
        greetings: GreetingCache | None = None,
    ) -> None:
        self.stt, self.llm, self.tts = stt, llm, tts
        quick = APIConnectOptions(max_retry=0, timeout=5)
        providers = Providers(
            stt=stt,
            llm=llm,
            tts=tts,
            conn_options=SessionConnectOptions(
                stt_conn_options=quick, llm_conn_options=quick, tts_conn_options=quick
            ),
        )
        super().__init__(
            agent,
            vad_model=vad_model,
            providers=providers,
            metadata=metadata,
            shutdown=shutdown,
            turn_runner=turn_runner,
            greetings=greetings,
        )

    async def say(self, recording: Recording, uid: str) -> list[tuple[float, float]]:
        """Say an utterance, part by part with its pauses, the fake STT finalising each part
        (its `latency` after the part ends); returns when each part started and ended."""
        utterance = recording.utterances[uid]
        parts = utterance.get("parts") or [utterance]
        spans = []
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(float(utterance["pause"]))
            start, end = int(part["start"] * recording.rate), int(part["end"] * recording.rate)
            started = self.now()
            ended = await self.play(recording.samples[start:end])
            self.stt.transcribe_later(str(part["text"]))
            spans.append((started, ended))
        return spans


def is_type(type_: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda e: e["type"] == type_ and all(e.get(k) == v for k, v in fields.items())


SCHEMA = json.loads((Path(worker.__file__).parent / "protocol.schema.json").read_text("utf-8"))


def check_call_events(events: list[Event]) -> None:
    """What every call's event stream must satisfy: each event valid against the published
    schema, one call id, `seq` 1, 2, 3..., `ts` never going back, `call_ended` once and last."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for event in events:
        validator.validate(event)
    assert len({e["call_id"] for e in events}) == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))
    ended = [e for e in events if e["type"] == "call_ended"]
    assert len(ended) == 1, f"call_ended sent {len(ended)} times"
    assert events[-1]["type"] == "call_ended"


NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.ExpandCommonEnglishContractions(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalising case, punctuation and contractions."""
    return float(
        jiwer.wer(
            reference, hypothesis, reference_transform=NORMALIZE, hypothesis_transform=NORMALIZE
        )
    )
