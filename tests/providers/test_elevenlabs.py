"""The real ElevenLabs plugin, built by the worker's own `build_providers`, against the local
stand-in of ElevenLabs' multi-context WebSocket: audio, errors, faults and barge-in as the worker
would meet them."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError, utils, vad

from tests.harness import make_agent
from tests.polling import until
from tests.standins.elevenlabs import VOICE_RATE, ElevenLabsStandIn, HumVoice, PiperVoice
from worker.call.pipeline import load_vad
from worker.providers import AnyTTS, build_providers, connect_options
from worker.settings import VADSettings

KEY = "test-eleven-key"
REPLY = "The weather is fine today. It should stay dry until the evening."
SHORT = "Fine, thanks."
SAMPLES: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "standins/samples/elevenlabs.yaml").read_text("utf-8")
)
CHAR_SECONDS = HumVoice().char_seconds


@dataclass
class Speech:
    samples: np.ndarray
    rate: int
    first_audio: float
    """Seconds from the first text to the first audio frame."""
    elapsed: float

    @property
    def seconds(self) -> float:
        return self.samples.size / self.rate


@pytest.fixture
async def standin() -> AsyncIterator[ElevenLabsStandIn]:
    async with ElevenLabsStandIn(api_key=KEY) as server:
        yield server


@asynccontextmanager
async def eleven_tts(
    standin: ElevenLabsStandIn, *, key: str = KEY, **entry: Any
) -> AsyncIterator[tuple[AnyTTS, APIConnectOptions]]:
    """The plugin as the worker builds it for an agent whose TTS entry is `entry`, and the
    connect options the worker gives it."""
    agent = make_agent(tts=[{"provider": "elevenlabs", **entry}])
    env = {
        "ELEVEN_API_KEY": key,
        "ELEVENLABS_BASE_URL": standin.url,
        "DEEPGRAM_API_KEY": "x",
        "OPENAI_API_KEY": "x",
    }
    async with utils.http_context.open():
        tts = build_providers(agent, env).tts
        try:
            yield tts, connect_options(agent.tts[0])
        finally:
            await tts.aclose()


def tokens(text: str) -> list[str]:
    """Text as an LLM streams it: word by word."""
    return re.findall(r"\S+\s*", text)


async def speak(tts: AnyTTS, conn: APIConnectOptions, text: str, *, timeout: float = 10) -> Speech:
    """Stream `text` through `tts.stream()` as the session does, and collect the audio."""
    start = time.monotonic()
    first_audio = 0.0
    frames: list[rtc.AudioFrame] = []
    async with asyncio.timeout(timeout), tts.stream(conn_options=conn) as stream:
        for token in tokens(text):
            stream.push_text(token)
        stream.flush()
        stream.end_input()
        async for event in stream:
            first_audio = first_audio or time.monotonic() - start
            frames.append(event.frame)
    samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    return Speech(samples, frames[0].sample_rate, first_audio, time.monotonic() - start)


async def say(tts: AnyTTS, conn: APIConnectOptions, text: str, *, endpoint: str) -> None:
    """`text` through `stream()` or `synthesize()`, the audio dropped."""
    if endpoint == "stream":
        await speak(tts, conn, text, timeout=3)
        return
    async with asyncio.timeout(3):
        await tts.synthesize(text, conn_options=conn).collect()


def shape(value: Any) -> Any:
    """Keys and value types, recursively: what two messages must share to have one structure."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


# --- audio ----------------------------------------------------------------------------------------


async def test_streams_a_reply_as_24khz_audio_of_its_length(standin: ElevenLabsStandIn) -> None:
    async with eleven_tts(standin) as (tts, conn):
        speech = await speak(tts, conn, REPLY)
    await until(lambda: standin.of_kind("connect")[0].outcome != "open", 2.0, "the stand-in")

    assert speech.rate == VOICE_RATE
    assert speech.seconds == pytest.approx(CHAR_SECONDS * len(REPLY), rel=0.1)
    assert speech.elapsed >= speech.seconds / standin.realtime_factor  # streamed, not dumped

    (connect,) = standin.of_kind("connect")
    assert connect.path.endswith("/multi-stream-input")
    assert connect.headers["xi-api-key"] == KEY
    assert connect.query["model_id"] == "eleven_flash_v2_5"
    assert connect.query["output_format"] == "pcm_24000"
    assert connect.query["language_code"] == "en"
    assert connect.query["sync_alignment"] == "true"
    assert connect.query["auto_mode"] == "true"
    init = standin.of_kind("message")[0].body
    assert init["text"] == " "
    assert "voice_settings" in init
    assert standin.of_kind("message")[-1].body == {
        "context_id": init["context_id"],
        "close_context": True,
    }
    (context,) = standin.of_kind("context")
    assert context.outcome == "completed"
    assert context.body.all_said
    assert context.body.audio_seconds == pytest.approx(speech.seconds, abs=0.01)
    # HumVoice: 60 ms a character received (the plugin adds the initial " " and sentence spaces)
    assert speech.seconds == pytest.approx(CHAR_SECONDS * len(context.body.text), abs=0.05)


