"""The offline-stack benchmark keeps working (its numbers are reported by
`python -m bench.local_latency`, not asserted here)."""

from __future__ import annotations

import pytest

from bench.local_latency import VARIANTS, one_call


@pytest.mark.timeout(240)
async def test_one_benchmark_call_with_the_worker_defaults_yields_measurements() -> None:
    result = await one_call(VARIANTS["optimized"])
    assert len(result["answer_ms"]) == 3, "one answer per caller turn"
    barge_ins = len(result["stop_ms"]) + len(result["silent_at_barge_in"])
    assert barge_ins == 2, "two barge-ins, each timed or found the agent silent"
    # a sample is 0 when the moment it times was already past (on a loaded machine a barge-in
    # can land before the agent is audible): a measurement, never a speed to assert
    assert all(value >= 0 for value in result["answer_ms"] + result["stop_ms"])
    assert result["stt_ms"], "LiveKit reported the transcription delay of each turn"
