"""Tests with the real local models (Whisper, SmolLM2 through llama.cpp, Piper)."""

from __future__ import annotations

import functools
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from livekit import rtc

from worker.local.runtime import default_threads
from worker.local.stt import load_whisper, transcribe

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


@pytest.fixture(scope="session")
def whisper_model() -> WhisperModel:
    return load_whisper(None, threads=default_threads())


Transcribe = Callable[[np.ndarray, str], str]
"""Blocking: float32 16 kHz samples and a language to text, as the worker's Whisper hears them."""


@pytest.fixture(scope="session")
def whisper(whisper_model: WhisperModel) -> Transcribe:
    return functools.partial(transcribe, whisper_model)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def speech_segments(samples: np.ndarray, rate: int, *, gap: float = 0.4) -> list[np.ndarray]:
    """The stretches of `samples` that are not silent, cut at silences of `gap` seconds."""
    frame = rate // 50
    loud = [
        float(np.sqrt(np.mean(samples[i : i + frame].astype(np.float64) ** 2))) > 100
        for i in range(0, len(samples) - frame, frame)
    ]
    segments, start, quiet = [], None, 0
    for index, is_loud in enumerate([*loud, False]):
        if is_loud:
            start = index if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.02 >= gap or index == len(loud):
                segments.append(samples[start * frame : (index - quiet + 1) * frame])
                start, quiet = None, 0
    return segments


def to_16k_float(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate != 16000:
        resampler = rtc.AudioResampler(rate, 16000, quality=rtc.AudioResamplerQuality.HIGH)
        frames = resampler.push(rtc.AudioFrame(samples.tobytes(), rate, 1, len(samples)))
        frames += resampler.flush()
        samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    return samples.astype(np.float32) / 32768.0
