"""`bench.capacity`'s step, run once with one call: what the benchmark measures is measured (its
numbers are the benchmark's to report, not this test's to judge)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.capacity import first_limit, run_step
from tests.e2e.conftest import LiveKitFixture

pytestmark = pytest.mark.timeout(150)


async def test_one_capacity_step_measures_a_whole_call(
    livekit_server: LiveKitFixture, tmp_path: Path
) -> None:
    everywhere = os.sched_getaffinity(0)  # nothing pinned: this test shares its machine
    greetings = tmp_path / "greetings"
    step = await run_step(
        livekit_server,
        0,
        1,
        tmp_path,
        worker_cpus=everywhere,
        harness_cpus=everywhere,
        greetings=str(greetings),
    )
    assert step["failed"] == []
    assert len(list(greetings.glob("*.wav"))) == 1, "the call's greeting is kept for the next"
    for measured in ("greeting_s", "answer_s", "barge_in_s"):
        assert step[measured] is not None, measured
        assert 0 < step[measured]["p50"] <= step[measured]["max"]
    assert step["worker_cores"]["live"] > 0
    memory = step["memory_mb"]
    assert memory["live"]["pss"] > memory["rest"]["pss"], "a live call's process holds memory"
    assert step["end_of_turn_waits"] in (0, 1)  # one question, doubted or not
    assert first_limit([step]) is None  # one call is its own reference
