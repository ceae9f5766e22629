"""Assembly of the real-time pipeline: Silero VAD -> STT -> LLM -> TTS in one `AgentSession`.

Every turn-taking default that would otherwise reach LiveKit's cloud inference (turn detector,
adaptive interruption) is pinned here, so the worker behaves the same in `dev`, `start` and
offline.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession, vad
from livekit.agents.voice.turn import TurnDetectionMode, TurnHandlingOptions

from worker.config import AgentConfig
from worker.providers import Providers
from worker.settings import VADSettings


def load_vad(settings: VADSettings) -> vad.VAD:
    """Load Silero (blocking, ~0.1 s): call it from a process's prewarm, not on the event loop."""
    from livekit.plugins import silero

    return silero.VAD.load(
        min_silence_duration=settings.min_silence,
        min_speech_duration=settings.min_speech,
        activation_threshold=settings.activation_threshold,
        prefix_padding_duration=settings.prefix_padding,
        force_cpu=True,
    )


def turn_handling(agent: AgentConfig, detection: TurnDetectionMode) -> TurnHandlingOptions:
    """The 1.8 `turn_handling` options for an agent, every key explicit. `detection` is the
    call's own end-of-turn detector or a string mode, never LiveKit's default
    `inference.TurnDetector()` (its cloud model in dev)."""
    tt = agent.turn_taking
    return {
        "turn_detection": detection,
        "endpointing": {
            "mode": tt.endpointing.mode,
            "min_delay": tt.endpointing.min_delay,
            "max_delay": tt.endpointing.max_delay,
        },
        "interruption": {
            "enabled": tt.interruption.enabled,
            "mode": "vad",  # "adaptive" would call LiveKit's cloud in dev
            "min_duration": tt.interruption.min_duration,
            "min_words": tt.interruption.min_words,
            "resume_false_interruption": tt.interruption.resume_false_interruption,
            "false_interruption_timeout": tt.interruption.false_interruption_timeout,
            "discard_audio_if_uninterruptible": True,
        },
        "preemptive_generation": {"enabled": tt.preemptive_generation},
    }


def build_session(
    agent: AgentConfig, providers: Providers, vad_model: vad.VAD, detection: TurnDetectionMode
) -> AgentSession[Any]:
    return AgentSession(
        stt=providers.stt,
        llm=providers.llm,
        tts=providers.tts,
        vad=vad_model,
        turn_handling=turn_handling(agent, detection),
        # 0 would mean "no warm-up"; the framework wants None for that
        aec_warmup_duration=agent.turn_taking.aec_warmup or None,
        # silence is the call's business (reprompt, then goodbye), not the framework's "away" state
        user_away_timeout=None,
        conn_options=providers.conn_options,
    )
