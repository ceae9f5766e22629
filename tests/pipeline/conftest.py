"""Pipeline tests: the real AgentSession through the worker's session code, in real time."""

from __future__ import annotations

import pytest
from livekit.agents import vad

from tests.harness import Recording
from worker.call.pipeline import load_vad
from worker.settings import VADSettings


@pytest.fixture(scope="session")
def vad_model() -> vad.VAD:
    """Silero, loaded once for the whole run as the worker loads it once per process."""
    return load_vad(VADSettings())


@pytest.fixture(scope="session")
def caller() -> Recording:
    return Recording.load("caller_basic")
