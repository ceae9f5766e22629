"""STT, LLM and TTS instances for one call, built from an agent's config: LiveKit plugin
instances (never hosted-inference model strings) or the worker's local models, with short
connect options and fallbacks.

Keys come from the environment only. Each cloud provider's `base_url` can be overridden by an
environment variable, which is how tests point the real plugins at local stand-ins. Which
providers a stage actually uses is decided once, at start (`resolve`): a cloud provider without
its key falls back to the local one in development, and stops `start` unless the agent allows it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.agents.voice.agent_session import SessionConnectOptions
from pydantic import TypeAdapter, ValidationError

from worker.config import (
    AgentConfig,
    AgentRegistry,
    CloudEntry,
    DeepgramSTT,
    ElevenLabsTTS,
    LocalLLM,
    LocalSTT,
    LocalTTS,
    OpenAILLM,
    ProviderEntry,
)
from worker.local.runtime import LocalRuntime

if typing.TYPE_CHECKING:
    from worker.local.llm_client import ToolSafeLLM

OUTPUT_SAMPLE_RATE = 24000
"""The room output rate: ElevenLabs streams raw PCM at this rate, so nothing is resampled or
decoded on the hot path."""
STT_SAMPLE_RATE = 16000
STAGES = ("stt", "llm", "tts")
LOCAL_DEFAULTS: dict[str, ProviderEntry] = {
    "stt": LocalSTT(provider="local"),
    "llm": LocalLLM(provider="local"),
    "tts": LocalTTS(provider="local"),
}
LOCAL_API_KEY = "local"  # the local LLM server checks no key; the OpenAI client needs one
LOCAL_REPEAT_PENALTY = 1.3
MAX_SESSION_ERRORS = 100


@dataclass(frozen=True)
class ProviderSpec:
    """What the worker needs to know about one cloud provider before constructing it."""

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


@dataclass
class Resolution:
    """The agents as they will run: each stage's providers after key checks and fallbacks."""

    registry: AgentRegistry
    fallbacks: list[str] = field(default_factory=list)
    """Cloud providers replaced by the local ones, and the end-of-turn model by silence when it
    is missing, one line each (logged once at start)."""
    problems: list[str] = field(default_factory=list)
    """Missing keys that stop the worker, naming file, field and variable."""


def has_key(entry: CloudEntry, env: Mapping[str, str]) -> bool:
    """Whether a cloud provider can be used: its key is set, or (for an OpenAI-compatible
    endpoint of your own, e.g. Ollama) a `base_url` points elsewhere than OpenAI."""
    if env.get(SPECS[entry.provider].key_env):
        return True
    return isinstance(entry, OpenAILLM) and bool(entry.base_url or env.get("OPENAI_BASE_URL"))


def resolve(registry: AgentRegistry, env: Mapping[str, str], *, allow_local: bool) -> Resolution:
    """Decide every stage's providers: a cloud provider without its key is replaced by the local
    provider when `allow_local` (development) or the agent opts in (`local_fallback`). A tool's
    missing `${VAR}` is a problem in every mode."""
    from worker.tools.check import missing_secrets

    resolution = Resolution(AgentRegistry([]))
    agents = []
    for agent in registry:
        updates: dict[str, list[ProviderEntry]] = {}
        for stage in STAGES:
            entries: list[ProviderEntry] = []
            for i, entry in enumerate(getattr(agent, stage)):
                if isinstance(entry, LocalSTT | LocalLLM | LocalTTS) or has_key(entry, env):
                    entries.append(entry)
                    continue
                where = f"{agent.source}: {stage}[{i}]: {entry.provider}"
                key = SPECS[entry.provider].key_env
                if not (allow_local or agent.local_fallback):
                    resolution.problems.append(
                        f"{where} needs {key} in the environment "
                        "(or `local_fallback: true` in the agent to use the local provider)"
                    )
                    continue
                resolution.fallbacks.append(f"{where} has no {key}: using the local provider")
                if LOCAL_DEFAULTS[stage] not in entries:
                    entries.append(LOCAL_DEFAULTS[stage])
            updates[stage] = entries
        agents.append(agent.model_copy(update=updates))
    resolution.problems += missing_secrets(registry, env)
    resolution.registry = AgentRegistry(turn_detection_fallback(agents, resolution.fallbacks))
    local_llms = {
        entry.model for _, entry in all_entries(resolution.registry) if isinstance(entry, LocalLLM)
    }
    if len(local_llms) > 1:
        resolution.problems.append(
            f"agents use {len(local_llms)} different local LLM models; a worker serves one"
        )
    return resolution


