"""Calls on the real local models: Whisper hears the caller through the room, the bundled LLM
answers, Piper speaks the answer back. No keys, no stand-ins. Whisper and Piper live once in the
worker's inference process, so two calls at once work and a call's process does not hold them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.calls import GREETING, KEYS, SUPPORT_PROMPT, Caller, call, voice_worker
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events, wer
from tests.polling import until

LOCAL_TURN_S = 90
"""Whisper, the LLM and Piper share two cores with the test server and the callers."""
MAX_WER = 0.3

pytestmark = pytest.mark.timeout(300)


def local_agent(tmp_path: Path) -> Path:
    """The shipped agent, allowed to run on the local models when `start` finds no keys."""
    agent_file = tmp_path / SUPPORT_PROMPT.name
    text = SUPPORT_PROMPT.read_text()
    agent_file.write_text(text.replace("\nid: ", "\nlocal_fallback: true\nid: ", 1))
    return agent_file


async def ask(caller: Caller, recording: Recording) -> None:
    """Greeted, the caller asks its question: heard right, answered aloud and in the transcript."""
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


def holding_whisper(root: int) -> dict[int, list[str]]:
    """The worker's processes with CTranslate2 (Whisper's engine) loaded: pid, mapped files."""
    found = {}
    for proc in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            paths = [m.path for m in proc.memory_maps(grouped=True) if "ctranslate2" in m.path]
        except psutil.NoSuchProcess:
            continue
        if paths:
            found[proc.pid] = paths
    return found


async def test_a_spoken_question_gets_a_spoken_answer_from_the_local_models(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    no_keys: dict[str, str | None] = dict.fromkeys(KEYS)
    async with (
        voice_worker(livekit_server, tmp_path / "worker", no_keys, [local_agent(tmp_path)]),
        call(livekit_server) as caller,
    ):
        await ask(caller, Recording.load("single_question"))
        await caller.hang_up(LOCAL_TURN_S)
    check_call_events(caller.events)


async def test_two_local_calls_at_once_share_one_whisper_and_piper(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    no_keys: dict[str, str | None] = dict.fromkeys(KEYS)
    recording = Recording.load("single_question")
    async with (
        voice_worker(livekit_server, tmp_path / "worker", no_keys, [local_agent(tmp_path)]) as w,
        call(livekit_server, identity="first") as first,
        call(livekit_server, identity="second") as second,
    ):
        await asyncio.gather(ask(first, recording), ask(second, recording))
        # two job processes (and the pool's idle one) beside the main and inference processes
        processes = psutil.Process(w.process.pid).children(recursive=True)
        assert len(processes) >= 4, processes
        holding = holding_whisper(w.process.pid)
        assert len(holding) == 1, f"Whisper is loaded once per worker: {holding}"
        await asyncio.gather(first.hang_up(LOCAL_TURN_S), second.hang_up(LOCAL_TURN_S))
    check_call_events(first.events)
    check_call_events(second.events)
