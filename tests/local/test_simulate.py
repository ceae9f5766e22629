"""`python -m worker simulate` as a newcomer runs it, no keys: the real local models hold a
spoken conversation from a shipped recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import check_call_events, wer
from tests.local.conftest import read_wav, speech_segments, to_16k_float
from worker.local_stt import WhisperSTT

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
KEYS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVEN_API_KEY")
GREETING = "Hi there, this is Ava from Acme support. How can I help you today?"


def simulate(recording: str, tmp_path: Path) -> tuple[list[dict[str, object]], Path, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    out = tmp_path / "agent.wav"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "simulate", "--agent", "5b710eca"),
            *("--audio", str(FIXTURES / f"{recording}.wav"), "--audio-out", str(out)),
            *("--events-out", str(tmp_path / "events.jsonl")),
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: events only
    saved = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == events
    return events, out, result.stderr


def expected_user_text(recording: str) -> str:
    manifest = yaml.safe_load((FIXTURES / f"{recording}.yaml").read_text())
    return " ".join(u["text"] for u in manifest["utterances"])


def said(events: list[dict[str, object]], role: str) -> list[dict[str, object]]:
    return [e for e in events if e["type"] == "transcript" and e["role"] == role and e["final"]]


@pytest.mark.timeout(300)
def test_a_clean_recorded_call(tmp_path: Path, whisper: WhisperSTT) -> None:
    events, agent_wav, stderr = simulate("support_call", tmp_path)
    check_call_events(events)
    assert events[-1]["reason"] == "input_ended"
    agent = said(events, "agent")
    assert agent[0]["text"] == GREETING
    assert len(agent) >= 2, "the agent answered"
    assert any(e["interrupted"] for e in agent), "the caller's barge-in interrupted a reply"
    heard = " ".join(str(e["text"]) for e in said(events, "user"))
    assert wer(expected_user_text("support_call"), heard) <= 0.10, heard
    assert "has no OPENAI_API_KEY: using the local provider" in stderr

    samples, rate = read_wav(agent_wav)
    recording, recording_rate = read_wav(FIXTURES / "support_call.wav")
    assert len(samples) / rate >= len(recording) / recording_rate, "on the caller's timeline"
    # what was heard, transcribed back piece by piece (whole, Whisper's long-form decoding skips
    # stretches of a mostly silent track)
    spoken = " ".join(
        whisper.transcribe(to_16k_float(s, rate), "en") for s in speech_segments(samples, rate)
    )
    written = " ".join(str(e["text"]) for e in agent)
    assert wer(written, spoken) <= 0.25, f"audio: {spoken!r}\nevents: {written!r}"


@pytest.mark.timeout(300)
def test_a_noisy_recorded_call(tmp_path: Path) -> None:
    events, _, _ = simulate("support_call_noisy", tmp_path)
    check_call_events(events)
    heard = " ".join(str(e["text"]) for e in said(events, "user"))
    assert wer(expected_user_text("support_call_noisy"), heard) <= 0.25, heard
    assert len(said(events, "agent")) >= 2
