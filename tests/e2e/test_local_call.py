"""The smoke call on the real local models: Whisper hears the caller through the room, the
bundled LLM answers, Piper speaks the answer back. No keys, no stand-ins."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.calls import GREETING, KEYS, SUPPORT_PROMPT, call, until, voice_worker
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events, wer

LOCAL_TURN_S = 60
"""Whisper, the LLM and Piper share two cores with the test server and the caller."""
MAX_WER = 0.3

pytestmark = pytest.mark.timeout(240)


async def test_a_spoken_question_gets_a_spoken_answer_from_the_local_models(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    # the shipped agent, allowed to run on the local models when `start` finds no keys
    text = SUPPORT_PROMPT.read_text()
    agent_file = tmp_path / SUPPORT_PROMPT.name
    agent_file.write_text(text.replace("\nid: ", "\nlocal_fallback: true\nid: ", 1))
    no_keys: dict[str, str | None] = dict.fromkeys(KEYS)
    recording = Recording.load("single_question")
    async with (
        voice_worker(livekit_server, tmp_path / "worker", no_keys, [agent_file]),
        call(livekit_server) as caller,
    ):
        greeting = await caller.event(LOCAL_TURN_S, type="transcript", role="agent", final=True)
        assert greeting["text"] == GREETING
        asked = time.monotonic()
        caller.play(recording.clip("question"))
        heard = await caller.event(LOCAL_TURN_S, type="transcript", role="user", final=True)
        assert wer(recording.text("question"), heard["text"]) <= MAX_WER, heard["text"]
        await until(lambda: caller.spoke_since(asked, 1.0), LOCAL_TURN_S, "a spoken answer")
        answers = await until(
            lambda: caller.find(type="transcript", role="agent", final=True)[1:],
            LOCAL_TURN_S,
            "the answer's transcript",
        )
        assert answers[0]["text"].strip()
        await caller.hang_up(LOCAL_TURN_S)
    check_call_events(caller.events)
