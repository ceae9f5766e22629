"""`python -m worker simulate` as a newcomer runs it, no keys: the real local models hold a
spoken conversation from a shipped recording."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml

from tests.harness import check_call_events, read_ogg, wer
from tests.local.conftest import Transcribe, read_wav, speech_segments, to_16k_float
from worker.local.llm import QWEN

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
KEYS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVEN_API_KEY")
GREETING = "Hi there, this is Ava from Acme support. How can I help you today?"


def simulate(
    recording: str,
    tmp_path: Path,
    *options: str,
    env: dict[str, str] | None = None,
    ok: bool = True,
) -> tuple[list[dict[str, object]], Path, str]:
    clean = {k: v for k, v in os.environ.items() if k not in KEYS}
    out = tmp_path / "agent.wav"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "simulate", "--agent", "5b710eca"),
            *("--audio", str(FIXTURES / f"{recording}.wav"), "--audio-out", str(out)),
            *("--events-out", str(tmp_path / "events.jsonl"), *options),
        ],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert (result.returncode == 0) is ok, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: events only
    saved = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == events
    return events, out, result.stderr


def expected_user_text(recording: str) -> str:
    manifest = yaml.safe_load((FIXTURES / f"{recording}.yaml").read_text())
    return " ".join(u["text"] for u in manifest["utterances"])


def said(events: list[dict[str, object]], role: str) -> list[dict[str, object]]:
    return [e for e in said_all(events) if e["role"] == role]


def said_all(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """Both sides' final transcripts, in order."""
    return [e for e in events if e["type"] == "transcript" and e["final"]]


@pytest.mark.timeout(300)
def test_a_clean_recorded_call(tmp_path: Path, whisper: Transcribe) -> None:
    (tmp_path / "recordings").mkdir()
    events, agent_wav, stderr = simulate(
        "support_call",
        tmp_path,
        *("--recording-dir", str(tmp_path / "recordings")),
        *("--record-out", str(tmp_path / "record.json")),
    )
    check_call_events(events)
    assert events[-1]["reason"] == "agent_ended", "the caller's goodbye ends the call"
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
    spoken = " ".join(whisper(to_16k_float(s, rate), "en") for s in speech_segments(samples, rate))
    written = " ".join(str(e["text"]) for e in agent)
    assert wer(written, spoken) <= 0.25, f"audio: {spoken!r}\nevents: {written!r}"

    # the call's record (the webhook's body) and its recording: each side on its own channel
    record = json.loads((tmp_path / "record.json").read_text())
    assert [(t["role"], t["text"]) for t in record["transcript"]] == [
        (e["role"], e["text"]) for e in said_all(events)
    ]
    location = Path(urlparse(record["recording"]["location"]).path)
    assert location.parent == tmp_path / "recordings"
    (caller, agent_channel), rate = read_ogg(location)
    assert abs(len(caller) / rate - record["duration"]) < 1.5
    for channel, text in ((caller, expected_user_text("support_call")), (agent_channel, written)):
        heard = " ".join(
            whisper(to_16k_float(s, rate), "en") for s in speech_segments(channel, rate)
        )
        assert wer(text, heard) <= 0.3, f"recording: {heard!r}\nexpected: {text!r}"


@pytest.mark.timeout(300)
def test_the_default_1_5b_model_holds_the_call(tmp_path: Path) -> None:
    """The README's first command with the default local LLM (the suite otherwise runs the
    small SmolLM2): every answer is spoken words, short, and the goodbye ends the call."""
    events, _, _ = simulate("support_call", tmp_path, env={"WORKER_LOCAL_LLM": QWEN})
    check_call_events(events)
    assert events[-1]["reason"] == "agent_ended"
    agent = said(events, "agent")
    answers = [str(e["text"]) for e in agent[1:] if e["text"]]
    assert answers, "the 1.5B answered"
    told = "\n".join(
        f"{e['ts']} {e['role']} interrupted={e['interrupted']} {e['text']!r}"
        for e in said_all(events)
    )
    assert agent[-1]["text"], f"the goodbye was answered:\n{told}"
    assert not agent[-1]["interrupted"], f"and heard in full:\n{told}"
    for answer in answers:
        assert not re.search(r"[*#`_]|https?://|^\s*(-|\d+\.)\s", answer, re.M), answer


