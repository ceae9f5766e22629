"""A local stand-in of Deepgram's live transcription WebSocket, `GET /v1/listen`, faithful enough
that the unmodified `livekit-plugins-deepgram` STT runs against it.

The protocol, as Deepgram documents it:
- handshake: query options, `Authorization: Token <key>`; a refused handshake is an HTTP error
  with a JSON body and `dg-request-id`/`dg-error` headers
  (https://developers.deepgram.com/reference/listen-live,
  https://developers.deepgram.com/reference/errors,
  https://deepgram.com/changelog/real-time-debugging-improvements/);
- in: binary audio, and the text messages `KeepAlive`
  (https://developers.deepgram.com/docs/audio-keep-alive), `Finalize`
  (https://developers.deepgram.com/docs/finalize) and `CloseStream`
  (https://developers.deepgram.com/docs/close-stream);
- out: `Results` (https://developers.deepgram.com/docs/live-streaming-audio), interim when
  `interim_results=true` (https://developers.deepgram.com/docs/interim-results), `speech_final`
  at an endpoint (https://developers.deepgram.com/docs/endpointing), `SpeechStarted` when
  `vad_events=true` (https://developers.deepgram.com/docs/speech-started), `UtteranceEnd` when
  `utterance_end_ms` is set (https://developers.deepgram.com/docs/utterance-end), and `Metadata`
  before the server closes after `CloseStream`.
Samples of each message, quoted from those pages, are in samples/deepgram.yaml.

Speech is found by frame energy, which is all the test fixtures need (their silences are digital
zero); what was said comes from a `Transcriber`: `ClipMatcher` (deterministic, knows the fixture
clips) or `WhisperTranscriber` (the worker's bundled Whisper model).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from worker.local.runtime import default_threads
from worker.local.stt import WHISPER_RATE, load_whisper, transcribe

from .base import StandIn

logger = logging.getLogger(__name__)

Transcriber = Callable[[np.ndarray], str]
"""int16 mono samples at the stream's sample rate -> what was said ("" for no words). Blocking:
the stand-in runs it in a thread."""

FRAME = 0.02
"""Seconds per frame of speech detection, and per window of the clip matcher's envelope."""
HOP = 0.005
"""Seconds between the clip matcher's envelope frames."""
MALFORMED = '{"type": "Results", "channel_index": [0, 1], "duration": '
"""What `Faults.malformed` sends: a message cut off mid-JSON."""
DRAIN_SECONDS = 10.0
"""How long `CloseStream` waits (besides `Faults.latency`) for pending results."""


def log_envelope(samples: np.ndarray, rate: int, hop: float = HOP) -> np.ndarray:
    """Energy of 20 ms windows every `hop` seconds, in dB (digital silence is 0 dB). A hop
    finer than the window makes it nearly blind to where the windows happen to fall."""
    window, step = round(rate * FRAME), max(1, round(rate * hop))
    if len(samples) < window:
        return np.zeros(0)
    sums = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    starts = np.arange(0, len(samples) - window + 1, step)
    energy: np.ndarray = 10.0 * np.log10((sums[starts + window] - sums[starts]) / window + 1.0)
    return energy


def _trim(envelope: np.ndarray, floor_db: float) -> np.ndarray:
    loud = np.flatnonzero(envelope >= floor_db)
    return envelope[loud[0] : loud[-1] + 1] if loud.size else envelope[:0]


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b)) / norm if norm > 0 else 0.0


