"""Every scenario file in this directory, run through the real plugins and their stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit.agents import vad

from tests.harness import Recording
from tests.scenarios.runner import Scenario, ScenarioRunner, check, scenario_files


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.stem)
async def test_scenario(path: Path, runner: ScenarioRunner, vad_model: vad.VAD) -> None:
    scenario = Scenario.load(path)
    recording = Recording.load(scenario.recording)
    outcome = await runner.run(scenario, recording)
    await check(scenario, recording, outcome, vad_model)
