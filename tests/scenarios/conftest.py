"""Scenario tests: calls written as data, real plugins against local provider stand-ins."""

from __future__ import annotations

import pytest
from livekit.agents import vad

from worker.pipeline import load_vad
from worker.settings import VADSettings


@pytest.fixture(scope="session")
def vad_model() -> vad.VAD:
    return load_vad(VADSettings())