class ClipMatcher:
    """Transcribes by recognising which known clip (the fixture audio a test plays) was heard.

    A segment's log-energy envelope is correlated with each clip's over a small lag range
    around the clip's start and around its end, so a segment cut slightly differently from the
    clip still matches, and so does one covering only its start (an interim) or only its end
    (speech after a `Finalize` or a reconnection): those get the words in proportion. A segment
    that matches no clip as heard is tried again with the quiet frames of it and the clips left
    out, so audio that stalled on the way (a loaded machine: the receiver's jitter buffer fills
    the gap with silence) still matches. A segment that matches no clip well enough, or is much
    shorter than every clip (a cough), gets "".
    """

    def __init__(
        self,
        clips: Sequence[tuple[np.ndarray, str]],
        rate: int = 16000,
        *,
        min_score: float = 0.9,
        max_lag: float = 0.2,
        min_length: float = 0.5,
        speech_rms: float = 100.0,
    ) -> None:
        """`min_length`: the shortest segment worth matching, as a fraction of the shortest
        clip; `speech_rms`: the level below which a clip's edges count as silence."""
        self.rate = rate
        self.min_score = min_score
        self._floor_db = 20.0 * float(np.log10(speech_rms))
        self._max_lag = round(max_lag / HOP)
        self._clips = [(_trim(log_envelope(s, rate), self._floor_db), text) for s, text in clips]
        self._voiced_clips = [(self._voiced(env), text) for env, text in self._clips]
        self._min_frames = min_length * min(len(env) for env, _ in self._clips)
        self.heard: list[tuple[float, float]] = []
        """(seconds of speech, best score) of each segment matched: why one was not."""

    def __call__(self, samples: np.ndarray) -> str:
        segment = _trim(log_envelope(samples, self.rate), self._floor_db)
        if len(segment) < max(self._min_frames, FRAME / HOP):
            return ""
        top, text = self._match(segment, self._clips)
        if not text:
            top_voiced, text = self._match(self._voiced(segment), self._voiced_clips)
            top = max(top, top_voiced)
        self.heard.append((round(len(segment) * HOP, 2), round(top, 3)))
        return text

    def _voiced(self, envelope: np.ndarray) -> np.ndarray:
        return envelope[envelope >= self._floor_db]

    def _match(
        self, segment: np.ndarray, clips: Sequence[tuple[np.ndarray, str]]
    ) -> tuple[float, str]:
        """(best score, the words of the best clip the segment covers, or "")."""
        n = len(segment)
        best_score, best_text, best_span = self.min_score, "", (0.0, 0.0)
        top = -1.0
        for clip, text in clips:
            m = len(clip)
            lags = set(range(-self._max_lag, self._max_lag + 1))
            lags |= set(range(m - n - self._max_lag, m - n + self._max_lag + 1))
            for lag in sorted(lags):
                # segment[i] lines up with clip[i + lag]; most of the segment must be covered
                first, last = max(0, -lag), min(n, m - lag)
                if last - first < 0.8 * n:
                    continue
                score = _ncc(segment[first:last], clip[first + lag : last + lag])
                top = max(top, score)
                if score > best_score:
                    best_score, best_text = score, text
                    best_span = ((first + lag) / m, (last + lag) / m)
        words = best_text.split()
        start = 0 if best_span[0] <= 0.1 else round(len(words) * best_span[0])
        end = len(words) if best_span[1] >= 0.9 else round(len(words) * best_span[1])
        return top, " ".join(words[start:end])


class WhisperTranscriber:
    """Transcribes with the worker's bundled faster-whisper model (loaded as the worker loads
    it, assembled into the model cache on first use) and its hallucination filter."""

    def __init__(
        self, *, rate: int = 16000, language: str = "en", threads: int | None = None
    ) -> None:
        self.rate = rate
        self._language = language
        self._model = load_whisper(None, threads=threads or default_threads())

    def __call__(self, samples: np.ndarray) -> str:
        audio = samples.astype(np.float32) / 32768.0
        if self.rate != WHISPER_RATE:
            at = np.linspace(0, len(audio) - 1, round(len(audio) * WHISPER_RATE / self.rate))
            audio = np.interp(at, np.arange(len(audio)), audio).astype(np.float32)
        return transcribe(self._model, audio, self._language)


@dataclass(frozen=True)
class ListenOptions:
    """The query options the stand-in acts on (the raw query is recorded with the connection).
    Defaults are Deepgram's where it has one
    (https://developers.deepgram.com/reference/listen-live): no interim results, VAD events or
    punctuation, 10 ms endpointing, the `base` model."""

    model: str
    language: str
    encoding: str
    sample_rate: int
    channels: int
    interim_results: bool
    vad_events: bool
    punctuate: bool
    endpointing: float | None
    """Seconds of silence that make a final result `speech_final`; None when disabled."""
    utterance_end: float | None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListenOptions:
        """Raises ValueError, which the handshake answers with a 400 like Deepgram's."""

        def flag(name: str) -> bool:
            return query.get(name, "false").lower() == "true"

        endpointing = query.get("endpointing", "10")
        utterance_end = query.get("utterance_end_ms")
        options = cls(
            model=query.get("model", "base"),
            language=query.get("language", "en"),
            encoding=query.get("encoding", "linear16"),
            sample_rate=int(query.get("sample_rate", "16000")),
            channels=int(query.get("channels", "1")),
            interim_results=flag("interim_results"),
            vad_events=flag("vad_events"),
            punctuate=flag("punctuate") or flag("smart_format"),
            endpointing=None if endpointing.lower() == "false" else int(endpointing) / 1000,
            utterance_end=int(utterance_end) / 1000 if utterance_end else None,
        )
        if options.encoding != "linear16":
            raise ValueError(f"the stand-in only decodes linear16, not {options.encoding}")
        if options.sample_rate < 50 or options.channels < 1:
            raise ValueError("sample_rate and channels must be positive")
        return options


