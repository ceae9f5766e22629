"""One call's turn-taking: the end-of-turn detector and the acknowledgement filter, wired to
the session's events and to the agent's STT node."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, ModelSettings, inference, stt
from livekit.agents.llm import ChatMessage
from livekit.agents.metrics import STTMetrics
from livekit.agents.voice import events as lk_events
from livekit.agents.voice.turn import TurnDetectionMode

from worker.config import AgentConfig, AgentRegistry
from worker.settings import VADSettings
from worker.turns.barge_in import AcknowledgementFilter, resume_paused_speech
from worker.turns.detector import EndOfTurnDetector, ModelRunner

logger = logging.getLogger("worker.turns")


NO_WORDS_GRACE = 0.2
"""After a recognition finished, how long its transcript may take to reach the session."""

LIVEKIT_MIN_SILENCE = 0.25
"""LiveKit's turn detector refuses a VAD that reports silence sooner (200 ms + 50 ms)."""


def check_vad(registry: AgentRegistry, vad: VADSettings) -> list[str]:
    """Agents whose detector cannot run with the process's VAD, found at start."""
    if vad.min_silence >= LIVEKIT_MIN_SILENCE:
        return []
    return [
        f"{agent.source}: turn_taking.detection: livekit needs WORKER_VAD_MIN_SILENCE >= "
        f"{LIVEKIT_MIN_SILENCE} (it is {vad.min_silence})"
        for agent in registry
        if agent.turn_taking.detection == "livekit"
    ]


class CallTurns:
    """Built per call; `turn_detection` goes into the session's `turn_handling`, `stt_node` is
    the agent's STT node, `attach` subscribes to the session once it exists."""

    def __init__(
        self, agent: AgentConfig, *, runner: ModelRunner | None, vad_silence: float
    ) -> None:
        self._mode = agent.turn_taking.detection
        self.detector: EndOfTurnDetector | None = None
        if self._mode == "smart_turn" and runner is not None:
            self.detector = EndOfTurnDetector(
                runner,
                language=agent.language,
                vad_silence=vad_silence,
                voice_max_delay=agent.turn_taking.endpointing.voice_ceiling(),
            )
        elif self._mode == "smart_turn":
            logger.warning("no end-of-turn model in this process: ending turns on silence (vad)")
        phrases = agent.acknowledgements()
        self._session: AgentSession[Any] | None = None
        self.barge_in = (
            AcknowledgementFilter(phrases, resume=self._resume) if phrases is not None else None
        )

    @property
    def turn_detection(self) -> TurnDetectionMode:
        if self.detector is not None:
            return self.detector
        if self._mode == "livekit":
            # always the local model: without a version, dev mode would pick LiveKit's cloud one
            return inference.TurnDetector(version="v1-mini")
        return "vad" if self._mode == "smart_turn" else self._mode

    def attach(self, session: AgentSession[Any]) -> None:
        self._session = session
        if self.detector is not None and session.stt is not None:
            session.stt.on("metrics_collected", self._on_stt_metrics)
        session.on("agent_state_changed", self._on_agent_state)
        session.on("user_state_changed", self._on_user_state)
        session.on("conversation_item_added", self._on_item_added)

    async def stt_node(
        self, agent: Agent, audio: AsyncIterable[rtc.AudioFrame], settings: ModelSettings
    ) -> AsyncIterator[stt.SpeechEvent]:
        """LiveKit's STT node, its audio copied for the detector, its events filtered."""
        source = self.detector.tap.tee(audio) if self.detector is not None else audio
        events = Agent.default.stt_node(agent, source, settings)
        assert isinstance(events, AsyncIterable), "LiveKit's STT node is an async generator"
        async for event in events:
            if not isinstance(event, stt.SpeechEvent):
                continue
            if self.detector is not None:
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    # before the acknowledgement filter: a swallowed "yeah" was still heard
                    self.detector.stt_accounted(
                        event.speech_end_time or event.created_at, words=True
                    )
                elif event.type == stt.SpeechEventType.END_OF_SPEECH and event.speech_end_time:
                    # LiveKit's StreamAdapter: its VAD cut the speech, the recognition began
                    self.detector.stt_recognizing(event.speech_end_time)
            for passed in self.barge_in.process(event) if self.barge_in else (event,):
                yield passed

    def summary(self) -> dict[str, Any]:
        """For the call's summary log line."""
        out: dict[str, Any] = {"detection": "smart_turn" if self.detector else self._mode}
        if self.detector is not None:
            out["end_of_turn"] = self.detector.summary()
        if self.barge_in is not None:
            out["acknowledgements"] = len(self.barge_in.acknowledged)
        return out

    def _resume(self) -> bool:
        return self._session is not None and resume_paused_speech(self._session)

    def _on_stt_metrics(self, metrics: object) -> None:
        """A recognition of one segment (Whisper behind the VAD) finished, words or none: it
        covered speech up to when it started. Its transcript, if any, is on its way through the
        STT node and restarts the decision; the grace keeps the wait from ending before it."""
        if isinstance(metrics, STTMetrics) and not metrics.streamed and self.detector:
            covered = metrics.timestamp - metrics.duration
            asyncio.get_running_loop().call_later(
                NO_WORDS_GRACE, functools.partial(self.detector.stt_accounted, covered, words=False)
            )

    def _on_agent_state(self, ev: lk_events.AgentStateChangedEvent) -> None:
        if self.barge_in is not None:
            self.barge_in.agent_state(ev.new_state)
        if ev.new_state == "speaking" and self.detector is not None:
            self.detector.turn_over()

    def _on_user_state(self, ev: lk_events.UserStateChangedEvent) -> None:
        speaking = ev.new_state == "speaking"
        if self.detector is not None:
            if speaking:
                self.detector.caller_speaking(ev.created_at)
            else:
                self.detector.caller_silent(ev.created_at)
        if self.barge_in is not None:
            if speaking:
                self.barge_in.caller_speaking()
            else:
                self.barge_in.caller_silent()

    def _on_item_added(self, ev: lk_events.ConversationItemAddedEvent) -> None:
        if (
            isinstance(ev.item, ChatMessage)
            and ev.item.role == "user"
            and self.detector is not None
        ):
            self.detector.turn_over()
