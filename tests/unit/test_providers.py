"""Providers come from the config as real plugin instances, with env overrides and fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.plugins import deepgram, elevenlabs, openai

from tests.fakes import FakeLLM
from tests.harness import make_agent
from worker.config import AgentRegistry
from worker.providers import build_providers, check_registry, pin_connect_options

KEYS = {"DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test", "ELEVEN_API_KEY": "el-test"}


async def test_builds_the_configured_plugins() -> None:
    agent = make_agent(
        language="en-GB",
        stt=[{"provider": "deepgram", "model": "nova-3", "timeout": 3, "retries": 2}],
        llm=[{"provider": "openai", "model": "gpt-4.1-mini", "temperature": 0.2, "max_tokens": 99}],
        tts=[{"provider": "elevenlabs", "voice": "voice-123", "options": {"streaming_latency": 2}}],
    )
    providers = build_providers(agent, KEYS)
    assert isinstance(providers.stt, deepgram.STT)
    assert providers.stt.model == "nova-3"
    assert isinstance(providers.llm, openai.LLM)
    assert providers.llm.model == "gpt-4.1-mini"
    assert isinstance(providers.tts, elevenlabs.TTS)
    assert providers.tts.sample_rate == 24000, "raw PCM at the room output rate"
    options = providers.tts._opts
    assert options.encoding == "pcm_24000"
    assert options.voice_id == "voice-123"
    assert options.language == "en"
    assert options.streaming_latency == 2
    conn = providers.conn_options
    assert conn.stt_conn_options == APIConnectOptions(max_retry=2, retry_interval=0.5, timeout=3)
    assert conn.llm_conn_options.timeout == 5.0


async def test_base_urls_come_from_config_then_environment() -> None:
    agent = make_agent(
        llm=[{"provider": "openai", "base_url": "http://llm.internal:8000/v1"}],
        tts=[{"provider": "elevenlabs", "base_url": "https://eu.elevenlabs.example/v1"}],
    )
    configured = build_providers(agent, KEYS)
    assert isinstance(configured.llm, openai.LLM)
    assert isinstance(configured.tts, elevenlabs.TTS)
    assert str(configured.llm._client.base_url) == "http://llm.internal:8000/v1/"
    assert configured.tts._opts.base_url == "https://eu.elevenlabs.example/v1"
    env = {
        **KEYS,
        "OPENAI_BASE_URL": "http://127.0.0.1:9001/v1",
        "DEEPGRAM_BASE_URL": "http://127.0.0.1:9002/v1/listen",
        "ELEVENLABS_BASE_URL": "http://127.0.0.1:9003/v1",
    }
    overridden = build_providers(agent, env)
    assert isinstance(overridden.llm, openai.LLM)
    assert isinstance(overridden.stt, deepgram.STT)
    assert isinstance(overridden.tts, elevenlabs.TTS)
    assert str(overridden.llm._client.base_url) == "http://127.0.0.1:9001/v1/"
    assert overridden.stt._opts.endpoint_url == "http://127.0.0.1:9002/v1/listen"
    assert overridden.tts._opts.base_url == "http://127.0.0.1:9003/v1"


async def test_several_providers_make_a_fallback_chain_with_their_own_options() -> None:
    agent = make_agent(
        llm=[
            {"provider": "openai", "model": "primary", "timeout": 2, "retries": 0},
            {"provider": "openai", "model": "backup", "timeout": 7, "retries": 1},
        ],
        tts=[{"provider": "elevenlabs"}, {"provider": "elevenlabs", "model": "eleven_turbo_v2_5"}],
    )
    providers = build_providers(agent, KEYS)
    assert isinstance(providers.llm, llm.FallbackAdapter)
    assert isinstance(providers.tts, tts.FallbackAdapter)
    assert not isinstance(providers.stt, stt.FallbackAdapter)
    stage = providers.conn_options.llm_conn_options
    assert stage.max_retry == 0, "no retries around the whole chain"
    assert stage.timeout == 7


async def test_pinned_options_win_over_what_the_caller_passes() -> None:
    fake = FakeLLM()
    mine = APIConnectOptions(max_retry=0, retry_interval=0, timeout=1.5)
    pin_connect_options(fake, mine)
    stream = fake.chat(chat_ctx=llm.ChatContext.empty(), conn_options=APIConnectOptions())
    try:
        assert stream._conn_options == mine
    finally:
        await stream.aclose()


def test_missing_keys_and_bad_options_are_found_at_start(tmp_path: Path) -> None:
    agent = make_agent(
        stt=[{"provider": "deepgram", "options": {"smart_format": True, "no_such_option": 1}}],
        tts=[{"provider": "elevenlabs", "options": {"api_key": "inline"}}],
    ).model_copy(update={"source": "prompts/a.md"})
    registry = AgentRegistry([agent])
    problems = check_registry(registry, {}, need_keys=True)
    assert (
        "prompts/a.md: stt[0].options.no_such_option: not an option of livekit.plugins.deepgram.STT"
        in problems
    )
    assert "prompts/a.md: tts[0].options.api_key: set by the worker, not in options" in problems
    assert "prompts/a.md: llm[0]: openai needs OPENAI_API_KEY in the environment" in problems
    assert not any("smart_format" in p for p in problems)
    assert not any("API_KEY" in p for p in check_registry(registry, KEYS, need_keys=True))


@pytest.mark.parametrize("stage", ["stt", "llm", "tts"])
def test_no_provider_needs_a_key_to_be_checked(stage: str) -> None:
    assert check_registry(AgentRegistry([make_agent()]), {}, need_keys=False) == []