@pytest.mark.timeout(300)
def test_the_shipped_agents_tools_reach_the_1_5b_and_never_break_the_call(tmp_path: Path) -> None:
    """The shipped agent's tools (order_status, transfer_call, end_call) on the bundled 1.5B,
    with examples/order_api.py serving the tool's URL: whatever the model does with them (it
    rarely calls one, see the README), the call holds, a tool it calls succeeds, and a transfer
    it asks for is refused (no phone line) without a word of the transfer line."""
    api = subprocess.Popen(  # the order API the shipped tool's URL names
        [sys.executable, str(ROOT / "examples" / "order_api.py")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        events, _, stderr = simulate(
            "multi_turn", tmp_path, "--log-level", "INFO", env={"WORKER_LOCAL_LLM": QWEN}
        )
    finally:
        api.terminate()
        api.wait(10)
    check_call_events(events)
    assert events[-1]["reason"] in ("agent_ended", "input_ended"), events[-1]
    tools = [e for e in events if e["type"] == "tool_call"]
    ended = {e["name"]: e["status"] for e in tools if e["status"] != "started"}
    print("tool calls:", tools)  # what the model did, for the log
    agent = " ".join(str(e["text"]) for e in said(events, "agent"))
    if "order_status" in ended:  # its answer may be cut: this recording's caller talks on
        assert ended["order_status"] == "succeeded", stderr[-2000:]
    if "transfer_call" in ended:
        assert ended["transfer_call"] == "failed"
        assert "connect you with a colleague" not in agent, agent


@pytest.mark.timeout(300)
def test_a_noisy_recorded_call(tmp_path: Path) -> None:
    events, _, _ = simulate("support_call_noisy", tmp_path)
    check_call_events(events)
    heard = " ".join(str(e["text"]) for e in said(events, "user"))
    assert wer(expected_user_text("support_call_noisy"), heard) <= 0.25, heard
    assert len(said(events, "agent")) >= 2


def manifest(recording: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((FIXTURES / f"{recording}.yaml").read_text())
    return loaded


@pytest.mark.timeout(300)
def test_a_caller_pausing_mid_sentence_is_heard_out(tmp_path: Path) -> None:
    """The shipped agent, Whisper behind the VAD: each sentence with a 0.8-1.2 s pause in it is
    one turn, and nothing is said in the pauses (a fixed 0.3 s silence split all three)."""
    events, agent_wav, stderr = simulate("hesitant_call", tmp_path, "--log-level", "INFO")
    check_call_events(events)
    sentences = manifest("hesitant_call")["utterances"]
    heard = [str(e["text"]) for e in said(events, "user")]
    assert len(heard) == len(sentences), heard
    for sentence, text in zip(sentences, heard, strict=True):
        assert wer(sentence["text"], text) <= 0.25, (sentence["text"], text)
    samples, rate = read_wav(agent_wav)
    for sentence in sentences:
        first, second = sentence["parts"]
        pause = samples[int((first["end"] + 0.2) * rate) : int(second["start"] * rate)]
        assert float(np.sqrt(np.mean(pause.astype(np.float64) ** 2))) < 100, (
            f"the agent spoke in the pause of {sentence['text']!r}"
        )
    assert "3 user turns" in stderr, "the call's summary counts them the same"


AGENT_WITH_A_LONG_GREETING = """greeting: Hi there, this is Ava from Acme support. I can help you
  with orders, deliveries, returns and anything about your account, and if I cannot answer
  something myself, I will pass it on to a colleague who can. So, how can I help you today?
turn_taking:
  greeting_interruptible: true
"""


@pytest.mark.timeout(300)
def test_acknowledgements_over_the_agent_are_talked_through(tmp_path: Path) -> None:
    """ "Yeah", "okay", "right" over the agent: it pauses a moment and goes on; none is a turn or
    answered. The caller's real question afterwards is."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shipped = (ROOT / "prompts" / "support.md").read_text(encoding="utf-8")
    fields, body = shipped.split("\n---\n", 1)
    fields = re.sub(r"^greeting: .*$", "", fields, flags=re.MULTILINE)
    fields = re.sub(r"^turn_taking:\n(  .*\n)*", "", fields + "\n", flags=re.MULTILINE)
    (prompts / "support.md").write_text(
        f"{fields.rstrip()}\n{AGENT_WITH_A_LONG_GREETING}---\n{body}", encoding="utf-8"
    )
    events, agent_wav, stderr = simulate(
        "acknowledgement_call",
        tmp_path,
        "--log-level",
        "INFO",
        env={"WORKER_PROMPTS_DIR": str(prompts)},
    )
    check_call_events(events)
    greeting = said(events, "agent")[0]
    assert greeting["interrupted"] is False
    assert str(greeting["text"]).endswith("how can I help you today?"), "played to its end"
    lines = {u["id"]: u for u in manifest("acknowledgement_call")["utterances"]}
    heard = [str(e["text"]) for e in said(events, "user")]
    assert len(heard) == 1, f"only the question is a turn: {heard}"
    assert wer(lines["question"]["text"], heard[0]) <= 0.25
    samples, rate = read_wav(agent_wav)
    for uid in ("ack1", "ack2", "ack3"):
        end = lines[uid]["end"]
        after = samples[int((end + 1.0) * rate) : int((end + 2.5) * rate)]
        assert float(np.sqrt(np.mean(after.astype(np.float64) ** 2))) > 300, (
            f"the agent went on after {uid}"
        )
    assert stderr.count("caller acknowledgement") == 3, stderr[-2000:]
    assert len(said(events, "agent")) >= 2, "the question was answered"


class EchoingGateway(BaseHTTPRequestHandler):
    """An OpenAI-compatible gateway that rejects the key and echoes it in its 401 body (some
    proxies do): whatever logs the error must not print it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {"error": {"message": f"invalid key: {self.headers.get('Authorization')}"}}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(300)
def test_simulate_masks_a_key_the_provider_echoes(tmp_path: Path) -> None:
    key = "sk-proj-echoed-7c1e9a4b2d8f6e03"
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), EchoingGateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        _, _, stderr = simulate(
            "caller_basic",
            tmp_path,
            "--log-level",
            "DEBUG",
            env={
                "OPENAI_API_KEY": key,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{gateway.server_port}/v1",
            },
            ok=False,  # the LLM refused: the call ends in error
        )
    finally:
        gateway.shutdown()
    assert "invalid key: Bearer [redacted]" in stderr, "the gateway's answer was logged, masked"
    assert key not in stderr
    assert key not in (tmp_path / "events.jsonl").read_text()
