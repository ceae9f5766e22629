"""The inference process's runners on the real models: a call's Piper and Whisper, asked
through them, speak and hear as the in-process models do."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit.agents import stt

from tests.harness import wer
from worker.local import shared
from worker.local.shared import (
    PiperRunner,
    SharedModels,
    SharedPiper,
    SharedWhisper,
    WhisperRunner,
)
from worker.local.stt import WhisperSTT
from worker.local.tts import PiperTTS


class InThisProcess:
    """The inference process's executor, without the process: each request runs its runner."""

    def __init__(self) -> None:
        self.runners = {
            runner.INFERENCE_METHOD: runner() for runner in (WhisperRunner, PiperRunner)
        }
        for runner in self.runners.values():
            runner.initialize()

    async def do_inference(self, method: str, data: bytes) -> bytes | None:
        return await asyncio.to_thread(self.runners[method].run, data)


async def test_a_call_speaks_and_hears_through_the_shared_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(shared.MODELS_ENV, SharedModels(whispers=(None,), voices=(None,)).to_env())
    executor = InThisProcess()
    piper = PiperTTS(SharedPiper(None, executor=lambda: executor))
    text = "Your order left our warehouse this morning. It arrives on Friday."
    audio = await piper.synthesize(text).collect()
    samples = np.frombuffer(audio.data, dtype=np.int16)
    assert 3.0 < len(samples) / audio.sample_rate < 8.0

    whisper = WhisperSTT(SharedWhisper(None, executor=lambda: executor), language="en")
    event = await whisper.recognize([audio])
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert wer(text, event.alternatives[0].text) <= 0.1, event.alternatives[0].text
    with pytest.raises(ValueError, match="not loaded"):
        executor.runners[shared.WHISPER_METHOD].run(shared.pack({"model": "/no/such"}))
    await piper.aclose()
    await whisper.aclose()