def turn_detection_fallback(agents: list[AgentConfig], notes: list[str]) -> list[AgentConfig]:
    """Agents with `smart_turn` end turns on silence (`vad`) when the model is not installed:
    said once at start (in `notes`), never a failure during a call."""
    from worker.local.model_files import LocalModelError
    from worker.turns.smart_turn import model_path

    users = [agent for agent in agents if agent.turn_taking.detection == "smart_turn"]
    if not users:
        return agents
    try:
        model_path()
    except LocalModelError as exc:
        reason = str(exc)
    else:
        return agents
    resolved = []
    for agent in agents:
        if agent in users:
            delay = agent.turn_taking.endpointing.min_delay
            notes.append(
                f"{agent.source}: turn_taking.detection: smart_turn: {reason}; ending turns "
                f"after {delay}s of silence (vad) instead"
            )
            turn_taking = agent.turn_taking.model_copy(update={"detection": "vad"})
            agent = agent.model_copy(update={"turn_taking": turn_taking})  # noqa: PLW2901
        resolved.append(agent)
    return resolved


def check_registry(registry: AgentRegistry) -> list[str]:
    """Plugin options and `python` tools that would only fail during a call, found at start
    (file and field)."""
    from worker.tools.check import unusable_functions

    problems: list[str] = unusable_functions(registry)
    for agent in registry:
        for where, entry in stage_entries(agent):
            if isinstance(entry, LocalSTT | LocalLLM | LocalTTS):
                continue
            spec = SPECS[entry.provider]
            for option in entry.options:
                if option in spec.reserved:
                    problems.append(
                        f"{agent.source}: {where}.options.{option}: set by the worker, "
                        "not in options"
                    )
                elif option not in _constructor_args(spec.plugin):
                    problems.append(
                        f"{agent.source}: {where}.options.{option}: not an option of {spec.plugin}"
                    )
                elif wrong := _wrong_type(spec.plugin, option, entry.options[option]):
                    problems.append(f"{agent.source}: {where}.options.{option}: {wrong}")
    return problems


def _wrong_type(dotted: str, option: str, value: object) -> str | None:
    """Why `value` does not fit the plugin's annotation of `option` (strictly: YAML gives real
    types), or None; options whose annotation pydantic cannot check pass."""
    adapter = _option_adapters(dotted).get(option)
    if adapter is None:
        return None
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        return f"{value!r} is not valid for {dotted} ({error['msg']})"
    return None


@functools.cache
def _option_adapters(dotted: str) -> dict[str, TypeAdapter[Any]]:
    module_name, _, class_name = dotted.rpartition(".")
    init = getattr(importlib.import_module(module_name), class_name).__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return {}
    adapters: dict[str, TypeAdapter[Any]] = {}
    for name, hint in hints.items():
        with contextlib.suppress(Exception):  # a type pydantic has no schema for
            adapters[name] = TypeAdapter(hint)
    return adapters


def import_plugins(registry: AgentRegistry) -> None:
    """Import the provider modules the configured agents use, plus Silero.

    Done in the main process before the server starts: LiveKit registers imported plugins and
    preloads them into its forkserver, so job processes share them instead of importing them
    (seconds) on their first call.
    """
    modules = {"livekit.plugins.silero"}
    for _, entry in all_entries(registry):
        if isinstance(entry, LocalSTT):
            modules.add("worker.local.stt")  # Whisper itself: only the inference process
        elif isinstance(entry, LocalTTS):
            modules |= {"worker.local.tts", "piper"}
        elif isinstance(entry, LocalLLM):
            modules.add("livekit.plugins.openai")
        else:
            modules.add(SPECS[entry.provider].plugin.rpartition(".")[0])
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


