"""ElevenLabs text-to-speech, served locally: the multi-context WebSocket the LiveKit plugin
streams through, and the HTTP stream endpoint its `synthesize()` posts to.

What the protocol is, and where it is written down:

- Multi-context WebSocket, messages and query (AsyncAPI):
  https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-multi-stream-input
- Its guide (flush per sentence, close a context on barge-in, 5 contexts per socket, inactivity):
  https://elevenlabs.io/docs/eleven-api/guides/how-to/websockets/multi-context-web-socket
- HTTP stream endpoint: https://elevenlabs.io/docs/api-reference/text-to-speech/stream
- A bad key is a 401 with `{"detail": {"status": "invalid_api_key", ...}}`:
  https://help.elevenlabs.io/hc/en-us/articles/19572237925521-API-Error-Code-400-or-401

What the docs leave open, decided here (and why):

- A bad key refuses the WebSocket handshake with that 401 (the key is a handshake header in the
  AsyncAPI spec; refused handshakes are what clients report, e.g. a 403 for an unavailable model
  in https://github.com/livekit/agents/issues/3235).
- `close_context`: "If it has already been set to flush it will continue flushing" (AsyncAPI,
  CloseContextClient). Read here as: when the context's last message was a flush carrying no new
  text (the guide's end of a turn: `flush`, then `close_context`), its flushed text is still
  spoken, then `isFinal`; otherwise (the guide's interruption: `close_context` while text is still
  streaming in) synthesis stops at once and the rest is never spoken nor billed.
- Text is spoken when a sentence end arrives or on `flush`; `auto_mode`, `chunk_length_schedule`
  and `sync_alignment` are recorded but change nothing (alignment is always sent).
- Alignment times are relative to each audio message, as the AsyncAPI spec says ("relative to the
  returned chunk"); characters share a segment's audio in proportion.
- A sixth simultaneous context is refused as clients report it (an error message, then close 1008):
  https://github.com/pipecat-ai/pipecat/issues/4114, https://github.com/livekit/agents-js/issues/1985
- Only `pcm_*` output formats: a stand-in has no MP3/Opus encoder; others are refused with 400.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from .base import Received, StandIn

Samples = npt.NDArray[np.int16]
Voice = Callable[[str], Samples]
"""Text to int16 mono samples at `VOICE_RATE`: what the stand-in says. Called in a thread."""

VOICE_RATE = 24000
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})
"""The `pcm_*` output formats the two endpoints document."""
MAX_CONTEXTS = 5
DEFAULT_INACTIVITY = 20.0
MAX_INACTIVITY = 180.0
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
HOLD_LIMIT = 60.0
"""The longest `no_answer` holds a request or a context, so that every wait ends."""
POLL = 0.05
CLOSE_TIMEOUT = 1.0
"""Seconds a close waits for the client's close frame (aiohttp's default is 10)."""

INVALID_KEY = {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
TOO_MANY_CONTEXTS = {
    "message": (
        f"Maximum simultaneous contexts per WebSocket connection exceeded ({MAX_CONTEXTS}). "
        "Please close an existing context before opening a new one."
    ),
    "error": "max_active_conversations",
    "code": 1008,
}


# --- voices ---------------------------------------------------------------------------------------


def resample(samples: Samples, rate: int, target: int) -> Samples:
    """Band-limited resampling of a whole clip through its spectrum (no SciPy here)."""
    if rate == target or samples.size == 0:
        return samples
    size = round(samples.size * target / rate)
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.fft.irfft(spectrum, size) * (size / samples.size)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class HumVoice:
    """Cheap, deterministic, speech-like audio: a voiced 120 Hz harmonic tone, modulated at a
    syllable rate, `char_seconds` per character and silent at punctuation. Its length follows the
    text exactly, so tests can check durations and alignment."""

    pitch: float = 120.0
    char_seconds: float = 0.06
    syllable_rate: float = 4.0
    level: float = 0.3
    pauses: str = ".,;:!?\n"

    def __call__(self, text: str) -> Samples:
        per_char = round(self.char_seconds * VOICE_RATE)
        voiced = np.repeat([char not in self.pauses for char in text], per_char).astype(np.float64)
        ramp = round(0.005 * VOICE_RATE)  # 5 ms fades: no clicks at pauses
        voiced = np.convolve(voiced, np.ones(ramp) / ramp, mode="same")
        t = np.arange(voiced.size) / VOICE_RATE
        ranks = np.arange(1, 9)
        harmonics = (np.sin(2 * np.pi * self.pitch * np.outer(t, ranks)) / ranks).sum(axis=1)
        syllables = 0.6 - 0.4 * np.cos(2 * np.pi * self.syllable_rate * t)
        signal: npt.NDArray[np.float64] = harmonics / 2.0 * syllables * voiced * self.level
        return np.clip(np.round(signal * 32767), -32768, 32767).astype(np.int16)


class PiperVoice:
    """The worker's bundled Piper voice, loaded as `LocalRuntime` loads it: real speech, for tests
    where a VAD or a recognizer must hear the agent. Loading takes about a second."""

    def __init__(self, voice: str | None = None, *, speed: float = 1.0) -> None:
        from worker.local.tts import load_piper

        self._voice = load_piper(voice, threads=1)
        self._rate = int(self._voice.config.sample_rate)
        self._speed = speed
        self._lock = threading.Lock()  # one synthesis at a time: contexts share two cores

    def __call__(self, text: str) -> Samples:
        from worker.local.tts import render

        with self._lock:
            chunks = render(self._voice, text, self._speed)
        audio: Samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return resample(audio, self._rate, VOICE_RATE)


# --- records --------------------------------------------------------------------------------------


@dataclass
class ContextLog:
    """One context (or one HTTP request) as the stand-in saw it: the body of a `context` entry."""

    context_id: str | None
    """`None` for the HTTP endpoint."""
    text: str = ""
    """All text received for it, the initial `" "` included."""
    synthesized: str = ""
    """The characters whose audio was sent: what ElevenLabs bills."""
    audio_seconds: float = 0.0
    voice_settings: dict[str, Any] | None = None

    @property
    def characters(self) -> int:
        return len(self.synthesized)

    @property
    def all_said(self) -> bool:
        """Whether every received character, whitespace aside, was spoken."""
        return "".join(self.synthesized.split()) == "".join(self.text.split())


@dataclass
class _Chunk:
    pcm: bytes
    chars: list[str]
    starts_ms: list[int]
    durations_ms: list[int]
    seconds: float

    def alignment(self) -> dict[str, Any]:
        return {
            "chars": self.chars,
            "charStartTimesMs": self.starts_ms,
            "charDurationsMs": self.durations_ms,
        }


def _chunks(segment: str, audio: Samples, rate: int, chunk_seconds: float) -> Iterator[_Chunk]:
    """A segment's audio in messages of `chunk_seconds`, each with the characters that start in it
    and their times relative to the message."""
    bounds = [round(i * audio.size / len(segment)) for i in range(len(segment) + 1)]
    step = max(1, round(chunk_seconds * rate))
    for start in range(0, max(audio.size, 1), step):
        end = min(start + step, audio.size)
        picked = [i for i in range(len(segment)) if start <= bounds[i] < end or end == start]
        yield _Chunk(
            pcm=audio[start:end].tobytes(),
            chars=[segment[i] for i in picked],
            starts_ms=[round((bounds[i] - start) * 1000 / rate) for i in picked],
            durations_ms=[round((bounds[i + 1] - bounds[i]) * 1000 / rate) for i in picked],
            seconds=(end - start) / rate,
        )


@dataclass
class _Context:
    log: ContextLog
    entry: Received
    buffer: str = ""
    segments: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    """Text to speak, in order; `None`: no more, send `isFinal`."""
    set_to_flush: bool = False
    task: asyncio.Task[None] | None = None
    ended: bool = False


class _Socket:
    """One client connection: its contexts, its sends (serialized) and its abrupt end."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, entry: Received) -> None:
        self.request = request
        self.ws = ws
        self.entry = entry
        self.rate = _pcm_rate(request.query.get("output_format", "")) or VOICE_RATE
        self.inactivity = _inactivity(request.query.get("inactivity_timeout"))
        self.contexts: dict[str, _Context] = {}
        self.dropped = False
        self.drop_timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any] | str) -> None:
        """Raises ConnectionResetError once the client is gone."""
        data = message if isinstance(message, str) else json.dumps(message)
        async with self._lock:
            if self.ws.closed:
                raise ConnectionResetError("the socket is closed")
            await self.ws.send_str(data)

    def abort(self) -> None:
        """End the connection without a close frame, as a network failure would."""
        self.dropped = True
        if self.request.transport is not None:
            self.request.transport.abort()


