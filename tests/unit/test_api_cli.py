"""`python -m worker api` refuses to start, in one line, without what it needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.unit.test_cli import run

API_KEY = "api-key-0123456789abcdef"
LIVEKIT = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": "devkey"}
LIVEKIT_SECRET = "livekit-secret-0123456789abcdef0123"


def run_api(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The `api` command with no LiveKit variables but those in `env` (`run` drops the rest)."""
    blank = dict.fromkeys(("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"), "")
    return run("api", *args, cwd=cwd, **{**blank, **env})


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def test_help_needs_nothing(tmp_path: Path) -> None:
    result = run_api("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "/v1/voice-sessions" in result.stdout
    assert "--port" in result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({**LIVEKIT, "LIVEKIT_API_SECRET": LIVEKIT_SECRET}, "WORKER_API_KEYS"),
        ({**LIVEKIT, "WORKER_API_KEYS": API_KEY}, "LIVEKIT_API_SECRET"),
        (
            {
                **LIVEKIT,
                "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
                "WORKER_API_KEYS": API_KEY,
                "WORKER_API_PORT": "eighty",
            },
            "WORKER_API_PORT='eighty'",
        ),
    ],
    ids=["no-api-keys", "no-livekit-secret", "bad-port"],
)
def test_missing_or_bad_settings_fail_fast_naming_the_variable(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    result = run_api(cwd=tmp_path, **env)
    line = error_line(result)
    assert named in line
    assert API_KEY not in result.stderr
    assert LIVEKIT_SECRET not in result.stderr
