"""Acknowledgements over the agent's speech: "yeah", "uh huh", "okay" mean "go on".

LiveKit pauses the agent at the caller's first sound (`interruption.min_duration`, 0.09 s) and
makes the pause an interruption as soon as a final transcript arrives, which then becomes a
user turn and gets an answer. `AcknowledgementFilter` sits between the STT and the session:

- while the caller talks over the agent, transcripts that are (or may still become) an
  acknowledgement are held back, so they neither interrupt nor start a turn;
- once the words are an acknowledgement and the caller is silent again, they are dropped and
  the paused speech resumes at once (LiveKit's own false-interruption resume, without waiting
  for its timeout);
- as soon as the words are anything else ("yeah, but wait", "stop", a question), everything
  held is released in order and LiveKit interrupts exactly as it would have.

The pause itself is untouched, so a real interruption silences the agent as fast as before.
Acknowledgements never reach the chat context: the LLM sees one uninterrupted answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from livekit.agents import AgentSession, stt

from worker.turns.phrases import PhraseSet

logger = logging.getLogger("worker.turns")

_TEXT_EVENTS = frozenset(
    {
        stt.SpeechEventType.INTERIM_TRANSCRIPT,
        stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
        stt.SpeechEventType.FINAL_TRANSCRIPT,
    }
)


class AcknowledgementFilter:
    """Holds, drops or releases one call's STT events; fed the session's state changes."""

    def __init__(self, phrases: PhraseSet, *, resume: Callable[[], bool]) -> None:
        self._phrases = phrases
        self._resume = resume
        self.acknowledged: list[str] = []
        """The acknowledgements dropped, in order (for the call's summary)."""
        self._agent_speaking = False
        self._paused = False
        """The agent's speech is paused by the caller's voice (it may still resume)."""
        self._caller_speaking = False
        self._overlap = False
        """The caller's latest utterance began over the agent's speech."""
        self._held: list[stt.SpeechEvent] = []
        self._held_final = ""

    # --- session state ---------------------------------------------------------------------------

    def agent_state(self, state: str) -> None:
        if state == "speaking":
            self._paused = False
        elif self._agent_speaking and state == "listening" and self._caller_speaking:
            self._paused = True  # LiveKit paused the playout at the caller's first sound
        elif state != "listening":
            self._paused = False
        self._agent_speaking = state == "speaking"

    def caller_speaking(self) -> None:
        self._settle()
        self._caller_speaking = True
        self._overlap = self._agent_speaking or self._paused

    def caller_silent(self) -> None:
        self._caller_speaking = False
        if self._held_final:
            # after LiveKit's own end-of-speech handling, which re-arms its slower resume timer
            asyncio.get_running_loop().call_soon(self._settle)

    # --- STT events ------------------------------------------------------------------------------

    def process(self, event: stt.SpeechEvent) -> list[stt.SpeechEvent]:
        """The events to pass on now (none while an acknowledgement may be under way)."""
        if not self._overlap or event.type not in _TEXT_EVENTS or not event.alternatives:
            return [event]
        text = event.alternatives[0].text.strip()
        if not text:
            return [event]
        if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            said = f"{self._held_final} {text}".strip()
            if self._phrases.is_acknowledgement(said):
                self._held.append(event)
                self._held_final = said
                if not self._caller_speaking:
                    self._settle()
                return []
        elif self._phrases.could_become_acknowledgement(f"{self._held_final} {text}"):
            self._held.append(event)
            return []
        return self._release(event)

    def _release(self, event: stt.SpeechEvent) -> list[stt.SpeechEvent]:
        """Not an acknowledgement: the rest of this utterance passes untouched."""
        released = [*self._held, event]
        self._held, self._held_final, self._overlap = [], "", False
        return released

    def _settle(self) -> None:
        """The caller is silent and said only acknowledgements: drop them, resume the agent."""
        said = self._held_final
        self._held, self._held_final = [], ""
        if not said:
            return
        self.acknowledged.append(said)
        resumed = self._resume()
        logger.info(
            "caller acknowledgement %r over the agent: not a turn%s",
            said[:40],
            ", resuming the agent's speech" if resumed else "",
        )


def resume_paused_speech(session: AgentSession[Any]) -> bool:
    """Resume speech paused by the caller's voice now, through LiveKit's own false-interruption
    resume (which restores the agent's state and tells the session), instead of after
    `false_interruption_timeout`. The one private call of the worker (pinned livekit-agents
    1.8.9, checked by a unit test); without it the resume comes after the timeout."""
    activity = getattr(session, "_activity", None)
    start_timer = getattr(activity, "_start_false_interruption_timer", None)
    if activity is None or start_timer is None or getattr(activity, "_paused_speech", 1) is None:
        return False
    start_timer(0.0)
    return True