def all_entries(registry: AgentRegistry) -> list[tuple[AgentConfig, ProviderEntry]]:
    return [(agent, entry) for agent in registry for _, entry in stage_entries(agent)]


def describe(entry: ProviderEntry) -> str:
    """A short label: `deepgram:nova-3`, `local:whisper`, ..."""
    if isinstance(entry, LocalSTT):
        return f"local:whisper-{entry.model or 'base (bundled)'}"
    if isinstance(entry, LocalLLM):
        from worker.local.llm import DEFAULT_MODEL, MODEL_ENV

        return f"local:{entry.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL}"
    if isinstance(entry, LocalTTS):
        return f"local:piper-{entry.voice or 'joe (bundled)'}"
    return f"{entry.provider}:{entry.model or DEFAULT_MODELS[entry.provider]}"


def build_providers(
    agent: AgentConfig, env: Mapping[str, str], local: LocalRuntime | None = None
) -> Providers:
    """Construct one call's providers (this opens no connection yet). `local` holds this
    process's local models; it is needed only when the agent uses local providers."""
    stt_instances = [_build_stt(e, agent, env, local) for e in agent.stt]
    return Providers(
        stt=_chain(stt_instances, agent.stt, stt.FallbackAdapter),
        llm=build_llm(agent, env, local),
        tts=build_tts(agent, env, local),
        conn_options=SessionConnectOptions(
            stt_conn_options=stage_options(agent.stt),
            llm_conn_options=stage_options(agent.llm),
            tts_conn_options=stage_options(agent.tts),
            # the call ends at the first unrecoverable error itself, with the recorded apology;
            # the session must not close under it while the apology plays
            max_unrecoverable_errors=MAX_SESSION_ERRORS,
        ),
    )


def snapshot_name(agent: AgentConfig) -> str:
    """The file of the local LLM's prompt snapshot for this agent as configured: an edited
    agent gets another, so it is never restored from a stale one."""
    return f"{hashlib.sha256(agent.model_dump_json().encode()).hexdigest()[:32]}.bin"


def build_llm(
    agent: AgentConfig, env: Mapping[str, str], local: LocalRuntime | None = None
) -> AnyLLM:
    """The agent's LLM stage alone (its fallbacks included)."""
    snapshot = snapshot_name(agent)
    instances = [_build_llm(e, env, local, snapshot=snapshot) for e in agent.llm]
    return _chain(instances, agent.llm, llm.FallbackAdapter)


def build_tts(
    agent: AgentConfig, env: Mapping[str, str], local: LocalRuntime | None = None
) -> AnyTTS:
    """The agent's TTS stage alone (its fallbacks included)."""
    instances = [_build_tts(e, agent, env, local) for e in agent.tts]
    return _chain(instances, agent.tts, functools.partial(tts.FallbackAdapter, max_retry_per_tts=0))


def connect_options(entry: ProviderEntry) -> APIConnectOptions:
    return APIConnectOptions(
        max_retry=entry.retries, retry_interval=entry.retry_interval, timeout=entry.timeout
    )


def stage_options(entries: Sequence[ProviderEntry]) -> APIConnectOptions:
    """The session's connect options for a stage: the provider's own, or for a fallback chain no
    extra retries around it (each provider retries on its own, then the next one takes over)."""
    if len(entries) == 1:
        return connect_options(entries[0])
    return APIConnectOptions(max_retry=0, retry_interval=0, timeout=max(e.timeout for e in entries))


def _need(local: LocalRuntime | None) -> LocalRuntime:
    if local is None:
        raise RuntimeError("local providers need the process's LocalRuntime")
    return local


