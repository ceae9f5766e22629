"""STT, LLM and TTS instances for one call, built from an agent's config as LiveKit plugin
instances (never hosted-inference model strings), with short connect options and fallbacks.

Keys come from the environment only. Each provider's `base_url` can be overridden by an
environment variable, which is how tests point the real plugins at local stand-ins.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.agents.voice.agent_session import SessionConnectOptions

from .config import (
    AgentConfig,
    AgentRegistry,
    DeepgramSTT,
    ElevenLabsTTS,
    OpenAILLM,
    ProviderEntry,
)

OUTPUT_SAMPLE_RATE = 24000
"""The room output rate: ElevenLabs streams raw PCM at this rate, so nothing is resampled or
decoded on the hot path."""
STT_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class ProviderSpec:
    """What the worker needs to know about one provider before constructing it."""

    key_env: str
    base_url_env: str
    plugin: str  # dotted path of the plugin class, imported only when needed
    reserved: frozenset[str]  # constructor arguments the worker sets itself


SPECS: dict[str, ProviderSpec] = {
    "deepgram": ProviderSpec(
        "DEEPGRAM_API_KEY",
        "DEEPGRAM_BASE_URL",
        "livekit.plugins.deepgram.STT",
        frozenset({"api_key", "base_url", "model", "language", "sample_rate", "http_session"}),
    ),
    "openai": ProviderSpec(
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "livekit.plugins.openai.LLM",
        frozenset(
            {"api_key", "base_url", "model", "client", "temperature", "timeout"}
            | {"max_completion_tokens", "max_retries"}  # `max_tokens`; retries via connect options
        ),
    ),
    "elevenlabs": ProviderSpec(
        "ELEVEN_API_KEY",
        "ELEVENLABS_BASE_URL",
        "livekit.plugins.elevenlabs.TTS",
        frozenset({"api_key", "base_url", "model", "voice_id", "encoding", "http_session"}),
    ),
}
DEFAULT_MODELS = {"deepgram": "nova-3", "openai": "gpt-4.1-mini", "elevenlabs": "eleven_flash_v2_5"}


AnySTT = stt.STT[Any]
AnyLLM = llm.LLM[Any]
AnyTTS = tts.TTS[Any]


@dataclass
class Providers:
    """The three stages of one call, and the session-level connect options that go with them."""

    stt: AnySTT
    llm: AnyLLM
    tts: AnyTTS
    conn_options: SessionConnectOptions


def connect_options(entry: ProviderEntry) -> APIConnectOptions:
    return APIConnectOptions(
        max_retry=entry.retries, retry_interval=entry.retry_interval, timeout=entry.timeout
    )


def check_registry(
    registry: AgentRegistry, env: Mapping[str, str], *, need_keys: bool
) -> list[str]:
    """Problems that would only show during a call, found at start: unknown plugin options and,
    when `need_keys`, missing API keys. Each names the agent file and the field."""
    problems: list[str] = []
    for agent in registry:
        for stage, entry in stage_entries(agent):
            spec = SPECS[entry.provider]
            where = f"{agent.source}: {stage}"
            for option in entry.options:
                if option in spec.reserved:
                    problems.append(f"{where}.options.{option}: set by the worker, not in options")
                elif option not in _constructor_args(spec.plugin):
                    problems.append(f"{where}.options.{option}: not an option of {spec.plugin}")
            if need_keys and not env.get(spec.key_env):
                problems.append(
                    f"{where}: {entry.provider} needs {spec.key_env} in the environment"
                )
    return problems


def import_plugins(registry: AgentRegistry) -> None:
    """Import the plugins the configured agents use, plus Silero.

    Done in the main process before the server starts: LiveKit registers imported plugins and
    preloads them into its forkserver, so job processes share them instead of importing them
    (seconds) on their first call.
    """
    modules = {"livekit.plugins.silero"}
    modules |= {
        SPECS[entry.provider].plugin.rpartition(".")[0]
        for agent in registry
        for _, entry in stage_entries(agent)
    }
    for module in sorted(modules):
        importlib.import_module(module)


def stage_entries(agent: AgentConfig) -> list[tuple[str, ProviderEntry]]:
    """Every provider entry of an agent with its config path (`stt[0]`, `tts[1]`, ...)."""
    stages: tuple[tuple[str, Sequence[ProviderEntry]], ...] = (
        ("stt", agent.stt),
        ("llm", agent.llm),
        ("tts", agent.tts),
    )
    return [
        (f"{stage}[{i}]", entry) for stage, entries in stages for i, entry in enumerate(entries)
    ]


def build_providers(agent: AgentConfig, env: Mapping[str, str]) -> Providers:
    """Construct the plugin instances for one call (this opens no connection yet)."""
    stt_instances = [_build_stt(e, agent, env) for e in agent.stt]
    llm_instances = [_build_llm(e, env) for e in agent.llm]
    tts_instances = [_build_tts(e, agent, env) for e in agent.tts]
    return Providers(
        stt=_chain(stt_instances, agent.stt, stt.FallbackAdapter),
        llm=_chain(llm_instances, agent.llm, llm.FallbackAdapter),
        tts=_chain(
            tts_instances, agent.tts, functools.partial(tts.FallbackAdapter, max_retry_per_tts=0)
        ),
        conn_options=SessionConnectOptions(
            stt_conn_options=stage_options(agent.stt),
            llm_conn_options=stage_options(agent.llm),
            tts_conn_options=stage_options(agent.tts),
            max_unrecoverable_errors=3,
        ),
    )


def stage_options(
    entries: list[DeepgramSTT] | list[OpenAILLM] | list[ElevenLabsTTS],
) -> APIConnectOptions:
    """The session's connect options for a stage: the provider's own, or for a fallback chain no
    extra retries around it (each provider retries on its own, then the next one takes over)."""
    if len(entries) == 1:
        return connect_options(entries[0])
    return APIConnectOptions(max_retry=0, retry_interval=0, timeout=max(e.timeout for e in entries))


def _build_stt(entry: DeepgramSTT, agent: AgentConfig, env: Mapping[str, str]) -> AnySTT:
    from livekit.plugins import deepgram

    return deepgram.STT(
        model=entry.model or DEFAULT_MODELS["deepgram"],
        language=agent.language,
        sample_rate=STT_SAMPLE_RATE,
        api_key=env.get(SPECS["deepgram"].key_env, ""),
        base_url=_base_url(entry, env) or "https://api.deepgram.com/v1/listen",
        **entry.options,
    )


def _build_llm(entry: OpenAILLM, env: Mapping[str, str]) -> AnyLLM:
    from livekit.agents import NOT_GIVEN
    from livekit.plugins import openai

    return openai.LLM(
        model=entry.model or DEFAULT_MODELS["openai"],
        api_key=env.get(SPECS["openai"].key_env, ""),
        base_url=_base_url(entry, env) or NOT_GIVEN,
        temperature=entry.temperature if entry.temperature is not None else NOT_GIVEN,
        max_completion_tokens=entry.max_tokens or NOT_GIVEN,
        **entry.options,
    )


def _build_tts(entry: ElevenLabsTTS, agent: AgentConfig, env: Mapping[str, str]) -> AnyTTS:
    from livekit.agents import NOT_GIVEN
    from livekit.plugins import elevenlabs

    kwargs: dict[str, Any] = {"language": agent.language.split("-")[0], **entry.options}
    if entry.voice:
        kwargs["voice_id"] = entry.voice
    return elevenlabs.TTS(
        model=entry.model or DEFAULT_MODELS["elevenlabs"],
        encoding="pcm_24000",  # = OUTPUT_SAMPLE_RATE
        api_key=env.get(SPECS["elevenlabs"].key_env, ""),
        base_url=_base_url(entry, env) or NOT_GIVEN,
        **kwargs,
    )


def _base_url(entry: ProviderEntry, env: Mapping[str, str]) -> str | None:
    return env.get(SPECS[entry.provider].base_url_env) or entry.base_url


P = TypeVar("P", AnySTT, AnyLLM, AnyTTS)


def _chain(instances: list[P], entries: list[Any], adapter: Callable[[list[P]], P]) -> P:
    """One provider as is; several behind LiveKit's FallbackAdapter, each keeping its own connect
    options (the adapter would otherwise impose one timeout and retry count on all of them)."""
    if len(instances) == 1:
        return instances[0]
    for instance, entry in zip(instances, entries, strict=True):
        pin_connect_options(instance, connect_options(entry))
    return adapter(instances)


_CONNECTING_METHODS = {
    stt.STT: ("stream", "recognize"),
    llm.LLM: ("chat",),
    tts.TTS: ("synthesize", "stream"),
}


def pin_connect_options(provider: AnySTT | AnyLLM | AnyTTS, options: APIConnectOptions) -> None:
    """Make every request of `provider` use `options`, whatever its caller passes."""
    methods = next(
        names for base, names in _CONNECTING_METHODS.items() if isinstance(provider, base)
    )
    for name in methods:
        original = getattr(provider, name)

        @functools.wraps(original)
        def pinned(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            kwargs["conn_options"] = options
            return __original(*args, **kwargs)

        setattr(provider, name, pinned)


@functools.cache
def _constructor_args(dotted: str) -> frozenset[str]:
    module_name, _, class_name = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    signature = inspect.signature(getattr(module, class_name).__init__)
    return frozenset(name for name in signature.parameters if name != "self")