@dataclass
class Connection:
    """What one WebSocket carried (the body of its `connect` record)."""

    request_id: str
    options: ListenOptions
    audio_bytes: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every message sent, in order (except a malformed one)."""
    results: list[tuple[bool, str]] = field(default_factory=list)
    """(is_final, transcript) of every `Results` sent."""
    malformed: int = 0


@dataclass(frozen=True)
class _SpeechStarted:
    timestamp: float


@dataclass(frozen=True)
class _Speech:
    """Speech heard from `start` to `end` (stream seconds), for a result covering `span`."""

    samples: np.ndarray
    start: float
    end: float
    span: tuple[float, float]
    is_final: bool
    speech_final: bool = False
    from_finalize: bool = False


@dataclass(frozen=True)
class _UtteranceEnd:
    last_word_end: float


_Event = _SpeechStarted | _Speech | _UtteranceEnd


class _Segmenter:
    """Cuts a stream into utterances by 20 ms frame energy: speech starts at the first loud
    frame and ends after `hangover` seconds of quiet, so pauses between words do not split it.
    Its clock is the audio received, which is the timeline Deepgram's timestamps use."""

    def __init__(
        self,
        rate: int,
        *,
        speech_rms: float,
        hangover: float,
        interim_every: float | None,
        endpointing: float | None,
        utterance_end: float | None,
    ) -> None:
        self.rate = rate
        self.size = round(rate * FRAME)
        self.speech_rms = speech_rms
        self.hangover = round(max(hangover, endpointing or 0.0) / FRAME)
        self.interim_every = round(interim_every / FRAME) if interim_every else None
        self.endpointing = endpointing
        self.utterance_end = utterance_end
        self.pending = np.zeros(0, np.int16)
        self.clock = 0
        """Samples framed so far."""
        self.span_start = 0
        """Where the next result's span begins (the end of the last final)."""
        self.frames: list[np.ndarray] | None = None
        """The current utterance's frames, None between utterances."""
        self.speech_start = 0
        self.voiced = 0
        """Frames of the utterance up to its last loud one."""
        self.quiet = 0
        self.next_interim = 0
        self.utterance_end_at: int | None = None
        self.last_word_end = 0.0

    def feed(self, samples: np.ndarray) -> list[_Event]:
        data = np.concatenate([self.pending, samples])
        whole = len(data) // self.size * self.size
        self.pending = data[whole:]
        events: list[_Event] = []
        for frame in data[:whole].reshape(-1, self.size):
            events.extend(self._frame(frame))
        return events

    def flush(self) -> list[_Event]:
        """`Finalize`: the speech so far as a final, or an empty final for audio without any."""
        if self.frames is not None:
            return [self._end(from_finalize=True)]
        if self.clock == self.span_start:
            return []
        span = (self.span_start / self.rate, self.clock / self.rate)
        self.span_start = self.clock
        return [_Speech(np.zeros(0, np.int16), span[1], span[1], span, True, from_finalize=True)]

    def close(self) -> list[_Event]:
        """`CloseStream`: the pending utterance, if any, as a final."""
        return [self._end(from_finalize=False)] if self.frames is not None else []

    def _frame(self, frame: np.ndarray) -> list[_Event]:
        loud = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) >= self.speech_rms
        start = self.clock
        self.clock += self.size
        events: list[_Event] = []
        if self.frames is None:
            if not loud:
                if self.utterance_end_at is not None and self.clock >= self.utterance_end_at:
                    self.utterance_end_at = None
                    events.append(_UtteranceEnd(self.last_word_end))
                return events
            self.frames, self.speech_start, self.voiced, self.quiet = [], start, 0, 0
            self.next_interim = self.interim_every or 0
            self.utterance_end_at = None
            events.append(_SpeechStarted(start / self.rate))
        self.frames.append(frame)
        if loud:
            self.voiced, self.quiet = len(self.frames), 0
        else:
            self.quiet += 1
        if self.quiet >= self.hangover:
            events.append(self._end(from_finalize=False))
        elif self.interim_every and len(self.frames) >= self.next_interim:
            self.next_interim += self.interim_every
            events.append(self._speech(is_final=False))
        return events

    def _speech(
        self, *, is_final: bool, speech_final: bool = False, from_finalize: bool = False
    ) -> _Speech:
        assert self.frames is not None
        heard = self.frames[: self.voiced]
        return _Speech(
            np.concatenate(heard) if heard else np.zeros(0, np.int16),
            start=self.speech_start / self.rate,
            end=(self.speech_start + self.voiced * self.size) / self.rate,
            span=(self.span_start / self.rate, self.clock / self.rate),
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
        )

    def _end(self, *, from_finalize: bool) -> _Speech:
        endpoint = self.endpointing is not None and self.quiet * FRAME >= self.endpointing
        speech = self._speech(is_final=True, speech_final=endpoint, from_finalize=from_finalize)
        if self.utterance_end is not None and self.voiced:
            self.last_word_end = speech.end
            self.utterance_end_at = round((speech.end + self.utterance_end) * self.rate)
        self.span_start = self.clock
        if not from_finalize or endpoint:
            self.frames = None
            return speech
        # a Finalize before the endpoint: the speech goes on (no new SpeechStarted), and its
        # endpoint still comes, as a final of whatever follows
        self.frames, self.speech_start, self.voiced = [], self.clock, 0
        return speech


