"""The local models a process holds: loaded once per process, only those some agent uses.

Thread counts are pinned for a small machine: whatever each model gets, the caller's audio, the
event loop and the other calls share the same cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from livekit.agents.vad import VAD

from worker.config import AgentRegistry, LocalLLM, LocalSTT, LocalTTS

if TYPE_CHECKING:
    from worker.local.stt import Transcriber
    from worker.local.tts import Renderer
    from worker.turns.detector import ModelRunner

logger = logging.getLogger("worker.local")


def cores() -> int:
    """CPU cores this process may use: the container's limit, not the host's count."""
    from livekit.agents.utils.hw import get_cpu_monitor

    return max(1, int(get_cpu_monitor().cpu_count()))


def default_threads() -> int:
    """Inference threads per model: the cores, at most 2 (`WORKER_LOCAL_THREADS`)."""
    return int(os.environ.get("WORKER_LOCAL_THREADS") or min(cores(), 2))


def llm_threads() -> int:
    """Threads with which the local LLM server generates (`WORKER_LLM_THREADS`): every core the
    process may use, at most 4. Measured on 2 cores (bench/local_latency.py): the 1.5B writes
    12 tokens/s on two threads, 6.5 on one, and a reply's first clause is what the caller waits
    for; Piper, which then shares the cores, still keeps ahead of speech."""
    return int(os.environ.get("WORKER_LLM_THREADS") or min(cores(), 4))


def llm_batch_threads() -> int:
    """Threads with which the local LLM reads prompts: every core, at most 4."""
    return min(cores(), 4)


@dataclass
class LocalRuntime:
    """What a call needs to build local providers in this process."""

    vad: VAD
    llm_url: str | None = None
    """The worker's local LLM server (…/v1), when some agent uses the local LLM."""
    whispers: dict[str | None, Transcriber] = field(default_factory=dict)
    voices: dict[str | None, Renderer] = field(default_factory=dict)
    turn_runner: ModelRunner | None = None
    """The end-of-turn model, when some agent uses `smart_turn` (None: those end on silence)."""

    @classmethod
    def load(
        cls,
        registry: AgentRegistry,
        *,
        vad_model: VAD,
        llm_url: str | None,
        warm: bool = True,
        shared: bool = False,
    ) -> LocalRuntime:
        """Load every local model the agents use, the end-of-turn model included (blocking:
        call it in prewarm). `warm` runs each once, so a call's first turn does not pay for lazy
        initialisation. `shared`: the worker's inference process holds Whisper and Piper
        (`worker.local.shared.share_models`); this process only asks it."""
        runtime = cls(vad=vad_model, llm_url=llm_url)
        stt_models = dict.fromkeys(e.model for e in local_entries(registry, LocalSTT))
        voices = dict.fromkeys(e.voice for e in local_entries(registry, LocalTTS))
        if shared:
            from worker.local.shared import SharedPiper, SharedWhisper

            runtime.whispers = {name: SharedWhisper(name) for name in stt_models}
            runtime.voices = {name: SharedPiper(name) for name in voices}
        else:
            from worker.local.stt import InProcessWhisper, load_whisper
            from worker.local.tts import InProcessPiper, load_piper

            runtime.whispers = {
                name: InProcessWhisper(load_whisper(name, threads=default_threads(), warm=warm))
                for name in stt_models
            }
            runtime.voices = {
                name: InProcessPiper(load_piper(name, threads=1, warm=warm)) for name in voices
            }
        detections = {agent.turn_taking.detection for agent in registry}
        if "smart_turn" in detections:
            runtime.turn_runner = load_turn_model(warm=warm)
        if "livekit" in detections:
            import livekit.local_inference

            livekit.local_inference.init_eot()  # ~244 MB, lazily on a call's event loop otherwise
        return runtime


def load_turn_model(*, warm: bool) -> ModelRunner | None:
    """The Smart Turn model for this process, or None (logged) if it cannot be loaded: a call
    then ends turns on silence rather than failing."""
    from worker.local.model_files import LocalModelError
    from worker.turns.detector import ModelRunner
    from worker.turns.smart_turn import RATE, SmartTurnModel, model_path

    try:
        model = SmartTurnModel(model_path(), threads=default_threads())
        if warm:
            model.probability(np.zeros(RATE, dtype=np.int16))
    except (LocalModelError, OSError, RuntimeError, ValueError) as exc:
        logger.error("cannot load the end-of-turn model (%s): calls end turns on silence", exc)
        return None
    return ModelRunner(model)


def missing_packages(registry: AgentRegistry) -> list[str]:
    """The local stack's libraries the agents need but this environment lacks."""
    import importlib.util

    needed = [
        ("local STT", "faster_whisper", bool(local_entries(registry, LocalSTT))),
        ("local LLM", "xllamacpp", bool(local_entries(registry, LocalLLM))),
        ("local TTS", "piper", bool(local_entries(registry, LocalTTS))),
    ]
    return [
        f"the {what} needs the {module} package: run `bash setup.sh`"
        for what, module, used in needed
        if used and importlib.util.find_spec(module) is None
    ]


E = TypeVar("E", LocalSTT, LocalLLM, LocalTTS)


def local_entries(registry: AgentRegistry, kind: type[E]) -> list[E]:
    """Every local entry of one kind across the agents, in config order."""
    stages = {LocalSTT: "stt", LocalLLM: "llm", LocalTTS: "tts"}
    return [
        entry
        for agent in registry
        for entry in getattr(agent, stages[kind])
        if isinstance(entry, kind)
    ]
