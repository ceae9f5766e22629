"""The latency benchmark keeps working (what it measures is reported by `python -m bench.latency`,
not asserted here: timings are not test conditions on a shared machine)."""

from __future__ import annotations

import numpy as np
from livekit.agents import vad

from bench import turn_taking
from bench.latency import CONFIGS, one_call
from tests.harness import Recording, make_agent


async def test_one_benchmark_call_per_configuration_yields_measurements(
    vad_model: vad.VAD, caller: Recording
) -> None:
    for overrides, _ in CONFIGS.values():
        result = await one_call(make_agent(**overrides), vad_model, caller)
        assert set(result) == {"answer_ms", "barge_in_ms"}
        assert result["answer_ms"] > 0, "the answer was heard after the question"
        assert result["barge_in_ms"] > 0, "the agent was talking when the caller cut in"


async def test_the_turn_taking_benchmark_measures_an_acknowledgement_and_a_barge_in(
    vad_model: vad.VAD,
) -> None:
    overrides, _ = turn_taking.CONFIGS["smart_turn"]
    stopped, reactions = await turn_taking.over_the_agent(
        make_agent(**overrides), vad_model, ["a01"]
    )
    assert stopped == [False], "the default talks through a 'yeah'"
    assert len(reactions) == 1
    assert 0 < reactions[0] < 2000, "and stops for the interruption that follows"


def test_a_barge_in_is_timed_to_the_first_lasting_silence() -> None:
    loud = np.array([True] * 25 + [False] * 40 + [True] * 50)  # stops at 250 ms, answers later
    assert turn_taking.stopped_after(loud) == 250
    assert turn_taking.stopped_after(np.ones(300, dtype=bool)) == 2000, "never stopped"