def _pcm_rate(output_format: str) -> int | None:
    codec, _, rate = output_format.partition("_")
    if codec != "pcm" or not rate.isdigit() or int(rate) not in PCM_RATES:
        return None
    return int(rate)


def _inactivity(value: str | None) -> float:
    try:
        return min(float(value), MAX_INACTIVITY) if value else DEFAULT_INACTIVITY
    except ValueError:
        return DEFAULT_INACTIVITY


class _Pacer:
    """Sends no faster than `factor` times real time, counted from the first audio."""

    def __init__(self, factor: float) -> None:
        self._factor = factor
        self._started: float | None = None
        self._sent = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        delay = self._started + self._sent / self._factor - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def sent(self, seconds: float) -> None:
        self._sent += seconds


# --- the server -----------------------------------------------------------------------------------


class ElevenLabsStandIn(StandIn):
    """ElevenLabs' TTS endpoints for the real plugin: pass `url` as its `base_url`.

    `voice` says the text (`HumVoice` by default). The first audio of each context comes
    `first_audio` seconds plus `faults.latency` after its first text to speak (plus the voice's
    own time), then audio messages of `chunk_seconds` no faster than `realtime_factor` x real time.
    Entries: `connect` per socket, `message` per client message (body: the JSON), `context` per
    context (body: `ContextLog`; outcome `completed` once all its text was spoken, `cancelled` if
    closed before that, `dropped` by a fault), `request` per HTTP request (plus its `context`).
    """

    def __init__(
        self,
        *,
        api_key: str,
        voice: Voice | None = None,
        first_audio: float = 0.05,
        realtime_factor: float = 4.0,
        chunk_seconds: float = 0.15,
    ) -> None:
        super().__init__(api_key=api_key)
        self.voice: Voice = voice or HumVoice()
        self.first_audio = first_audio
        self.realtime_factor = realtime_factor
        self.chunk_seconds = chunk_seconds
        self._sockets: set[_Socket] = set()

    @property
    def url(self) -> str:
        """The plugin's `base_url` (its default is `https://api.elevenlabs.io/v1`)."""
        return f"{self.origin}/v1"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._multi_stream),
            web.post("/v1/text-to-speech/{voice_id}/stream", self._http_stream),
        ]

    async def close(self) -> None:
        for sock in list(self._sockets):  # going away: no handler waits out the shutdown timeout
            await sock.ws.close(code=1001)
        await super().close()

    def contexts(self) -> list[ContextLog]:
        """The `ContextLog` of every context and HTTP request, in order."""
        return [entry.body for entry in self.of_kind("context")]

    @property
    def billed_characters(self) -> int:
        """Characters synthesized over all contexts and requests: what the calls would cost."""
        return sum(log.characters for log in self.contexts())

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request that is not served: a fault, a bad key, an output format the
        stand-in cannot encode."""
        if self.faults.status is not None:
            status = self.faults.status
            return web.json_response({"detail": {"status": "standin_fault"}}, status=status)
        if request.headers.get("xi-api-key") != self.api_key:
            return web.json_response(INVALID_KEY, status=401)
        output_format = request.query.get("output_format", "mp3_44100_128")  # the docs' default
        if _pcm_rate(output_format) is None:
            message = f"the ElevenLabs stand-in only speaks pcm_* formats, not {output_format}"
            return web.json_response(
                {"detail": {"status": "invalid_output_format", "message": message}}, status=400
            )
        return None

    async def _first_audio_delay(self) -> None:
        await asyncio.sleep(self.first_audio + self.faults.latency)

    async def _hold_silent(self) -> bool:
        """While `no_answer` is set: accept, say nothing. True if still silent after
        `HOLD_LIMIT` (the client gave up long ago); a test may also clear the fault."""
        deadline = asyncio.get_running_loop().time() + HOLD_LIMIT
        while self.faults.no_answer:  # a plain flag a test flips: polled
            if asyncio.get_running_loop().time() >= deadline:
                return True
            await asyncio.sleep(POLL)
        return False

    async def _render(self, text: str, rate: int) -> Samples:
        return resample(await asyncio.to_thread(self.voice, text), VOICE_RATE, rate)

    # --- the multi-context WebSocket --------------------------------------------------------------

    async def _multi_stream(self, request: web.Request) -> web.StreamResponse:
        entry = self.record("connect", request)
        refusal = self._refusal(request)
        if refusal is not None:
            entry.outcome = "rejected"
            return refusal
        ws = web.WebSocketResponse(timeout=CLOSE_TIMEOUT, heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        sock = _Socket(request, ws, entry)
        self._sockets.add(sock)
        try:
            await self._serve(sock)
        except ConnectionError:
            pass  # the client went away mid-send
        finally:
            self._sockets.discard(sock)
            await self._shut(sock)
        return ws

    async def _serve(self, sock: _Socket) -> None:
        """Read client messages until the socket ends: `close_socket`, the client's close, a
        policy close, or `inactivity_timeout` seconds without a message."""
        while True:
            try:
                msg = await sock.ws.receive(timeout=sock.inactivity)
            except TimeoutError:
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                data = msg.data
            self.record("message", sock.request, data).outcome = "completed"
            if isinstance(data, dict) and not await self._handle(sock, data):
                return

    async def _handle(self, sock: _Socket, data: dict[str, Any]) -> bool:
        """Apply one client message; False once the socket is to close."""
        if data.get("close_socket"):
            # "Any context that was previously set to flush will wait to flush before closing."
            await asyncio.gather(
                *(self._close_context(sock, c) for c in list(sock.contexts.values()))
            )
            tasks = [c.task for c in sock.contexts.values() if c.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            await sock.ws.close()
            return False
        context_id = str(data.get("context_id", "default"))
        ctx = sock.contexts.get(context_id)
        if data.get("close_context"):
            if ctx is not None:
                await self._close_context(sock, ctx)
            return True
        if ctx is None:
            if len(sock.contexts) >= MAX_CONTEXTS:
                await sock.send(TOO_MANY_CONTEXTS)
                sock.entry.outcome = "rejected"
                await sock.ws.close(code=1008)
                return False
            ctx = self._open_context(sock, context_id, data)
        text = data.get("text")
        text = text if isinstance(text, str) else ""
        flush = bool(data.get("flush"))
        ctx.log.text += text
        ctx.buffer += text
        if text or flush:  # a keep-alive (no text, no flush) changes nothing
            ctx.set_to_flush = flush and not text
        if flush:
            cut = len(ctx.buffer)
        else:
            ends = list(SENTENCE_END.finditer(ctx.buffer))
            cut = ends[-1].end() if ends else 0
        if ctx.buffer[:cut].strip():
            ctx.segments.put_nowait(ctx.buffer[:cut])
            ctx.buffer = ctx.buffer[cut:]
        return True

    def _open_context(self, sock: _Socket, context_id: str, data: dict[str, Any]) -> _Context:
        log = ContextLog(context_id, voice_settings=data.get("voice_settings"))
        ctx = _Context(log=log, entry=self.record("context", sock.request, log))
        sock.contexts[context_id] = ctx
        ctx.task = asyncio.create_task(self._speak(sock, ctx))
        return ctx

    async def _close_context(self, sock: _Socket, ctx: _Context) -> None:
        if ctx.set_to_flush:
            ctx.segments.put_nowait(None)  # speak what was flushed, then isFinal
            return
        if ctx.task is not None:  # an interruption: stop at once
            ctx.task.cancel()
            await asyncio.wait({ctx.task})
        await self._end_context(sock, ctx)

    async def _speak(self, sock: _Socket, ctx: _Context) -> None:
        """Voice a context's segments in order, paced, then send `isFinal`."""
        pacer = _Pacer(self.realtime_factor)
        first = True
        try:
            while True:
                async with asyncio.timeout(sock.inactivity):  # the context's inactivity timeout
                    segment = await ctx.segments.get()
                if segment is None:
                    break
                if first:
                    await self._first_audio_delay()
                    if await self._hold_silent():
                        break
                audio = await self._render(segment, sock.rate)
                for chunk in _chunks(segment, audio, sock.rate, self.chunk_seconds):
                    if first:
                        first = False
                        if not await self._first_chunk_faults(sock):
                            continue
                    await pacer.wait()
                    await sock.send(
                        {
                            "audio": base64.b64encode(chunk.pcm).decode(),
                            "alignment": chunk.alignment(),
                            "normalizedAlignment": chunk.alignment(),
                            "contextId": ctx.log.context_id,
                        }
                    )
                    pacer.sent(chunk.seconds)
                    ctx.log.synthesized += "".join(chunk.chars)
                    ctx.log.audio_seconds += chunk.seconds
        except TimeoutError:
            pass  # inactive for too long: the context is closed
        except ConnectionError:
            return  # the socket is gone; `_shut` records the outcome
        await self._end_context(sock, ctx)

    async def _first_chunk_faults(self, sock: _Socket) -> bool:
        """At a context's first audio: arm `drop_after`, send the `malformed` message instead.
        False when the chunk is not to be sent."""
        drop = self.faults.take_drop()
        if drop is not None:
            if drop <= 0:
                sock.abort()
                raise ConnectionResetError("dropped by the drop_after fault")
            sock.drop_timer = asyncio.get_running_loop().call_later(drop, sock.abort)
        if self.faults.take_malformed():
            await sock.send('{"audio": "')  # cut short: not JSON
            return False
        return True

    async def _end_context(self, sock: _Socket, ctx: _Context) -> None:
        if ctx.ended:
            return
        ctx.ended = True
        sock.contexts.pop(ctx.log.context_id or "", None)
        ctx.entry.outcome = "completed" if ctx.log.all_said else "cancelled"
        with contextlib.suppress(ConnectionError):
            await sock.send({"isFinal": True, "contextId": ctx.log.context_id})

    async def _shut(self, sock: _Socket) -> None:
        """The socket ended: stop its contexts and record how everything ended."""
        if sock.drop_timer is not None:
            sock.drop_timer.cancel()
        for ctx in list(sock.contexts.values()):
            if ctx.task is not None:
                ctx.task.cancel()
                await asyncio.wait({ctx.task})
            if not ctx.ended:
                ctx.ended = True
                ctx.entry.outcome = (
                    "dropped" if sock.dropped else "completed" if ctx.log.all_said else "cancelled"
                )
        sock.contexts.clear()
        if sock.dropped:
            sock.entry.outcome = "dropped"
        elif sock.entry.outcome == "open":
            sock.entry.outcome = "completed"
        if not sock.ws.closed:
            await sock.ws.close()

    # --- the HTTP stream endpoint (`synthesize()`) ------------------------------------------------

    async def _http_stream(self, request: web.Request) -> web.StreamResponse:
        entry = self.record("request", request)
        refusal = self._refusal(request)
        if refusal is not None:
            entry.outcome = "rejected"
            return refusal
        try:
            entry.body = await request.json()
            text = str(entry.body["text"])
            if not text.strip():
                raise ValueError("no text")
        except (ValueError, KeyError, TypeError):
            entry.outcome = "rejected"
            detail = {"status": "invalid_request", "message": "a JSON body with `text`"}
            return web.json_response({"detail": detail}, status=422)
        log = ContextLog(None, text=text, voice_settings=entry.body.get("voice_settings"))
        context = self.record("context", request, log)
        rate = _pcm_rate(request.query["output_format"]) or VOICE_RATE
        await self._first_audio_delay()
        if await self._hold_silent():
            entry.outcome = context.outcome = "cancelled"
            return web.json_response({"detail": {"status": "standin_no_answer"}}, status=504)
        if self.faults.take_malformed():
            entry.outcome = context.outcome = "completed"
            return web.json_response({"audio": "not audio"})
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        drop = self.faults.take_drop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        pacer = _Pacer(self.realtime_factor)
        outcome = "completed"
        try:
            for chunk in _chunks(text, await self._render(text, rate), rate, self.chunk_seconds):
                await pacer.wait()
                if drop is not None and loop.time() - started >= drop:
                    outcome = "dropped"
                    if request.transport is not None:
                        request.transport.abort()
                    break
                await response.write(chunk.pcm)
                pacer.sent(chunk.seconds)
                log.synthesized += "".join(chunk.chars)
                log.audio_seconds += chunk.seconds
            else:
                await response.write_eof()
        except ConnectionError:
            outcome = "cancelled"  # the client went away
        entry.outcome = context.outcome = outcome
        return response
