"""The latency benchmark keeps working (what it measures is reported by `python -m bench.latency`,
not asserted here: timings are not test conditions on a shared machine)."""

from __future__ import annotations

from livekit.agents import vad

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