def _build_stt(
    entry: DeepgramSTT | LocalSTT,
    agent: AgentConfig,
    env: Mapping[str, str],
    local: LocalRuntime | None,
) -> AnySTT:
    if isinstance(entry, LocalSTT):
        from worker.local.stt import Decoding, WhisperSTT

        runtime = _need(local)
        decoding = Decoding(
            beam_size=entry.beam_size,
            no_speech_threshold=entry.no_speech_threshold,
            log_prob_threshold=entry.log_prob_threshold,
        )
        whisper = WhisperSTT(
            runtime.whispers[entry.model], language=agent.language, decoding=decoding
        )
        return stt.StreamAdapter(stt=whisper, vad=runtime.vad)

    from livekit.plugins import deepgram

    return deepgram.STT(
        model=entry.model or DEFAULT_MODELS["deepgram"],
        language=agent.language,
        sample_rate=STT_SAMPLE_RATE,
        api_key=env.get(SPECS["deepgram"].key_env, ""),
        base_url=_base_url(entry, env) or "https://api.deepgram.com/v1/listen",
        **entry.options,
    )


def local_llm(entry: LocalLLM, url: str, *, snapshot: str) -> ToolSafeLLM:
    """A call's client of the worker's local LLM server at `url`, holding one of its slots."""
    from livekit.plugins import openai

    from worker.local.llm import SLOTS
    from worker.local.llm_client import ToolSafeLLM, claim_slot

    return ToolSafeLLM(
        openai.LLM(
            model="local", base_url=url, api_key=LOCAL_API_KEY, temperature=entry.temperature
        ),
        max_tokens=entry.max_tokens,
        # llama.cpp's own sampler setting: small models loop without it
        body={"repeat_penalty": LOCAL_REPEAT_PENALTY},
        slot=claim_slot(url, SLOTS),
        snapshot=(url, snapshot),
        max_sentences=entry.max_sentences,
    )


def _build_llm(
    entry: OpenAILLM | LocalLLM,
    env: Mapping[str, str],
    local: LocalRuntime | None,
    *,
    snapshot: str,
) -> AnyLLM:
    from livekit.agents import NOT_GIVEN
    from livekit.plugins import openai

    if isinstance(entry, LocalLLM):
        url = _need(local).llm_url
        if url is None:
            raise RuntimeError("the local LLM server is not running")
        return local_llm(entry, url, snapshot=snapshot)
    return openai.LLM(
        model=entry.model or DEFAULT_MODELS["openai"],
        api_key=env.get(SPECS["openai"].key_env) or LOCAL_API_KEY,  # keyless own endpoints
        base_url=_base_url(entry, env) or NOT_GIVEN,
        temperature=entry.temperature if entry.temperature is not None else NOT_GIVEN,
        max_completion_tokens=entry.max_tokens or NOT_GIVEN,
        **entry.options,
    )


def _build_tts(
    entry: ElevenLabsTTS | LocalTTS,
    agent: AgentConfig,
    env: Mapping[str, str],
    local: LocalRuntime | None,
) -> AnyTTS:
    if isinstance(entry, LocalTTS):
        from livekit.agents import NOT_GIVEN as DEFAULT_TOKENIZER

        from worker.local.tts import ClauseFirstTokenizer, PiperTTS

        piper = PiperTTS(_need(local).voices[entry.voice], speed=entry.speed)
        tokenizer = ClauseFirstTokenizer() if entry.first_clause else DEFAULT_TOKENIZER
        return tts.StreamAdapter(tts=piper, sentence_tokenizer=tokenizer)

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


def _base_url(entry: CloudEntry, env: Mapping[str, str]) -> str | None:
    return env.get(SPECS[entry.provider].base_url_env) or entry.base_url


P = TypeVar("P", AnySTT, AnyLLM, AnyTTS)


def _chain(
    instances: list[P], entries: Sequence[ProviderEntry], adapter: Callable[[list[P]], P]
) -> P:
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