async def test_keeps_one_socket_for_many_contexts(standin: ElevenLabsStandIn) -> None:
    async with eleven_tts(standin) as (tts, conn):
        await speak(tts, conn, "First reply.")
        both = await asyncio.gather(
            speak(tts, conn, "Second reply."), speak(tts, conn, "A third, at the same time.")
        )
    assert [s.seconds > 0.5 for s in both] == [True, True]
    assert len(standin.of_kind("connect")) == 1
    assert [c.outcome for c in standin.of_kind("context")] == ["completed"] * 3


async def test_piper_voice_is_speech_to_a_vad() -> None:
    voice = await asyncio.to_thread(PiperVoice)
    vad_model = load_vad(VADSettings())  # plugins register on the main thread only
    async with (
        ElevenLabsStandIn(api_key=KEY, voice=voice) as standin,
        eleven_tts(standin) as (tts, conn),
    ):
        speech = await speak(tts, conn, "Hello, this is the agent. How can I help you?")
    assert speech.seconds > 1.0
    assert await speech_heard(vad_model, speech) > 0.5 * speech.seconds


async def speech_heard(vad_model: vad.VAD, speech: Speech) -> float:
    """Seconds of speech Silero finds in `speech`."""
    stream = vad_model.stream()
    step = speech.rate // 50
    for start in range(0, speech.samples.size, step):
        chunk = speech.samples[start : start + step]
        stream.push_frame(rtc.AudioFrame(chunk.tobytes(), speech.rate, 1, chunk.size))
    stream.push_frame(rtc.AudioFrame(bytes(speech.rate), speech.rate, 1, speech.rate // 2))
    stream.end_input()
    heard = 0.0
    async with asyncio.timeout(10):
        async for event in stream:
            if event.type is vad.VADEventType.END_OF_SPEECH:
                heard += event.speech_duration
    await stream.aclose()
    return heard


async def test_synthesize_uses_the_http_stream_endpoint(standin: ElevenLabsStandIn) -> None:
    text = "A short answer."
    async with eleven_tts(standin) as (tts, conn), asyncio.timeout(5):
        frames = [event.frame async for event in tts.synthesize(text, conn_options=conn)]
    seconds = sum(f.samples_per_channel for f in frames) / VOICE_RATE
    assert seconds == pytest.approx(CHAR_SECONDS * len(text), rel=0.05)
    (request,) = standin.of_kind("request")
    assert request.query["output_format"] == "pcm_24000"
    assert request.body["text"] == text
    assert request.body["model_id"] == "eleven_flash_v2_5"
    assert request.outcome == "completed"


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
async def test_speaks_the_requested_pcm_rate(standin: ElevenLabsStandIn, rate: int) -> None:
    url = f"{standin.url}/text-to-speech/voice/multi-stream-input?output_format=pcm_{rate}"
    pcm = b""
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(5),
        session.ws_connect(url, headers={"xi-api-key": KEY}) as ws,
    ):
        for message in (
            {"text": " ", "context_id": "turn"},
            {"text": SHORT, "context_id": "turn"},
            {"context_id": "turn", "flush": True},  # the end of the turn: said in full
            {"context_id": "turn", "close_context": True},
        ):
            await ws.send_json(message)
        while "isFinal" not in (answer := await ws.receive_json()):
            pcm += base64.b64decode(answer["audio"])
    assert len(pcm) / 2 / rate == pytest.approx(CHAR_SECONDS * len(f" {SHORT}"), rel=0.01)


async def test_refuses_output_formats_it_cannot_encode(standin: ElevenLabsStandIn) -> None:
    url = f"{standin.url}/text-to-speech/voice/multi-stream-input?output_format=mp3_44100_128"
    async with aiohttp.ClientSession() as session, asyncio.timeout(5):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers={"xi-api-key": KEY})
        async with session.get(url, headers={"xi-api-key": KEY}) as response:
            detail = (await response.json())["detail"]
    assert refused.value.status == 400
    assert "pcm_" in detail["message"]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["stream", "synthesize"])
