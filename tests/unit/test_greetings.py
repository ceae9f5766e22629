"""The greeting cache: a whole rendering by the agent's first voice is kept and read back; a cut,
a fallback voice, other words or a broken file keep nothing and cost the call nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import tts

from tests.fakes import FakeTTS
from tests.harness import make_agent
from worker.call.greetings import GreetingCache, GreetingCapture
from worker.config import AgentRegistry
from worker.server import VoiceWorker, check_greetings
from worker.settings import SettingsError, WorkerSettings

GREETING = "Hello, this is the test agent."
AGENT = make_agent()
VOICES = AGENT.tts


def frames(count: int = 3, rate: int = 24000) -> list[rtc.AudioFrame]:
    size = rate // 50
    return [
        rtc.AudioFrame(np.full(size, 100 * (i + 1), np.int16).tobytes(), rate, 1, size)
        for i in range(count)
    ]


async def stream(items: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for item in items:
        yield item


async def words(*chunks: str) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk


async def render(
    capture: GreetingCapture, text: tuple[str, ...], audio: list[rtc.AudioFrame]
) -> int:
    """Feed the capture as the TTS node does: the text read, then every frame passed on."""
    async for _ in capture.read(words(*text)):
        pass
    return len([frame async for frame in capture.tee(stream(audio))])


def kept_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_key_is_the_text_and_every_voice() -> None:
    cache = GreetingCache(Path("/cache"))
    other_voice = make_agent(tts=[{"provider": "elevenlabs", "voice": "another"}]).tts
    assert cache.path(VOICES, GREETING) == cache.path(make_agent().tts, GREETING)
    assert cache.path(VOICES, GREETING) != cache.path(VOICES, "Hi, this is the test agent.")
    assert cache.path(VOICES, GREETING) != cache.path(other_voice, GREETING)
    assert cache.path(VOICES, GREETING).parent == Path("/cache")


async def test_a_whole_rendering_is_kept_and_played_by_the_next_call(tmp_path: Path) -> None:
    cache = GreetingCache(tmp_path / "greetings")
    audio, capture = cache.for_call(AGENT, GREETING, FakeTTS())
    assert audio is None
    assert capture is not None
    rendered = frames()
    assert await render(capture, ("Hello, this is ", "the test agent."), rendered) == 3
    kept, again = cache.for_call(AGENT, GREETING, FakeTTS())
    assert again is None
    assert kept is not None
    assert kept.rate == 24000
    expected = np.concatenate([np.frombuffer(f.data, np.int16) for f in rendered])
    assert np.array_equal(kept.samples, expected)
    assert kept_files(tmp_path / "greetings") == [cache.path(VOICES, GREETING).name], (
        "no temporary file is left"
    )


async def test_a_rendering_cut_short_is_not_kept(tmp_path: Path) -> None:
    cache = GreetingCache(tmp_path)
    _, capture = cache.for_call(AGENT, GREETING, FakeTTS())
    assert capture is not None
    async for _ in capture.read(words(GREETING)):
        pass
    tee = capture.tee(stream(frames()))
    await anext(tee)
    await tee.aclose()  # what the session does to a greeting the caller talks over
    assert kept_files(tmp_path) == []


async def test_a_greeting_said_by_a_fallback_voice_is_not_kept(tmp_path: Path) -> None:
    voice = tts.FallbackAdapter([FakeTTS(), FakeTTS()])
    cache = GreetingCache(tmp_path)
    _, capture = cache.for_call(AGENT, GREETING, voice)
    assert capture is not None

    async def failing_over() -> AsyncIterator[rtc.AudioFrame]:
        voice.emit(  # what the adapter says when its first voice fails
            "tts_availability_changed",
            tts.AvailabilityChangedEvent(tts=voice._tts_instances[0], available=False),
        )
        for frame in frames():
            yield frame

    async for _ in capture.read(words(GREETING)):
        pass
    assert len([f async for f in capture.tee(failing_over())]) == 3
    assert kept_files(tmp_path) == []


async def test_a_first_rendering_of_other_words_is_not_kept(tmp_path: Path) -> None:
    cache = GreetingCache(tmp_path)
    _, capture = cache.for_call(AGENT, GREETING, FakeTTS())
    assert capture is not None
    await render(capture, ("Sorry, could you say that again?",), frames())
    assert kept_files(tmp_path) == []


def test_a_greeting_made_personal_by_its_call_is_neither_played_nor_kept(tmp_path: Path) -> None:
    agent = make_agent(greeting="Hi {customer_name}!", placeholders={"customer_name": "there"})
    cache = GreetingCache(tmp_path)
    assert cache.for_call(agent, "Hi Sam!", FakeTTS()) == (None, None)
    audio, capture = cache.for_call(agent, "Hi there!", FakeTTS())  # the agent's own default
    assert audio is None
    assert capture is not None


def test_a_broken_file_is_said_and_rendered_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = GreetingCache(tmp_path)
    cache.path(VOICES, GREETING).write_bytes(b"not a wav file")
    audio, capture = cache.for_call(AGENT, GREETING, FakeTTS())
    assert audio is None
    assert capture is not None
    assert "greeting cache" in caplog.text
    assert "not a PCM WAV file" in caplog.text


async def test_a_cache_that_cannot_be_written_costs_only_the_saving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    cache = GreetingCache(blocked / "greetings")
    _, capture = cache.for_call(AGENT, GREETING, FakeTTS())
    assert capture is not None
    with caplog.at_level(logging.WARNING, logger="worker.greetings"):
        assert await render(capture, (GREETING,), frames()) == 3
    assert "cannot write" in caplog.text


def test_the_cache_directory_comes_from_the_environment_and_is_checked_at_start(
    tmp_path: Path,
) -> None:
    assert WorkerSettings.from_env({"WORKER_DATA_DIR": str(tmp_path)}).greetings == (
        tmp_path / "greetings"
    )
    assert WorkerSettings.from_env({"WORKER_GREETING_CACHE": "off"}).greetings is None
    settings = WorkerSettings.from_env({"WORKER_GREETING_CACHE": str(tmp_path / "g")})
    assert settings.greetings == tmp_path / "g"
    check_greetings(VoiceWorker(settings, AgentRegistry([make_agent()])))
    (tmp_path / "file").write_text("")
    blocked = WorkerSettings.from_env({"WORKER_GREETING_CACHE": str(tmp_path / "file")})
    with pytest.raises(SettingsError, match=r"WORKER_GREETING_CACHE \(a directory, or off\)"):
        check_greetings(VoiceWorker(blocked, AgentRegistry([make_agent()])))
    off = WorkerSettings.from_env({"WORKER_GREETING_CACHE": "off"})
    check_greetings(VoiceWorker(off, AgentRegistry([make_agent()])))
