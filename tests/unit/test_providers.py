"""Providers come from the config as real plugin instances, with env overrides and fallbacks."""

from __future__ import annotations

import pytest
from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.plugins import deepgram, elevenlabs, openai

from tests.fakes import FakeLLM
from tests.harness import make_agent
from worker.config import AgentRegistry, LocalLLM, LocalSTT, LocalTTS
from worker.local.runtime import missing_packages
from worker.providers import (
    build_providers,
    check_registry,
    describe,
    pin_connect_options,
    resolve,
)

KEYS = {"DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test", "ELEVEN_API_KEY": "el-test"}


async def test_builds_the_configured_plugins() -> None:
    agent = make_agent(
        language="en-GB",
        stt=[{"provider": "deepgram", "model": "nova-3", "timeout": 2, "retries": 2}],
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
    assert conn.stt_conn_options == APIConnectOptions(max_retry=2, retry_interval=0.5, timeout=2)
    assert conn.llm_conn_options.timeout == 3.0  # the default


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


def test_unknown_and_reserved_plugin_options_are_found_at_start() -> None:
    agent = make_agent(
        stt=[{"provider": "deepgram", "options": {"smart_format": True, "no_such_option": 1}}],
        tts=[{"provider": "elevenlabs", "options": {"api_key": "inline"}}],
    ).model_copy(update={"source": "prompts/a.md"})
    problems = check_registry(AgentRegistry([agent]))
    assert problems == [
        "prompts/a.md: stt[0].options.no_such_option: "
        "not an option of livekit.plugins.deepgram.STT",
        "prompts/a.md: tts[0].options.api_key: set by the worker, not in options",
    ]
    assert check_registry(AgentRegistry([make_agent()])) == []


def test_plugin_option_values_are_type_checked_at_start() -> None:
    """Was: `endpointing_ms: banana` reached the plugin, to fail in a call."""
    agent = make_agent(
        stt=[{"provider": "deepgram", "options": {"endpointing_ms": "banana", "smart_format": 1}}],
        llm=[{"provider": "openai", "options": {"parallel_tool_calls": False}}],
        tts=[{"provider": "elevenlabs", "options": {"enable_ssml_parsing": True}}],
    ).model_copy(update={"source": "prompts/a.md"})
    problems = check_registry(AgentRegistry([agent]))
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        "prompts/a.md: stt[0].options.endpointing_ms: 'banana' is not valid for "
        "livekit.plugins.deepgram.STT (Input should be a valid integer"
    )
    assert problems[1].startswith("prompts/a.md: stt[0].options.smart_format: 1 is not valid")


def sourced(**overrides: object) -> AgentRegistry:
    return AgentRegistry([make_agent(**overrides).model_copy(update={"source": "prompts/a.md"})])


def test_start_refuses_cloud_providers_without_keys() -> None:
    resolution = resolve(sourced(), {"DEEPGRAM_API_KEY": "dg"}, allow_local=False)
    assert resolution.problems == [
        "prompts/a.md: llm[0]: openai needs OPENAI_API_KEY in the environment "
        "(or `local_fallback: true` in the agent to use the local provider)",
        "prompts/a.md: tts[0]: elevenlabs needs ELEVEN_API_KEY in the environment "
        "(or `local_fallback: true` in the agent to use the local provider)",
    ]
    assert resolve(sourced(), KEYS, allow_local=False).problems == []


def test_development_falls_back_to_local_providers_and_says_so() -> None:
    resolution = resolve(sourced(), {"DEEPGRAM_API_KEY": "dg"}, allow_local=True)
    assert resolution.problems == []
    (agent,) = resolution.registry
    assert [describe(e) for e in agent.stt] == ["deepgram:nova-3"]
    assert [describe(e) for e in agent.llm] == ["local:smollm2-135m"]
    assert [describe(e) for e in agent.tts] == ["local:piper-joe (bundled)"]
    assert resolution.fallbacks == [
        "prompts/a.md: llm[0]: openai has no OPENAI_API_KEY: using the local provider",
        "prompts/a.md: tts[0]: elevenlabs has no ELEVEN_API_KEY: using the local provider",
    ]


def test_an_agent_can_opt_in_to_local_fallback_in_start() -> None:
    resolution = resolve(sourced(local_fallback=True), {}, allow_local=False)
    assert resolution.problems == []
    (agent,) = resolution.registry
    assert all(
        isinstance(e, LocalSTT | LocalLLM | LocalTTS) for e in [*agent.stt, *agent.llm, *agent.tts]
    )


def test_a_keyless_openai_compatible_endpoint_is_kept() -> None:
    registry = sourced(llm=[{"provider": "openai", "base_url": "http://127.0.0.1:11434/v1"}])
    (agent,) = resolve(registry, {}, allow_local=False).registry
    assert describe(agent.llm[0]) == "openai:gpt-4.1-mini"


def test_a_chain_without_keys_collapses_to_one_local_provider() -> None:
    registry = sourced(tts=[{"provider": "elevenlabs"}, {"provider": "elevenlabs", "model": "m2"}])
    (agent,) = resolve(registry, {}, allow_local=True).registry
    assert [describe(e) for e in agent.tts] == ["local:piper-joe (bundled)"]
    keyed = resolve(registry, {"ELEVEN_API_KEY": "el"}, allow_local=True).registry
    assert len(next(iter(keyed)).tts) == 2


def test_one_local_llm_model_per_worker() -> None:
    a = make_agent(id="agent-a", llm=[{"provider": "local", "model": "/models/a.gguf"}])
    b = make_agent(id="agent-b", llm=[{"provider": "local", "model": "/models/b.gguf"}])
    problems = resolve(AgentRegistry([a, b]), {}, allow_local=True).problems
    assert problems == ["agents use 2 different local LLM models; a worker serves one"]


def test_a_missing_local_library_is_reported_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "piper" else real(name)
    )
    registry = AgentRegistry([make_agent(tts=[{"provider": "local"}])])
    assert missing_packages(registry) == [
        "the local TTS needs the piper package: run `bash setup.sh`"
    ]
    assert missing_packages(AgentRegistry([make_agent()])) == []