async def test_a_bad_key_fails_at_once(standin: ElevenLabsStandIn, endpoint: str) -> None:
    start = time.monotonic()
    async with eleven_tts(standin, key="wrong-key") as (tts, conn):
        with pytest.raises(APIStatusError) as error:
            await say(tts, conn, REPLY, endpoint=endpoint)
    assert error.value.status_code == 401
    assert not error.value.retryable
    assert time.monotonic() - start < 1.0
    assert [e.outcome for e in standin.received] == ["rejected"]  # no retry


# --- the docs' messages ---------------------------------------------------------------------------


async def test_answers_the_docs_messages_with_the_docs_structure(
    standin: ElevenLabsStandIn,
) -> None:
    """The guide's own conversation (a greeting interrupted, a flushed answer, the socket
    closed), sent as the docs write it: every answer has the structure of a documented one."""
    client = {name: sample["message"] for name, sample in SAMPLES["client"].items()}
    server = {name: shape(sample["message"]) for name, sample in SAMPLES["server"].items()}
    url = f"{standin.url}/text-to-speech/voice/multi-stream-input?output_format=pcm_24000"
    answers: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.ws_connect(url, headers={"xi-api-key": KEY}) as ws:
            await ws.send_json(client["initialise_context"])
            await ws.send_json(client["send_text_in_context"])
            answers.append(await ws.receive_json())
            await ws.send_json(client["close_context"])
            for name in ("continue_context", "flush_context", "keep_context_alive"):
                await ws.send_json(client[name])
            await ws.send_json(client["close_socket"])
            async for message in ws:
                answers.append(message.json())
        assert ws.close_code == 1000

    assert {str(a["contextId"]) for a in answers} == {"greeting", "weather_response"}
    for answer in answers:
        assert shape(answer) in (server["audio_output"], server["final_output"])
    finals = [a["contextId"] for a in answers if "isFinal" in a]
    assert finals == ["greeting", "weather_response"]
    greeting, weather = standin.of_kind("context")
    assert greeting.outcome == "cancelled"  # closed while its text was still being said
    assert weather.outcome == "completed"  # flushed before close_socket: said in full
    assert weather.body.synthesized == client["continue_context"]["text"]


async def test_refusals_have_the_documented_structure(standin: ElevenLabsStandIn) -> None:
    url = f"{standin.url}/text-to-speech/voice/multi-stream-input?output_format=pcm_24000"
    invalid_key, too_many = (
        SAMPLES["errors"]["invalid_api_key"],
        SAMPLES["errors"]["too_many_contexts"],
    )
    async with aiohttp.ClientSession() as session, asyncio.timeout(5):
        async with session.get(url, headers={"xi-api-key": "wrong"}) as response:
            assert response.status == invalid_key["status"]
            assert await response.json() == invalid_key["body"]
        async with session.ws_connect(url, headers={"xi-api-key": KEY}) as ws:
            for i in range(6):
                await ws.send_json({"text": " ", "context_id": f"context-{i}"})
            error = await ws.receive_json()
            assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == too_many["close_code"]
    assert error == too_many["message"]


# --- faults, as the worker's plugin meets them ---------------------------------------------------


async def test_a_refused_handshake_fails_after_the_retry(standin: ElevenLabsStandIn) -> None:
    standin.faults.status = 503
    start = time.monotonic()
    async with eleven_tts(standin) as (tts, conn):
        with pytest.raises(APIStatusError) as error:
            await speak(tts, conn, REPLY)
    assert error.value.status_code == 503
    assert time.monotonic() - start < conn.retry_interval + 1.0
    assert [c.outcome for c in standin.of_kind("connect")] == ["rejected"] * (conn.max_retry + 1)


