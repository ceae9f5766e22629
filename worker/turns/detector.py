"""The end-of-turn detector the session asks before it answers the caller.

LiveKit calls `predict_end_of_turn` once the caller has been silent for the VAD's silence window
and has a transcript (again at each later final transcript); a probability below
`unlikely_threshold` makes it wait up to `endpointing.max_delay` for more speech instead of
`min_delay`. Two signals decide, each covering the other's blind spot:

- the transcript: one that stops on a word no sentence ends on ("my account number is", "I'd
  like to change my") is unfinished, however final the voice sounds;
- otherwise Smart Turn hears the turn's audio (from its first word to 200 ms after its last, as
  the model was trained) and judges from the voice whether the caller is done.

The two doubts are not worth the same wait. The words' doubt is nearly always right, and waits
`max_delay`. The voice's alone is wrong on a third to a half of finished turns (synthetic voices,
telephone audio): the detector then waits for more speech itself, up to `voice_max_delay` after
the last word, and calls the turn complete if none came (speech cancels the wait: LiveKit cancels
the decision when the caller speaks again).

Neither signal is asked while the STT still owes the words of the caller's latest speech (a
caller who resumed before the transcript of the first half arrived; local Whisper takes about a
second per segment on 2 cores): judging the first half alone split the sentence. The detector
waits for that transcript (its arrival restarts the decision), at most `TRANSCRIPT_WAIT` after
the last word, or until the STT reports it recognized the speech and found no words. A local STT
that has cut the speech and is recognizing it will answer, only late when the machine is slow
(Whisper base takes 2 s a segment on a slow 2-core machine, queued one after another): it is
waited for up to `RECOGNITION_WAIT`, since a turn judged without its last words is answered
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import LanguageCode, llm

from worker.turns.phrases import ends_mid_sentence
from worker.turns.smart_turn import RATE, THRESHOLD, WINDOW, SmartTurnModel

logger = logging.getLogger("worker.turns")

TRAILING_SILENCE = 0.2
"""Silence after the last word the model hears (Smart Turn's training segments end so)."""
PRE_SPEECH = 0.5
"""Audio kept before the turn's first detected speech (the VAD reports speech late)."""
DECISION_TIMEOUT = 1.0
"""A decision the model has not made by then counts as "complete": never a stuck turn."""
KEEP_AUDIO = WINDOW / RATE + 2.0
TRANSCRIPT_WAIT = 3.0
"""The longest wait, after the last word, for a transcript the STT still owes: then the turn is
judged on the words it has."""
RECOGNITION_WAIT = 10.0
"""The same, once the STT has said it is recognizing that speech (a local STT behind the VAD)."""
WORDS_GRACE = 1.0
"""How long a decision made without words that just arrived waits for the session's next one,
which includes them and cancels it."""


class AudioTap:
    """The caller's audio as the STT hears it, the last `keep` seconds, on the wall clock.

    The stream is continuous (silence is sent as silence), so the newest frame ends when it
    arrived and every earlier one right before the next: a burst of late frames still lands
    where it belongs."""

    def __init__(self, keep: float = KEEP_AUDIO) -> None:
        self._keep = keep
        self._chunks: deque[np.ndarray] = deque()
        self._kept = 0
        self._rate = RATE
        self._last_at = 0.0

    async def tee(self, audio: AsyncIterable[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
        """Pass `audio` through unchanged, keeping a copy of each frame."""
        async for frame in audio:
            self.push(frame)
            yield frame

    def push(self, frame: rtc.AudioFrame, at: float | None = None) -> None:
        if frame.sample_rate != self._rate:
            self._chunks.clear()
            self._kept, self._rate = 0, frame.sample_rate
        samples = _mono(frame)
        self._chunks.append(samples)
        self._kept += len(samples)
        self._last_at = time.time() if at is None else at
        while self._chunks and self._kept - len(self._chunks[0]) >= self._keep * self._rate:
            self._kept -= len(self._chunks.popleft())

    def window(self, start: float, end: float) -> np.ndarray:
        """int16 mono 16 kHz samples heard between two wall-clock times (what is still kept)."""
        if not self._chunks:
            return np.zeros(0, np.int16)
        held = np.concatenate(self._chunks)
        first_at = self._last_at - len(held) / self._rate
        lo = min(len(held), max(0, round((start - first_at) * self._rate)))
        hi = min(len(held), max(lo, round((end - first_at) * self._rate)))
        samples = held[lo:hi]
        return samples if self._rate == RATE else _resample(samples, self._rate)


def _mono(frame: rtc.AudioFrame) -> np.ndarray:
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    return samples


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    resampler = rtc.AudioResampler(rate, RATE, quality=rtc.AudioResamplerQuality.MEDIUM)
    frames = resampler.push(rtc.AudioFrame(samples.tobytes(), rate, 1, len(samples)))
    frames += resampler.flush()
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


class ModelRunner:
    """The process's Smart Turn model behind one worker thread: decisions of every call in the
    process queue there instead of competing for the cores."""

    def __init__(self, model: SmartTurnModel) -> None:
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    async def probability(self, audio: np.ndarray) -> tuple[float, float]:
        """The model's probability, and the seconds its worker thread spent computing it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, audio)

    def _timed(self, audio: np.ndarray) -> tuple[float, float]:
        started = time.perf_counter()
        probability = self.model.probability(audio)
        return probability, time.perf_counter() - started


@dataclass
class Decision:
    """One answer to "is the caller done?", for the call's summary and the benchmark."""

    complete: bool
    reason: str
    """`mid-sentence` (the transcript), `model`, `timeout` or `error`."""
    probability: float
    model_seconds: float = 0.0
    """The model's own computing time (features and inference), in its worker thread."""


@dataclass
class _Turn:
    started_at: float | None = None
    resumed_at: float | None = None
    """When the caller's latest stretch of speech began."""
    speech_ended_at: float | None = None
    cached: dict[tuple[float, float], float] = field(default_factory=dict)


class EndOfTurnDetector:
    """LiveKit's turn-detector protocol (`predict_end_of_turn`), for one call."""

    def __init__(
        self, runner: ModelRunner, *, language: str, vad_silence: float, voice_max_delay: float
    ) -> None:
        self.tap = AudioTap()
        self.decisions: list[Decision] = []
        self._runner = runner
        self._language = language
        self._vad_silence = vad_silence
        self._voice_max_delay = voice_max_delay
        self._turn = _Turn()
        self._warned = False
        self._heard_until = 0.0
        self._heard_words = False
        self._recognizing_until = 0.0
        self._heard = asyncio.Event()

    @property
    def model(self) -> str:
        return "smart-turn-v3.2"

    @property
    def provider(self) -> str:
        return "pipecat"

    async def unlikely_threshold(self, language: LanguageCode | None) -> float:  # noqa: ARG002
        return THRESHOLD

    async def supports_language(self, language: LanguageCode | None) -> bool:  # noqa: ARG002
        return True  # Smart Turn is multilingual; the word lists cover what they know

    # --- what the call reports -------------------------------------------------------------------

    def caller_speaking(self, at: float) -> None:
        if self._turn.started_at is None:
            self._turn.started_at = at
        self._turn.resumed_at = at
        self._turn.speech_ended_at = None

    def caller_silent(self, at: float) -> None:
        """The VAD's end of speech, reported `vad_silence` after the last word."""
        self._turn.speech_ended_at = at - self._vad_silence

    def stt_accounted(self, until: float, *, words: bool) -> None:
        """The STT has answered for the caller's speech up to `until`: a final transcript's end
        of speech (`words`), or the start of a recognition that found none."""
        if until > self._heard_until:
            self._heard_until = until
            self._heard_words = words
            self._heard.set()

    def stt_recognizing(self, until: float) -> None:
        """The STT has cut the caller's speech up to `until` and is recognizing it (a local STT
        behind the VAD): its answer, words or none, is certain, only maybe slow."""
        if until > self._recognizing_until:
            self._recognizing_until = until
            self._heard.set()

    def turn_over(self) -> None:
        """The turn was answered (or the agent took the floor): the next words start a new one."""
        self._turn = _Turn()

    # --- the decision ----------------------------------------------------------------------------

    async def predict_end_of_turn(
        self, chat_ctx: llm.ChatContext, *, timeout: float | None = None
    ) -> float:
        transcript = _last_user_text(chat_ctx)
        await self._await_owed_transcript(transcript)
        if ends_mid_sentence(transcript, self._language):
            return self._decided(Decision(False, "mid-sentence", 0.0), transcript)
        now = time.time()
        turn = self._turn
        end = (
            now
            if turn.speech_ended_at is None
            else min(now, turn.speech_ended_at + TRAILING_SILENCE)
        )
        start = end - WINDOW / RATE
        if turn.started_at is not None:
            start = max(start, turn.started_at - PRE_SPEECH)
        span = (round(start, 3), round(end, 3))
        seconds = 0.0
        if span in turn.cached:  # a later transcript of the same speech: the voice is the same
            probability = turn.cached[span]
        else:
            try:
                audio = self.tap.window(start, end)
                probability, seconds = await asyncio.wait_for(
                    self._runner.probability(audio), timeout or DECISION_TIMEOUT
                )
            except TimeoutError:
                logger.warning("end-of-turn model took over %ss: answering", DECISION_TIMEOUT)
                return self._decided(Decision(True, "timeout", 1.0), transcript)
            except Exception as exc:
                if not self._warned:
                    logger.warning("end-of-turn model failed (%s): answering without it", exc)
                    self._warned = True
                return self._decided(Decision(True, "error", 1.0), transcript)
            turn.cached[span] = probability
        decision = Decision(probability >= THRESHOLD, "model", probability, seconds)
        self._decided(decision, transcript)
        if not decision.complete:
            # only the voice doubts: wait here, up to voice_max_delay after the last word
            spoken_until = now if turn.speech_ended_at is None else turn.speech_ended_at
            await asyncio.sleep(max(0.0, spoken_until + self._voice_max_delay - time.time()))
            return 1.0
        return probability

    async def _await_owed_transcript(self, transcript: str) -> None:
        """Return once the STT has answered for the caller's latest speech, or at the ceiling."""
        turn = self._turn
        if turn.speech_ended_at is None or turn.resumed_at is None:
            return
        owed = False
        while turn.resumed_at > self._heard_until:
            recognizing = self._recognizing_until >= turn.resumed_at
            wait = RECOGNITION_WAIT if recognizing else TRANSCRIPT_WAIT
            if (left := turn.speech_ended_at + wait - time.time()) <= 0:
                logger.info(
                    "end of turn: no transcript of the caller's last words %ss after them%s: "
                    "judging on %r",
                    wait,
                    " (the STT is still recognizing them)" if recognizing else "",
                    transcript[-60:],
                )
                return
            if not owed:
                logger.debug("end of turn: waiting for the words after %r", transcript[-60:])
                owed = True
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), left)
        if owed and self._heard_words:
            # the words are on their way to the session, whose next decision includes them and
            # cancels this one; this decision, on the words without them, is never made
            await asyncio.sleep(WORDS_GRACE)

    def _decided(self, decision: Decision, transcript: str) -> float:
        self.decisions.append(decision)
        logger.debug(
            "end of turn: %s (%s, p=%.2f, %.0f ms) after %r",
            "complete"
            if decision.complete
            else "waiting for more"
            + (f", up to {self._voice_max_delay}s" if decision.reason == "model" else ""),
            decision.reason,
            decision.probability,
            decision.model_seconds * 1000,
            transcript[-60:],
        )
        return decision.probability

    def summary(self) -> dict[str, float]:
        """Counts and the model's median time, for the call's summary log line."""
        timed = sorted(d.model_seconds for d in self.decisions if d.model_seconds)
        return {
            "decisions": len(self.decisions),
            "waited": sum(not d.complete for d in self.decisions),
            "model_ms_p50": round(timed[len(timed) // 2] * 1000, 1) if timed else 0.0,
        }


def _last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return item.text_content or ""
    return ""
