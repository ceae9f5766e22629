"""The real Deepgram plugin, built by the worker's own provider code, against the local stand-in
of Deepgram's live WebSocket: transcripts, a refused key, the documented message shapes, and
each fault as the plugin meets it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from livekit import rtc
from livekit.agents import APIConnectionError, APIStatusError, stt, utils

from tests.harness import Recording, make_agent
from tests.polling import until
from tests.standins.deepgram import ClipMatcher, DeepgramStandIn, WhisperTranscriber
from worker.providers import build_providers

KEY = "dg-test-key"
RECORDING = Recording.load("caller_basic")
RATE = RECORDING.rate
SAMPLES: dict[str, dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parents[1] / "standins" / "samples" / "deepgram.yaml").read_text("utf-8")
)
FINAL = stt.SpeechEventType.FINAL_TRANSCRIPT
INTERIM = stt.SpeechEventType.INTERIM_TRANSCRIPT


def clip(utterance: str) -> np.ndarray:
    return RECORDING.clip(utterance)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.int16)


def then(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def matcher() -> ClipMatcher:
    return ClipMatcher([(clip(u), RECORDING.text(u)) for u in RECORDING.utterances], RATE)


@pytest.fixture
async def standin() -> AsyncIterator[DeepgramStandIn]:
    async with DeepgramStandIn(api_key=KEY, transcriber=matcher()) as server:
        yield server


@dataclass(frozen=True)
class Heard:
    at: float
    """time.monotonic() when the event arrived."""
    event: stt.SpeechEvent

    @property
    def text(self) -> str:
        return self.event.alternatives[0].text if self.event.alternatives else ""


class Listener:
    """One recognition stream of the plugin, opened as the session opens it, and what it heard."""

    def __init__(self, plugin: stt.STT[Any], stream: stt.RecognizeStream) -> None:
        self.stream = stream
        self.heard: list[Heard] = []
        self.errors: list[stt.STTError] = []
        self.failure: BaseException | None = None
        self._news = asyncio.Event()
        plugin.on("error", self.errors.append)
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        try:
            async for event in self.stream:
                self.heard.append(Heard(time.monotonic(), event))
                self._news.set()
        except Exception as e:
            self.failure = e

    async def play(self, samples: np.ndarray, frame: float = 0.02) -> None:
        """Push `samples` in `frame`-second frames, in real time."""
        size = round(RATE * frame)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, at in enumerate(range(0, len(samples), size)):
            chunk = samples[at : at + size]
            self.stream.push_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, len(chunk)))
            await asyncio.sleep(max(0.0, start + (i + 1) * frame - loop.time()))

    async def wait_for(self, kind: stt.SpeechEventType, *, timeout: float, after: int = 0) -> Heard:
        """The first event of `kind` at index >= `after`, waiting for it if needed."""
        async with asyncio.timeout(timeout):
            while True:
                for heard in self.heard[after:]:
                    if heard.event.type == kind:
                        return heard
                self._news.clear()
                await self._news.wait()

    def texts(self, kind: stt.SpeechEventType) -> list[str]:
        return [h.text for h in self.heard if h.event.type == kind]

    async def ended(self, *, timeout: float) -> None:
        """Wait for the stream to end (after `end_input`, or a failure)."""
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        await self.stream.aclose()
        await self._task


@asynccontextmanager
async def listening(
    standin: DeepgramStandIn, *, key: str = KEY, **agent: Any
) -> AsyncIterator[Listener]:
    """The agent's STT stream, from `build_providers` with the stand-in's URL in the env."""
    env = {
        "DEEPGRAM_API_KEY": key,
        "DEEPGRAM_BASE_URL": standin.url,
        "OPENAI_API_KEY": "unused",
        "ELEVEN_API_KEY": "unused",
    }
    async with utils.http_context.open():
        providers = build_providers(make_agent(**agent), env)
        stream = providers.stt.stream(conn_options=providers.conn_options.stt_conn_options)
        listener = Listener(providers.stt, stream)
        try:
            yield listener
        finally:
            async with asyncio.timeout(5):
                await listener.aclose()
                for provider in (providers.stt, providers.llm, providers.tts):
                    await provider.aclose()


def json_type(value: Any) -> str:
    """JSON's type of a value (JSON has one number type)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_shape(actual: Any, sample: Any, *, partial: bool = False, path: str = "") -> None:
    """`actual` has the structure of `sample`: the same keys (or, `partial`, at least the
    sample's) and value types, recursively; every list item is shaped like the sample's first."""
    if isinstance(sample, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        missing, extra = set(sample) - set(actual), set(actual) - set(sample)
        assert not missing, f"{path}: missing {sorted(missing)}"
        assert partial or not extra, f"{path}: not in the sample {sorted(extra)}"
        for key, value in sample.items():
            assert_shape(actual[key], value, partial=partial, path=f"{path}.{key}")
    elif isinstance(sample, list):
        assert isinstance(actual, list), f"{path}: {actual!r} is not an array"
        assert bool(actual) == bool(sample), f"{path}: {len(actual)} items, sample {len(sample)}"
        for i, item in enumerate(actual):
            assert_shape(item, sample[0], partial=partial, path=f"{path}[{i}]")
    else:
        assert json_type(actual) == json_type(sample), f"{path}: {actual!r} vs {sample!r}"


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", "", text.lower()).split()


# --- the plugin against the stand-in ----------------------------------------------------------


async def test_transcribes_an_utterance(standin: DeepgramStandIn) -> None:
    text = RECORDING.text("question")
    played = then(clip("question"), silence(1.0))
    async with listening(standin) as listener:
        await listener.play(played)
        final = await listener.wait_for(FINAL, timeout=3)
        listener.stream.end_input()
        await listener.ended(timeout=5)

    assert final.text == text
    interims = listener.texts(INTERIM)
    assert interims, "no interim transcripts"
    assert all(text.startswith(t) for t in interims), interims
    assert [len(t) for t in interims] == sorted(len(t) for t in interims)
    kinds: list[stt.SpeechEventType] = [
        h.event.type
        for h in listener.heard
        if h.event.type != stt.SpeechEventType.RECOGNITION_USAGE
    ]
    assert kinds[0] == stt.SpeechEventType.START_OF_SPEECH
    assert kinds[kinds.index(FINAL) + 1] == stt.SpeechEventType.END_OF_SPEECH
    data = final.event.alternatives[0]
    assert 0.0 <= data.start_time < 0.1  # the stream's timeline: the clip starts it
    assert abs(data.end_time - len(clip("question")) / RATE) < 0.1
    assert listener.failure is None
    assert not listener.errors

    (connect,) = standin.of_kind("connect")
    assert connect.outcome == "completed"
    assert connect.headers["Authorization"] == f"Token {KEY}"
    assert {
        "model": "nova-3",
        "language": "en",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "interim_results": "true",
        "vad_events": "true",
        "punctuate": "true",
    }.items() <= connect.query.items()
    (connection,) = standin.connections
    assert connection.audio_bytes == played.nbytes
    assert [m.body["type"] for m in standin.of_kind("message")][-2:] == ["Finalize", "CloseStream"]
    assert connection.sent[-1]["type"] == "Metadata"
    assert connection.sent[-2]["from_finalize"]  # the answer to Finalize, after the speech
    assert standin.results[-2:] == [(True, text), (True, "")]


async def test_flush_finalizes_the_speech_so_far(standin: DeepgramStandIn) -> None:
    """The plugin's `flush` sends `Finalize`: a final for the words so far, then the rest."""
    text, question = RECORDING.text("question"), clip("question")
    async with listening(standin) as listener:
        await listener.play(question[: len(question) // 2])
        listener.stream.flush()
        await listener.play(then(question[len(question) // 2 :], silence(0.6)))
        first = await listener.wait_for(FINAL, timeout=1)
        second = await listener.wait_for(FINAL, timeout=1, after=listener.heard.index(first) + 1)

    assert first.text
    assert text.startswith(first.text)
    assert second.text
    assert text.endswith(second.text)
    finals = [m for m in standin.connections[0].sent if m["type"] == "Results" and m["is_final"]]
    assert [(m["from_finalize"], m["speech_final"]) for m in finals] == [
        (True, False),
        (False, True),
    ]
    assert [m["type"] for m in standin.connections[0].sent].count("SpeechStarted") == 1


async def test_a_wrong_key_is_refused(standin: DeepgramStandIn) -> None:
    async with listening(standin, key="not-the-key") as listener:
        await listener.ended(timeout=5)

    assert isinstance(listener.failure, APIStatusError)
    assert listener.failure.status_code == 401
    assert [e.recoverable for e in listener.errors] == [False]  # a 4xx is not retried
    (connect,) = standin.of_kind("connect")
    assert connect.outcome == "rejected"
    assert connect.body["err_code"] == "INVALID_AUTH"
    assert_shape(connect.body, SAMPLES["error_401"]["message"])


async def test_messages_are_shaped_like_the_documented_ones(standin: DeepgramStandIn) -> None:
    deepgram = {"provider": "deepgram", "options": {"utterance_end_ms": 1000}}
    async with listening(standin, stt=[deepgram]) as listener:
        await listener.play(then(clip("backchannel"), silence(1.5)))
        await listener.wait_for(FINAL, timeout=1)
        listener.stream.end_input()
        await until(
            lambda: standin.of_kind("connect")[0].outcome == "completed", 3.0, "the stand-in"
        )

    sent = standin.connections[0].sent

    def first(match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return next(m for m in sent if match(m))

    def words_of(m: dict[str, Any]) -> bool:
        return bool(m["channel"]["alternatives"][0]["words"])

    shown = {
        "results_final": first(lambda m: m["type"] == "Results" and m["is_final"] and words_of(m)),
        "results_interim": first(
            lambda m: m["type"] == "Results" and not m["is_final"] and words_of(m)
        ),
        "speech_started": first(lambda m: m["type"] == "SpeechStarted"),
        "utterance_end": first(lambda m: m["type"] == "UtteranceEnd"),
        "metadata": first(lambda m: m["type"] == "Metadata"),
    }
    for name, message in shown.items():
        sample = SAMPLES[name]
        assert_shape(message, sample["message"], partial=sample.get("partial", False), path=name)
    assert shown["results_final"]["speech_final"]
    assert shown["utterance_end"]["last_word_end"] == pytest.approx(
        len(clip("backchannel")) / RATE, abs=0.05
    )


# --- faults, as the plugin meets them ---------------------------------------------------------


async def test_a_dropped_socket_is_reconnected(standin: DeepgramStandIn) -> None:
    async with listening(standin) as listener:
        await listener.play(then(clip("backchannel"), silence(0.6)))
        assert (await listener.wait_for(FINAL, timeout=1)).text == "mm hmm"
        standin.faults.drop_after = 0.0
        await listener.play(silence(0.4))
        await until(lambda: len(standin.connections) == 2, 3.0, "the stand-in")
        after = len(listener.heard)
        await listener.play(then(clip("goodbye"), silence(0.6)))
        final = await listener.wait_for(FINAL, timeout=1, after=after)

    assert final.text == RECORDING.text("goodbye")
    assert standin.of_kind("connect")[0].outcome == "dropped"
    assert [e.recoverable for e in listener.errors] == [True]  # retried, not given up


async def test_latency_delays_the_final(standin: DeepgramStandIn) -> None:
    async def delay(listener: Listener) -> float:
        await listener.play(clip("backchannel"))
        spoken = time.monotonic()
        after = len(listener.heard)
        quiet = asyncio.create_task(listener.play(silence(2.0)))
        final = await listener.wait_for(FINAL, timeout=3, after=after)
        await quiet
        return final.at - spoken

    async with listening(standin) as listener:
        prompt = await delay(listener)
        standin.faults.latency = 1.0
        late = await delay(listener)

    assert prompt < 0.8
    assert 0.9 <= late - prompt <= 1.3


async def test_a_malformed_message_is_skipped(standin: DeepgramStandIn) -> None:
    standin.faults.malformed = True
    async with listening(standin) as listener:
        await listener.play(then(clip("backchannel"), silence(0.6)))
        final = await listener.wait_for(FINAL, timeout=1)

    assert final.text == "mm hmm"
    assert standin.connections[0].malformed == 1
    assert not standin.faults.malformed  # once


async def test_no_answer_leaves_the_plugin_waiting(standin: DeepgramStandIn) -> None:
    standin.faults.no_answer = True
    async with listening(standin) as listener:
        await listener.play(then(clip("backchannel"), silence(0.6)))
        with pytest.raises(TimeoutError):
            await listener.wait_for(FINAL, timeout=1)
        listener.stream.end_input()
        with pytest.raises(TimeoutError):  # it waits for a close that never comes
            await listener.ended(timeout=0.5)

    (connection,) = standin.connections
    assert connection.audio_bytes > 0
    assert connection.sent == []
    await until(lambda: standin.of_kind("connect")[0].outcome == "cancelled", 3.0, "the stand-in")


async def test_a_refusing_server_is_retried_then_given_up(standin: DeepgramStandIn) -> None:
    standin.faults.status = 503
    async with listening(standin) as listener:
        await listener.ended(timeout=5)

    assert isinstance(listener.failure, APIConnectionError)
    # the worker's default connect options: one retry (`retries: 1`)
    assert [r.outcome for r in standin.of_kind("connect")] == ["rejected", "rejected"]
    assert [e.recoverable for e in listener.errors] == [True, False]


# --- transcribers ------------------------------------------------------------------------------


def test_clip_matcher_names_the_clip_heard() -> None:
    match = matcher()
    for utterance in RECORDING.utterances:
        text = RECORDING.text(utterance)
        assert match(clip(utterance)) == text
        assert match(then(silence(0.1), clip(utterance)[480:], silence(0.3))) == text  # cut apart
    question = clip("question")
    stalled = then(question[: len(question) // 2], silence(0.4), question[len(question) // 2 :])
    assert match(stalled) == RECORDING.text("question")  # a gap on the way, on a loaded machine
    half = match(question[: len(question) // 2])
    assert half
    assert RECORDING.text("question").startswith(half)

    rng = np.random.default_rng(7)
    assert match((rng.standard_normal(RATE) * 1000).astype(np.int16)) == ""  # noise
    assert match((rng.standard_normal(RATE // 8) * 3000).astype(np.int16)) == ""  # a cough


def test_whisper_transcriber_hears_the_fixture() -> None:
    pytest.importorskip("faster_whisper")
    heard = words(WhisperTranscriber()(clip("barge_in")))
    expected = words(RECORDING.text("barge_in"))
    assert len(set(heard) & set(expected)) >= 0.8 * len(expected), heard