class DeepgramStandIn(StandIn):
    """Serves `GET /v1/listen` (pass `url` as the plugin's `base_url`).

    Faults, as the plugin sees them: `status` refuses the handshake with that status (a 4xx
    is final for the plugin, a 5xx is retried); `drop_after` aborts the TCP connection (no close
    frame) that many seconds into the next connection or the current one; `latency` holds each
    final result until that long after its utterance ended; `malformed` sends one cut-off JSON
    message in place of the next message; `no_answer` accepts audio and sends nothing, not even
    the close after `CloseStream`.
    """

    def __init__(
        self,
        *,
        api_key: str,
        transcriber: Transcriber,
        speech_rms: float = 100.0,
        hangover: float = 0.35,
        interim_every: float = 0.6,
    ) -> None:
        """`speech_rms`: the frame level (int16 RMS) that counts as speech; `hangover`: seconds
        of quiet that end an utterance (a longer `endpointing` option lengthens it for its
        connection); `interim_every`: seconds of speech between interims."""
        super().__init__(api_key=api_key)
        self.transcriber = transcriber
        self.speech_rms = speech_rms
        self.hangover = hangover
        self.interim_every = interim_every
        self._sessions: set[_Session] = set()

    @property
    def url(self) -> str:
        return f"{self.origin}/v1/listen"

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/listen", self._listen)]

    @property
    def connections(self) -> list[Connection]:
        """The accepted WebSockets, oldest first."""
        return [r.body for r in self.of_kind("connect") if isinstance(r.body, Connection)]

    @property
    def results(self) -> list[tuple[bool, str]]:
        """(is_final, transcript) of every `Results` sent, over all connections."""
        return [result for connection in self.connections for result in connection.results]

    async def close(self) -> None:
        for session in list(self._sessions):
            await session.shutdown()
        await super().close()

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        entry = self.record("connect", request)
        request_id = str(uuid.uuid4())
        options = self._refusal(request)
        if not isinstance(options, ListenOptions):
            status, code, message = options
            body = {"err_code": code, "err_msg": message, "request_id": request_id}
            entry.outcome, entry.body = "rejected", body
            headers = {"dg-request-id": request_id, "dg-error": message}
            return web.json_response(body, status=status, headers=headers)
        ws = web.WebSocketResponse(timeout=1.0)
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        entry.body = connection = Connection(request_id, options)
        session = _Session(self, request, ws, connection)
        self._sessions.add(session)
        try:
            entry.outcome = await session.run()
        finally:
            self._sessions.discard(session)
        return ws

    def _refusal(self, request: web.Request) -> ListenOptions | tuple[int, str, str]:
        """The options of an acceptable handshake, or why it is refused: the status, and the
        `err_code` and `err_msg` of a body like Deepgram's
        (https://developers.deepgram.com/reference/errors)."""
        if self.faults.status is not None:
            try:
                code = HTTPStatus(self.faults.status).phrase
            except ValueError:
                code = "Error"
            return self.faults.status, code, "The stand-in refuses connections (a fault)."
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return 401, "INVALID_AUTH", "Invalid credentials."
        try:
            return ListenOptions.parse(request.query)
        except ValueError as e:
            return 400, "Bad Request", str(e)


