"""An in-process transport: caller audio from memory, agent audio onto a timeline, events to a
callback. It carries calls that are not in a room (recorded calls, tests) through exactly the
same session, synchronizer and lifecycle as a room call.

Audio runs in real time on the caller's clock: input frames are released at their due time, and
the virtual speaker plays the agent's audio at the speed a listener would hear it, honouring
pause, resume and clear like a room track, so barge-in and truncation behave as they do live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import AgentSession, io
from livekit.agents.voice.transcription import TranscriptSynchronizer

from worker.call.agent import VoiceAgent
from worker.call.lifecycle import Caller, CallTransport
from worker.protocol import EndReason

FRAME_SECONDS = 0.02


class CallClock:
    """Seconds since the call's audio started; input and output share it."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start


class PacedAudioInput(io.AudioInput):
    """Caller audio released in real time, in 20 ms frames; silence whenever nothing plays."""

    def __init__(self, clock: CallClock, *, sample_rate: int = 16000) -> None:
        super().__init__(label="PacedAudioInput")
        self.sample_rate = sample_rate
        self._clock = clock
        self._frame_samples = int(sample_rate * FRAME_SECONDS)
        self._pending: list[tuple[np.ndarray, asyncio.Future[float]]] = []
        self._cursor = 0
        self._frames_out = 0
        self._closed = False

    def play(self, samples: np.ndarray) -> asyncio.Future[float]:
        """Queue int16 mono samples; the future resolves with the call time they finished."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending.append((samples.astype(np.int16), done))
        return done

    def close(self) -> None:
        """End the input: the session sees the stream finish."""
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        due = (self._frames_out + 1) * FRAME_SECONDS
        delay = due - self._clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        self._frames_out += 1
        return rtc.AudioFrame(
            data=self._next_samples().tobytes(),
            sample_rate=self.sample_rate,
            num_channels=1,
            samples_per_channel=self._frame_samples,
        )

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(self._frame_samples, dtype=np.int16)
        filled = 0
        while filled < self._frame_samples and self._pending:
            samples, done = self._pending[0]
            take = min(self._frame_samples - filled, len(samples) - self._cursor)
            out[filled : filled + take] = samples[self._cursor : self._cursor + take]
            filled += take
            self._cursor += take
            if self._cursor >= len(samples):
                self._pending.pop(0)
                self._cursor = 0
                if not done.done():
                    done.set_result(self._clock.now())
        return out


class VirtualSpeaker(io.AudioOutput):
    """Plays the agent's audio in real time onto a timeline aligned with the caller's clock."""

    def __init__(self, clock: CallClock, *, sample_rate: int = 24000) -> None:
        super().__init__(
            label="VirtualSpeaker",
            capabilities=io.AudioOutputCapabilities(pause=True),
            sample_rate=sample_rate,
        )
        self._clock = clock
        self._rate = sample_rate
        self._buffer = bytearray()
        self._timeline = bytearray()  # int16 samples played, silence included, from time 0
        self._paused = False
        self._in_segment = False
        self._flushed = False
        self._interrupted = False
        self._started = False
        self._played = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def timeline(self) -> np.ndarray:
        """Everything played so far as int16 samples at `sample_rate`, index 0 = call time 0."""
        return np.frombuffer(bytes(self._timeline), dtype=np.int16)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._ensure_running()
        self._in_segment = True
        if not self._interrupted:
            self._buffer += frame.data.tobytes()

    def flush(self) -> None:
        super().flush()
        if not self._in_segment:
            return
        self._flushed = True
        if self._interrupted or not self._buffer:
            self._finish(interrupted=self._interrupted)

    def clear_buffer(self) -> None:
        if not self._in_segment:
            return
        self._buffer.clear()
        self._interrupted = True
        if self._flushed:
            self._finish(interrupted=True)

    def pause(self) -> None:
        super().pause()
        self._paused = True

    def resume(self) -> None:
        super().resume()
        self._paused = False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _ensure_running(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._playout(), name="virtual_speaker")

    async def _playout(self) -> None:
        """Advance the timeline to the clock, taking samples from the buffer unless paused."""
        while True:
            target = int(self._clock.now() * self._rate)
            missing = target - len(self._timeline) // 2
            if missing > 0:
                self._play(missing)
            await asyncio.sleep(0.01)

    def _play(self, samples: int) -> None:
        take = 0 if self._paused else min(samples * 2, len(self._buffer))
        if take:
            if not self._started:
                self._started = True
                self.on_playback_started(created_at=time.time())
            self._timeline += self._buffer[:take]
            del self._buffer[:take]
            self._played += take / 2 / self._rate
        self._timeline += bytes(samples * 2 - take)
        if self._in_segment and self._flushed and not self._buffer:
            self._finish(interrupted=False)

    def _finish(self, *, interrupted: bool) -> None:
        played = self._played
        self._in_segment = self._flushed = self._interrupted = self._started = False
        self._played = 0.0
        self.on_playback_finished(playback_position=played, interrupted=interrupted)


EventSink = Callable[[bytes], Awaitable[None] | None]


class LocalTransport(CallTransport):
    """A call with one in-process caller, whose audio comes from `audio_in`."""

    label = "local"

    def __init__(
        self,
        *,
        audio_in: PacedAudioInput,
        speaker: VirtualSpeaker,
        on_event: EventSink,
        caller: Caller | None = None,
    ) -> None:
        super().__init__()
        self.audio_in = audio_in
        self.speaker = speaker
        self.caller = caller or Caller(identity="local-caller")
        self._on_event = on_event
        self._sync: TranscriptSynchronizer | None = None
        self.closed: asyncio.Future[EndReason | None] = asyncio.get_running_loop().create_future()

    async def wait_for_caller(self, timeout: float) -> Caller | None:  # noqa: ARG002
        return self.caller

    async def start(self, session: AgentSession[Any], agent: VoiceAgent, caller: Caller) -> None:  # noqa: ARG002
        # the same truncation of interrupted text as RoomIO, which uses this synchronizer too
        self._sync = TranscriptSynchronizer(
            next_in_chain_audio=self.speaker, next_in_chain_text=None
        )
        session.input.audio = self.audio_in
        session.output.audio = self._sync.audio_output
        session.output.transcription = self._sync.text_output
        await session.start(agent)

    async def send(self, packet: bytes) -> None:
        result = self._on_event(packet)
        if result is not None:
            await result

    async def close(self, reason: EndReason | None) -> None:
        self.audio_in.close()
        if self._sync is not None:
            await self._sync.aclose()
        await self.speaker.aclose()
        if not self.closed.done():
            self.closed.set_result(reason)

    # what a caller can do besides speaking
    def send_data(self, data: bytes, *, sender: str | None = None, topic: str = "") -> None:
        if self.listener is not None:
            self.listener.data_received(
                data, sender=self.caller.identity if sender is None else sender, topic=topic
            )

    def hang_up(self, detail: str = "caller hung up") -> None:
        if self.listener is not None:
            self.listener.caller_left(detail)
