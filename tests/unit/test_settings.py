"""Worker settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import (
    CALLS_PER_CPU,
    DEFAULT_AGENT_NAME,
    SettingsError,
    WorkerSettings,
    usable_cpus,
)


def test_defaults_need_no_environment() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.agent_name == DEFAULT_AGENT_NAME
    assert settings.prompts_dir.name == "prompts"
    assert settings.max_calls == CALLS_PER_CPU * usable_cpus()
    assert settings.cpu_limit == 0.9
    assert settings.drain_timeout is None


def test_values_are_read() -> None:
    settings = WorkerSettings.from_env(
        {
            "LIVEKIT_AGENT_NAME": "support",
            "WORKER_PROMPTS_DIR": "/srv/prompts",
            "WORKER_MAX_CALLS": "60",
            "WORKER_CPU_LIMIT": "off",
            "WORKER_DRAIN_TIMEOUT": "4000",
            "WORKER_VAD_MIN_SILENCE": "0.45",
        }
    )
    assert settings.agent_name == "support"
    assert settings.prompts_dir == Path("/srv/prompts")
    assert settings.max_calls == 60
    assert settings.cpu_limit is None
    assert settings.drain_timeout == 4000
    assert settings.vad.min_silence == 0.45


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_MAX_CALLS", "many", "WORKER_MAX_CALLS='many' is not a whole number"),
        ("WORKER_MAX_CALLS", "0", "must be at least 1"),
        ("WORKER_CPU_LIMIT", "1.5", "must be a fraction in (0, 1] or 'off'"),
        ("WORKER_VAD_MIN_SILENCE", "-1", "must not be negative"),
        ("WORKER_INIT_TIMEOUT", "soon", "is not a number"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        WorkerSettings.from_env({name: value})
    assert message in str(excinfo.value)


def test_drain_timeout_covers_the_longest_call() -> None:
    assert WorkerSettings().resolved_drain_timeout(1800) == 1860
    assert WorkerSettings(drain_timeout=2000).resolved_drain_timeout(1800) == 2000
    with pytest.raises(SettingsError, match="at least 1860s"):
        WorkerSettings(drain_timeout=600).resolved_drain_timeout(1800)