async def test_a_socket_dropped_mid_reply_fails_the_reply(standin: ElevenLabsStandIn) -> None:
    standin.faults.drop_after = 0.2
    start = time.monotonic()
    async with eleven_tts(standin) as (tts, conn):
        with pytest.raises(APIStatusError, match="closed unexpectedly"):
            await speak(tts, conn, REPLY)
        assert time.monotonic() - start < 1.5
        await until(lambda: standin.of_kind("context")[0].outcome != "open", 2.0, "the stand-in")
        speech = await speak(tts, conn, "Next reply.")  # on a new socket
    assert speech.seconds > 0.5
    await until(lambda: standin.of_kind("connect")[-1].outcome != "open", 2.0, "the stand-in")
    assert [c.outcome for c in standin.of_kind("connect")] == ["dropped", "completed"]
    assert [c.outcome for c in standin.of_kind("context")] == ["dropped", "completed"]
    # audio had reached the caller: the plugin does not retry (it would repeat it)
    assert 0 < standin.of_kind("context")[0].body.characters < len(REPLY)


async def test_a_socket_dropped_before_audio_is_retried(standin: ElevenLabsStandIn) -> None:
    standin.faults.drop_after = 0.0
    async with eleven_tts(standin) as (tts, conn):
        speech = await speak(tts, conn, SHORT)
    assert speech.seconds == pytest.approx(standin.contexts()[-1].audio_seconds, abs=0.01)
    await until(lambda: standin.of_kind("connect")[-1].outcome != "open", 2.0, "the stand-in")
    assert [c.outcome for c in standin.of_kind("connect")] == ["dropped", "completed"]
    assert [c.outcome for c in standin.of_kind("context")] == ["dropped", "completed"]


async def test_a_malformed_message_is_retried_on_a_new_socket(standin: ElevenLabsStandIn) -> None:
    standin.faults.malformed = True
    async with eleven_tts(standin) as (tts, conn):
        speech = await speak(tts, conn, SHORT)
    assert speech.seconds == pytest.approx(standin.contexts()[-1].audio_seconds, abs=0.01)
    assert len(standin.of_kind("connect")) == 2
    assert standin.of_kind("context")[-1].outcome == "completed"


async def test_no_answer_times_out_after_each_attempt(standin: ElevenLabsStandIn) -> None:
    standin.faults.no_answer = True
    start = time.monotonic()
    async with eleven_tts(standin, timeout=1.0) as (tts, conn):
        with pytest.raises(APIStatusError):
            await speak(tts, conn, REPLY)
        elapsed = time.monotonic() - start
    attempts = conn.max_retry + 1
    assert attempts * conn.timeout <= elapsed < attempts * conn.timeout + conn.retry_interval + 1
    assert len(standin.of_kind("connect")) == 1  # the socket stays; each attempt is a context
    assert [c.body.characters for c in standin.of_kind("context")] == [0] * attempts


async def test_latency_delays_the_first_audio(standin: ElevenLabsStandIn) -> None:
    standin.faults.latency = 0.5
    async with eleven_tts(standin) as (tts, conn):
        speech = await speak(tts, conn, SHORT)
    assert speech.first_audio >= 0.5 + standin.first_audio


# --- barge-in -------------------------------------------------------------------------------------


async def interrupt(tts: AnyTTS, conn: APIConnectOptions, text: str) -> None:
    """A reply cut short by the caller: closed after its first audio, text still coming."""
    stream = tts.stream(conn_options=conn)
    for token in tokens(text):
        stream.push_text(token)
    async with asyncio.timeout(5):
        await anext(stream)
    await stream.aclose()


async def test_closing_a_stream_mid_reply_cancels_its_context(standin: ElevenLabsStandIn) -> None:
    long_reply = f"{REPLY} Then clouds will come in from the west. And rain will follow them"
    async with eleven_tts(standin) as (tts, conn):
        await interrupt(tts, conn, long_reply)
        (context,) = standin.of_kind("context")
        await until(lambda: context.outcome != "open", 2.0, "the stand-in")
    assert context.outcome == "cancelled"
    assert {"context_id": context.body.context_id, "close_context": True} in [
        m.body for m in standin.of_kind("message")
    ]
    assert 0 < standin.billed_characters == context.body.characters < len(context.body.text)


async def test_barge_ins_leave_no_context_open(standin: ElevenLabsStandIn) -> None:
    """More interruptions than ElevenLabs' 5 contexts per socket: the plugin closes each one."""
    async with eleven_tts(standin) as (tts, conn):
        for _ in range(6):
            await interrupt(tts, conn, REPLY)
        speech = await speak(tts, conn, "Still here.")
    assert speech.seconds > 0.5
    assert len(standin.of_kind("connect")) == 1
    assert [c.outcome for c in standin.of_kind("context")] == ["cancelled"] * 6 + ["completed"]