class _Session:
    """One accepted WebSocket: reads audio and control messages while a sender task answers in
    order, transcribing in threads, so a slow transcriber never stalls the reading."""

    def __init__(
        self,
        standin: DeepgramStandIn,
        request: web.Request,
        ws: web.WebSocketResponse,
        conn: Connection,
    ) -> None:
        self.standin, self.faults, self.request, self.ws = standin, standin.faults, request, ws
        self.conn, self.options = conn, conn.options
        self.segmenter = _Segmenter(
            self.options.sample_rate,
            speech_rms=standin.speech_rms,
            hangover=standin.hangover,
            interim_every=standin.interim_every if self.options.interim_results else None,
            endpointing=self.options.endpointing,
            utterance_end=self.options.utterance_end if self.options.interim_results else None,
        )
        self.jobs: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self.transcripts = 0
        """Transcript jobs queued so far: an interim is skipped once a newer one is queued."""
        self.sha256 = hashlib.sha256()
        self.created = datetime.now(UTC)
        self.remainder = b""
        self.completed = self.dropped = False
        self.drop: asyncio.Task[None] | None = None
        self.sender: asyncio.Task[None] | None = None

    async def run(self) -> str:
        """Serve until the stream closes; how it ended, for the `connect` record."""
        self.sender = asyncio.create_task(self._send_jobs())
        try:
            await self._receive()
        finally:
            for task in (self.sender, self.drop):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in (self.sender, self.drop) if t), return_exceptions=True
            )
            if not self.ws.closed:
                await self.ws.close()
        if self.dropped:
            return "dropped"
        return "completed" if self.completed else "cancelled"

    async def shutdown(self) -> None:
        """Close for the server's shutdown (code 1001, going away), without waiting long."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.ws.close(code=WSCloseCode.GOING_AWAY)

    async def _receive(self) -> None:
        async for msg in self.ws:
            self._arm_drop()
            if msg.type is WSMsgType.BINARY:
                self._audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                if await self._control(msg.data):
                    return
            else:  # ERROR: the connection failed under us
                return

    def _arm_drop(self) -> None:
        if self.drop is None and self.faults.drop_after is not None:
            delay = self.faults.take_drop()
            assert delay is not None
            self.drop = asyncio.create_task(self._drop_in(delay))

    async def _drop_in(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.dropped = True
        if self.request.transport is not None:
            self.request.transport.abort()

    def _audio(self, data: bytes) -> None:
        self.conn.audio_bytes += len(data)
        self.sha256.update(data)
        data = self.remainder + data
        whole = len(data) - len(data) % (2 * self.options.channels)
        self.remainder = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2")
        if self.options.channels > 1:
            samples = samples.reshape(-1, self.options.channels).mean(axis=1).astype(np.int16)
        self._enqueue(self.segmenter.feed(samples))

    async def _control(self, text: str) -> bool:
        """Handle a text message; True once the stream is closed (`CloseStream`)."""
        try:
            message: Any = json.loads(text)
        except ValueError:
            message = text
        self.standin.record("message", self.request, body=message)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Finalize":
            self._enqueue(self.segmenter.flush())
        elif kind == "CloseStream" and not self.faults.no_answer:
            await self._close_stream()
            return True
        return False  # KeepAlive, or anything Deepgram would ignore

    async def _close_stream(self) -> None:
        """Send the pending finals and the `Metadata` summary, then close normally."""
        self._enqueue(self.segmenter.close())
        self.jobs.put_nowait(functools.partial(self._send, self._metadata()))
        self.jobs.put_nowait(None)
        assert self.sender is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.faults.latency + DRAIN_SECONDS):
                await asyncio.shield(self.sender)
        self.completed = True
        await self.ws.close()

    def _enqueue(self, events: list[_Event]) -> None:
        for event in events:
            if isinstance(event, _Speech):
                self.transcripts += 1
                job = functools.partial(
                    self._transcript, event, self.transcripts, asyncio.get_running_loop().time()
                )
                self.jobs.put_nowait(job)
            elif isinstance(event, _SpeechStarted):
                if self.options.vad_events:
                    self.jobs.put_nowait(functools.partial(self._send, self._speech_started(event)))
            else:
                self.jobs.put_nowait(functools.partial(self._send, self._utterance_end(event)))

    async def _send_jobs(self) -> None:
        while (job := await self.jobs.get()) is not None:
            try:
                await job()
            except Exception:
                # a transcriber failure: Deepgram closes with 1011 on internal errors
                logger.exception("the Deepgram stand-in failed to answer")
                await self.ws.close(code=WSCloseCode.INTERNAL_ERROR)
                return

    async def _transcript(self, speech: _Speech, serial: int, ended_at: float) -> None:
        if not speech.is_final and serial != self.transcripts:
            return  # a newer transcript of the stream is queued: this one is stale
        if speech.is_final:
            waited = asyncio.get_running_loop().time() - ended_at
            await asyncio.sleep(max(0.0, self.faults.latency - waited))
        text = ""
        if speech.samples.size:
            text = await asyncio.to_thread(self.standin.transcriber, speech.samples)
        await self._send(self._results(speech, text))

    async def _send(self, message: dict[str, Any]) -> None:
        if self.faults.no_answer or self.ws.closed:
            return
        malformed = self.faults.take_malformed()
        try:
            await self.ws.send_str(MALFORMED if malformed else json.dumps(message))
        except ConnectionError:
            return  # the client went away: there is no one to answer
        if malformed:
            self.conn.malformed += 1
            return
        self.conn.sent.append(message)
        if message["type"] == "Results":
            transcript = message["channel"]["alternatives"][0]["transcript"]
            self.conn.results.append((message["is_final"], transcript))

    def _channel(self) -> list[int]:
        """[channel index, channel count], as `channel_index` and `channel` give it."""
        return [0, self.options.channels]

    def _results(self, speech: _Speech, text: str) -> dict[str, Any]:
        tokens = text.split()
        weights = np.cumsum([0] + [len(t) + 1 for t in tokens])
        times = speech.start + (speech.end - speech.start) * weights / max(int(weights[-1]), 1)
        words = []
        for token, start, end in zip(tokens, times[:-1], times[1:], strict=True):
            word: dict[str, Any] = {
                "word": re.sub(r"[^\w']", "", token).lower(),
                "start": round(float(start), 4),
                "end": round(float(end), 4),
                "confidence": 0.99,
            }
            if self.options.punctuate:
                word["punctuated_word"] = token
            words.append(word)
        transcript = text if self.options.punctuate else " ".join(w["word"] for w in words)
        model = self.options.model
        return {
            "type": "Results",
            "channel_index": self._channel(),
            "duration": round(speech.span[1] - speech.span[0], 4),
            "start": round(speech.span[0], 4),
            "is_final": speech.is_final,
            "speech_final": speech.speech_final,
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": 0.99 if words else 0.0, "words": words}
                ]
            },
            "metadata": {
                "request_id": self.conn.request_id,
                "model_info": {"name": f"general-{model}", "version": "stand-in", "arch": model},
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"deepgram-stand-in/{model}")),
            },
            "from_finalize": speech.from_finalize,
        }

    def _speech_started(self, event: _SpeechStarted) -> dict[str, Any]:
        return {"type": "SpeechStarted", "channel": self._channel(), "timestamp": event.timestamp}

    def _utterance_end(self, event: _UtteranceEnd) -> dict[str, Any]:
        return {
            "type": "UtteranceEnd",
            "channel": self._channel(),
            "last_word_end": round(event.last_word_end, 4),
        }

    def _metadata(self) -> dict[str, Any]:
        seconds = self.conn.audio_bytes / (2 * self.options.channels * self.options.sample_rate)
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.conn.request_id,
            "sha256": self.sha256.hexdigest(),
            "created": self.created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(seconds, 4),
            "channels": self.options.channels,
        }
