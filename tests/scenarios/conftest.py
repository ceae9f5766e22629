"""Scenario tests: calls written as data, real plugins against local provider stand-ins."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from livekit.agents import vad

from tests.harness import Recording
from tests.scenarios.runner import Provider, ScenarioRunner
from tests.standins.base import StandIn
from tests.standins.deepgram import ClipMatcher, DeepgramStandIn, WhisperTranscriber
from tests.standins.elevenlabs import ElevenLabsStandIn, HumVoice, PiperVoice
from tests.standins.openai import OpenAIStandIn, Script, ToolCall
from worker.call.pipeline import load_vad
from worker.settings import VADSettings


@pytest.fixture(scope="session")
def vad_model() -> vad.VAD:
    return load_vad(VADSettings())


def stand_in_factory(
    piper: Callable[[], PiperVoice], whisper: Callable[[], WhisperTranscriber]
) -> Callable[[str, Provider, Recording, str], StandIn]:
    """Builds a stage's stand-in from its scenario entry; content from the manifest by default."""

    def make(stage: str, spec: Provider, recording: Recording, key: str) -> StandIn:
        if stage == "stt":
            manifest = spec.content == "manifest"
            transcriber = ClipMatcher(recording.spoken_clips()) if manifest else whisper()
            return DeepgramStandIn(api_key=key, transcriber=transcriber)
        if stage == "llm":
            rules = [(r.match, reply(r.say, r.call, r.arguments)) for r in spec.replies]
            after_tool = [spec.after_tool] if spec.after_tool else []
            return OpenAIStandIn(
                api_key=key,
                responder=Script(rules, [spec.default], after_tool=after_tool),
                first_token=spec.first_token,
                token_interval=spec.token_interval,
            )
        voice = piper() if spec.voice == "piper" else HumVoice()
        return ElevenLabsStandIn(api_key=key, voice=voice, first_audio=spec.first_audio)

    return make


def reply(say: str, call: str | None, arguments: dict[str, Any]) -> list[str | ToolCall]:
    parts: list[str | ToolCall] = [say] if say else []
    return [*parts, ToolCall(call, arguments)] if call else parts


@pytest.fixture(scope="session")
def runner(vad_model: vad.VAD) -> ScenarioRunner:
    """One Piper voice and one Whisper model for the whole run, loaded on first use."""
    piper = functools.cache(PiperVoice)
    whisper = functools.cache(WhisperTranscriber)
    return ScenarioRunner(vad_model=vad_model, make_stand_in=stand_in_factory(piper, whisper))
