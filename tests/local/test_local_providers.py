"""Each local provider on its own, with its real model."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
from livekit.agents import llm

from tests.harness import Recording, wer
from tests.local.conftest import Transcribe, to_16k_float
from worker.local.llm import LocalLLMServer, _healthy
from worker.local.runtime import default_threads
from worker.local.tts import InProcessPiper, PiperTTS, load_piper
from worker.providers import LOCAL_API_KEY


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def test_whisper_transcribes_a_caller(whisper: Transcribe) -> None:
    caller = Recording.load("caller_basic")
    for utterance in ("question", "barge_in", "goodbye"):
        text = whisper(to_16k_float(caller.clip(utterance), caller.rate), "en")
        assert wer(caller.text(utterance), text) <= 0.2, text


def test_whisper_does_not_invent_words_in_noise_or_silence(whisper: Transcribe) -> None:
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(16000 * 2) * 0.05).astype(np.float32)
    assert whisper(noise, "en") == ""
    assert whisper(np.zeros(16000 * 2, dtype=np.float32), "en") == ""


async def test_piper_speaks_what_it_is_given(whisper: Transcribe) -> None:
    piper = PiperTTS(InProcessPiper(load_piper(None, threads=1)))
    text = "Your order left our warehouse this morning. It arrives on Friday."
    audio = await piper.synthesize(text).collect()
    samples = np.frombuffer(audio.data, dtype=np.int16)
    assert audio.sample_rate == 22050
    assert 3.0 < len(samples) / audio.sample_rate < 8.0
    assert wer(text, whisper(to_16k_float(samples, audio.sample_rate), "en")) <= 0.1
    await piper.aclose()


async def test_the_local_llm_server_answers_through_the_openai_plugin() -> None:
    from livekit.plugins import openai

    server = LocalLLMServer(None, threads=default_threads())
    url = await asyncio.to_thread(server.start)
    try:
        models = await asyncio.to_thread(fetch, f"{url}/models")
        assert b"SmolLM2" in models
        model = openai.LLM(model="local", base_url=url, api_key=LOCAL_API_KEY)
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="system", content="Answer in one short sentence.")
        ctx.add_message(role="user", content="What is the capital of France?")

        @llm.function_tool
        async def end_call() -> None:
            """End the call."""

        text = ""
        async with model.chat(chat_ctx=ctx, tools=[end_call]) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    text += chunk.delta.content
        assert text.strip(), "an agent with tools gets answers from the local model"
        await model.aclose()
    finally:
        server.stop()
    assert not _healthy(url.removesuffix("/v1")), "stopped on exit"
