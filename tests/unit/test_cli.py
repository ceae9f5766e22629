"""`python -m worker` as a user runs it: no keys set, a clean working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET_VARS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVEN_API_KEY", "LIVEKIT_API_SECRET")


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("WORKER_")
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in (
        "start",
        "dev",
        "console",
        "connect",
        "download-files",
        "agents",
        "route",
        "api",
    ):
        assert command in result.stdout


def test_agents_shows_the_providers_each_stage_will_use(tmp_path: Path) -> None:
    result = run("agents", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    agents = {a["id"]: a for a in json.loads(result.stdout)}
    support = agents["5b710eca-ee67-4c3a-aeb6-8b541f451b40"]
    assert support["stt"] == ["local:whisper-base (bundled)"], "no key: local in development"
    assert support["llm"] == ["local:qwen2.5-coder-1.5b"], "the default local LLM"
    assert support["start"].startswith("refused: ")
    assert "deepgram needs DEEPGRAM_API_KEY" in support["start"]
    keys = {"DEEPGRAM_API_KEY": "x" * 8, "OPENAI_API_KEY": "x" * 8, "ELEVEN_API_KEY": "x" * 8}
    result = run("agents", "--json", cwd=tmp_path, **keys)
    agents = {a["id"]: a for a in json.loads(result.stdout)}
    support = agents["5b710eca-ee67-4c3a-aeb6-8b541f451b40"]
    assert support["stt"] == ["deepgram:nova-3"]
    assert support["start"] == "ready"
    assert len(agents["hotel-concierge"]["tts"]) == 2


def test_route_prints_the_resolved_agent(tmp_path: Path) -> None:
    result = run("route", "agent_5b710eca_user_123_1705312800000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "agent_id": "5b710eca-ee67-4c3a-aeb6-8b541f451b40",
        "agent_name": "Ava (Acme support)",
        "user_id": "user_123",
        "timestamp": 1705312800000,
    }


@pytest.mark.parametrize(
    "room", ["lobby", "agent_5b710eca_1705312800000", "agent_unknown-agent_u_1705312800000"]
)
def test_route_errors_are_one_line_with_exit_code_2(tmp_path: Path, room: str) -> None:
    result = run("route", room, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")


def test_start_without_keys_fails_at_start_naming_file_and_variable(tmp_path: Path) -> None:
    result = run("start", cwd=tmp_path, LIVEKIT_URL="ws://127.0.0.1:1")
    assert result.returncode == 1
    assert "prompts/support.md: stt[0]: deepgram needs DEEPGRAM_API_KEY" in result.stderr


def test_a_broken_agent_file_stops_the_worker_naming_file_and_field(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "bad.md").write_text(
        "---\nid: bad\nname: Bad\ngreeting: hi\nstt: [{provider: deepgram, timeout: 0}]\n"
        "llm: [{provider: openai}]\ntts: [{provider: elevenlabs}]\n---\nBe helpful.\n"
    )
    result = run("dev", cwd=tmp_path, WORKER_PROMPTS_DIR=str(prompts))
    assert result.returncode == 1
    assert f"{prompts / 'bad.md'}: stt[0].timeout: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_needs_an_agent(tmp_path: Path) -> None:
    keys = {"DEEPGRAM_API_KEY": "x" * 8, "OPENAI_API_KEY": "x" * 8, "ELEVEN_API_KEY": "x" * 8}
    result = run("console", cwd=tmp_path, **keys)
    assert result.returncode == 1
    assert "console needs --agent ID" in result.stderr
    result = run("console", "--agent", "nobody", cwd=tmp_path, **keys)
    assert result.returncode == 1
    assert "no configured agent matches 'nobody'" in result.stderr


def test_livekit_command_help_comes_from_livekit(tmp_path: Path) -> None:
    result = run("start", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--drain-timeout" in result.stdout
    assert "--url" in result.stdout


def test_a_dotenv_file_is_loaded_but_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WORKER_PROMPTS_DIR=/nowhere\nLIVEKIT_AGENT_NAME=x\n")
    assert "prompts directory not found" in run("agents", cwd=tmp_path).stderr
    result = run("agents", cwd=tmp_path, WORKER_PROMPTS_DIR=str(ROOT / "prompts"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "5b710eca", "--audio", "missing.wav"], "missing.wav: no such file"),
        (["--agent", "5b710eca", "--audio", "notes.txt"], "notes.txt: not a PCM WAV file"),
        (["--agent", "nobody", "--audio", "notes.txt"], "no configured agent matches 'nobody'"),
        (
            ["--agent", "5b710eca", "--audio", "call.wav", "--metadata", "[1]"],
            "--metadata must be a JSON object",
        ),
        (
            ["--agent", "5b710eca", "--audio", "call.wav", "--metadata", "[" * 2000],
            "nested 2000 levels deep",
        ),
        (
            ["--agent", "5b710eca", "--audio", "call.wav", "--metadata", '{"a":"' + "x" * 70000],
            "more than 65536",
        ),
        (["--agent", "5b710eca", "--audio", "call.wav", "--log-level", "BOGUS"], "--log-level"),
        (
            ["--agent", "5b710eca", "--audio", "call.wav", "--audio-out", "no/such/dir/a.wav"],
            "--audio-out no/such/dir/a.wav: the directory no/such/dir does not exist",
        ),
        (
            ["--agent", "5b710eca", "--audio", "call.wav", "--events-out", "nodir/e.jsonl"],
            "--events-out nodir/e.jsonl: the directory nodir does not exist",
        ),
    ],
)
def test_simulate_rejects_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "call.wav").write_bytes((ROOT / "tests/fixtures/caller_basic.wav").read_bytes())
    result = run("simulate", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == "", "stdout carries events only"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in result.stderr


def test_agents_show_their_turn_taking_and_the_fallback_without_the_model(tmp_path: Path) -> None:
    result = run("agents", "--json", cwd=tmp_path)
    support = next(a for a in json.loads(result.stdout) if a["id"].startswith("5b710eca"))
    assert support["turn_taking"]["detection"] == "smart_turn"
    assert support["turn_taking"]["acknowledgements"] > 10, "the English list"
    assert support["turn_taking"]["goodbyes"] > 10, "the English list"
    empty = tmp_path / "no-models"
    result = run("agents", cwd=tmp_path, WORKER_MODEL_CACHE=str(empty))
    assert result.returncode == 0, "a missing end-of-turn model never stops the worker"
    assert "turns: vad, acknowledgements on" in result.stdout
    notes = [line for line in result.stdout.splitlines() if "turn_taking.detection" in line]
    assert any(
        line.startswith("note: ")
        and "support.md: turn_taking.detection: smart_turn: the Smart Turn model" in line
        and "run `python -m worker setup`" in line
        and line.endswith("(vad) instead")
        for line in notes
    ), notes


@pytest.mark.parametrize("args", [["route", "agent_5b710eca_user_123_1705312800000"], ["--help"]])
def test_route_and_help_stay_fast_without_importing_livekit(
    tmp_path: Path, args: list[str]
) -> None:
    """LiveKit Agents takes seconds to import; `route` once took 6-8 s through clips.py."""
    probe = (
        "import sys\nfrom worker.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exit:\n    assert not exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('livekit'))\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr, result.stderr[-500:]
