"""Small in-process STT, LLM and TTS providers with explicit latencies.

They subclass LiveKit's provider classes, so the session drives them exactly as it drives the
real plugins (streams, retries, the TTS stream adapter), and they are deterministic: the STT
hears speech by its energy and answers from a script, the LLM answers from a function of the
caller's words, the TTS renders text as a tone whose length follows the text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectionError,
    APIConnectOptions,
    LanguageCode,
    NotGivenOr,
    llm,
    stt,
    tts,
)
from livekit.agents.utils import AudioBuffer

SPEECH_RMS = 300.0
"""Frames louder than this count as speech for the fake STT (fixtures are clean recordings)."""


class FakeSTT(stt.STT[None]):
    """A streaming recognizer: each burst of speech it hears yields the next scripted transcript,
    `latency` seconds after the burst ends (`None` in the script: heard, but no words).

    With `endpoint_silence=None` it never finalizes by itself: `transcribe_later` does, for
    benchmarks that know exactly when the caller stopped."""

    def __init__(
        self,
        script: list[str | None],
        *,
        latency: float = 0.15,
        endpoint_silence: float | None = 0.25,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self.script: deque[str | None] = deque(script)
        self.latency = latency
        self.endpoint_silence = endpoint_silence
        self.transcripts: list[str] = []
        self._stream: _FakeRecognizeStream | None = None

    def transcribe_later(self, text: str) -> None:
        """Send `text` as the final transcript `latency` seconds from now."""
        assert self._stream is not None, "no recognition stream yet"
        self._stream.emit_final_later(text)

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        raise NotImplementedError("FakeSTT only streams")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        self._stream = _FakeRecognizeStream(self, conn_options)
        return self._stream


class _FakeRecognizeStream(stt.RecognizeStream):
    def __init__(self, fake: FakeSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=fake, conn_options=conn_options)
        self._fake = fake
        self._speech = 0.0
        self._silence = 0.0
        self._interim_sent = False
        self._pending: set[asyncio.Task[None]] = set()

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                if self._speech:
                    self._finalize()
                continue
            rms = float(
                np.sqrt(np.mean(np.frombuffer(item.data, np.int16).astype(np.float64) ** 2))
            )
            if rms >= SPEECH_RMS:
                self._speech += item.duration
                self._silence = 0.0
                if self._speech >= 0.4 and not self._interim_sent and self._fake.script:
                    self._interim_sent = True
                    words = (self._fake.script[0] or "").split()
                    if words:
                        self._send(stt.SpeechEventType.INTERIM_TRANSCRIPT, " ".join(words[:2]))
            elif self._speech and self._fake.endpoint_silence is not None:
                self._silence += item.duration
                if self._silence >= self._fake.endpoint_silence:
                    self._finalize()
        if self._pending:
            await asyncio.gather(*self._pending)

    def _finalize(self) -> None:
        self._speech = self._silence = 0.0
        self._interim_sent = False
        text = self._fake.script.popleft() if self._fake.script else None
        if text is not None:
            self.emit_final_later(text)

    def emit_final_later(self, text: str) -> None:
        task = asyncio.create_task(self._emit_final(text))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _emit_final(self, text: str) -> None:
        await asyncio.sleep(self._fake.latency)
        self._fake.transcripts.append(text)
        self._send(stt.SpeechEventType.FINAL_TRANSCRIPT, text)
        self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))

    def _send(self, kind: stt.SpeechEventType, text: str) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=kind, alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text)]
            )
        )


@dataclass
class Reply:
    text: str
    tool: str | None = None
    """Name of a function tool the reply also calls (with no arguments)."""


class FakeLLM(llm.LLM[None]):
    """Answers with `respond(last user text)`, the first token after `ttft` seconds."""

    def __init__(
        self,
        respond: Callable[[str], Reply] = lambda _text: Reply("Sure."),
        *,
        ttft: float = 0.3,
        token_interval: float = 0.02,
    ) -> None:
        super().__init__()
        self.respond = respond
        self.ttft = ttft
        self.token_interval = token_interval
        self.was_closed = False
        self.requests: list[str] = []
        """The last user message of every request, in order."""
        self.instructions: list[str] = []
        """The system instructions of every request, in order."""
        self.contexts: list[list[tuple[str, str]]] = []
        """Every request's messages as (role, text), in order."""
        self.fail = False
        """When set, every request fails as an unreachable provider does."""

    async def aclose(self) -> None:
        self.was_closed = True

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _FakeLLMStream(llm.LLMStream):
    def __init__(self, fake: FakeLLM, **kwargs: Any) -> None:
        super().__init__(fake, **kwargs)
        self._fake = fake

    async def _run(self) -> None:
        messages = self._chat_ctx.messages()
        users = [m for m in messages if m.role == "user"]
        last = (users[-1].text_content or "") if users else ""
        self._fake.requests.append(last)
        self._fake.contexts.append([(m.role, m.text_content or "") for m in messages])
        self._fake.instructions.append(
            " ".join(m.text_content or "" for m in messages if m.role in ("system", "developer"))
        )
        reply = self._fake.respond(last)
        await asyncio.sleep(self._fake.ttft)
        if self._fake.fail:
            raise APIConnectionError("fake LLM unreachable", retryable=False)
        chunk_id = uuid.uuid4().hex
        for i, word in enumerate(reply.text.split(" ")):
            if i:
                await asyncio.sleep(self._fake.token_interval)
            content = word if i == 0 else " " + word
            self._event_ch.send_nowait(
                llm.ChatChunk(id=chunk_id, delta=llm.ChoiceDelta(role="assistant", content=content))
            )
        if reply.tool:
            call = llm.FunctionToolCall(name=reply.tool, arguments="{}", call_id=uuid.uuid4().hex)
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=chunk_id, delta=llm.ChoiceDelta(role="assistant", tool_calls=[call])
                )
            )


class FakeTTS(tts.TTS[None]):
    """Renders text as a modulated tone, `seconds_per_char` long per character, the first audio
    after `ttfb` seconds (non-streaming: the session feeds it sentence by sentence)."""

    def __init__(self, *, ttfb: float = 0.15, seconds_per_char: float = 0.06) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=24000, num_channels=1
        )
        self.ttfb = ttfb
        self.seconds_per_char = seconds_per_char
        self.texts: list[str] = []

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class _FakeChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake = self._tts
        assert isinstance(fake, FakeTTS)
        fake.texts.append(self.input_text)
        output_emitter.initialize(
            request_id=uuid.uuid4().hex, sample_rate=24000, num_channels=1, mime_type="audio/pcm"
        )
        await asyncio.sleep(fake.ttfb)
        output_emitter.push(speech_tone(len(self.input_text) * fake.seconds_per_char).tobytes())
        output_emitter.flush()


def speech_tone(seconds: float, rate: int = 24000) -> np.ndarray:
    """A 220 Hz tone with a 4 Hz syllable-like envelope: loud, and clearly not silence."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (6000 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0
