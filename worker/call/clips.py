"""Lines the agent plays from a recording instead of its TTS.

The apology that ends a call whose provider stage has failed for good (`messages.error_goodbye`)
must be heard even when the TTS is what failed, so it is rendered ahead of time: the worker ships
one for the default text, and `python -m worker render-apology --agent ID` renders an agent's own
line with the agent's own voice.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import tts
from livekit.agents.utils import http_context

from worker.audio_files import Audio, read_wav

CLIP_RATE = 24000
"""The room output rate: clips are resampled to it once, when loaded."""
FRAME_SECONDS = 0.02


@functools.cache
def load_clip(path: Path) -> Audio:
    """The clip at `CLIP_RATE`, read once per process."""
    return _resampled(read_wav(path))


def _resampled(audio: Audio) -> Audio:
    if audio.rate == CLIP_RATE:
        return audio
    resampler = rtc.AudioResampler(audio.rate, CLIP_RATE, quality=rtc.AudioResamplerQuality.HIGH)
    frames = resampler.push(
        rtc.AudioFrame(audio.samples.tobytes(), audio.rate, 1, len(audio.samples))
    )
    frames += resampler.flush()
    samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    return Audio(samples, CLIP_RATE)


async def render(text: str, voice: tts.TTS[Any]) -> Audio:
    """`text` spoken by `voice`, at `CLIP_RATE`: how an agent's apology gets its recording."""
    async with http_context.open(), voice:  # outside a job: the plugins' HTTP session
        frame = await voice.synthesize(text).collect()
    audio = Audio(np.frombuffer(frame.data, dtype=np.int16).copy(), frame.sample_rate)
    return _resampled(audio)


async def clip_frames(audio: Audio) -> AsyncIterator[rtc.AudioFrame]:
    """The clip as 20 ms frames, what `AgentSession.say(audio=...)` plays."""
    step = int(audio.rate * FRAME_SECONDS)
    for start in range(0, len(audio.samples), step):
        chunk = audio.samples[start : start + step]
        yield rtc.AudioFrame(chunk.tobytes(), audio.rate, 1, len(chunk))
