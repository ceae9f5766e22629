"""Calls cycling through one worker for a bounded time: what the load test and `bench.soak` run.

`concurrency` callers each place call after call against one `python -m worker start` (run as
`tests.load.probed_worker`, which reports its main process's RSS, file descriptors, threads,
asyncio tasks and children), with the stand-ins as providers: the greeting, a question, the
agent's answer, a hang-up. Resources are compared at rest (no call running, the pool back to its
idle processes): after the warm-up calls, and at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent as proto_agent

from tests.e2e.calls import (
    GREETING,
    JOIN_S,
    TURN_S,
    WorkerProcess,
    call,
    room_name,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording, check_call_events
from tests.standins.openai import Reply

ANSWER = "We open at nine on Saturday, and the store closes at six."
REST_S = 30.0
"""How long the pool may take to settle back to its idle processes after the last call."""


async def answer(body: dict[str, Any]) -> Reply:
    return [ANSWER]


@dataclass
class CallOutcome:
    caller: str
    room: str
    seconds: float
    error: str | None = None
    """Why the call did not go as a call must (None: it did)."""
    answered: bool = False
    """Whether the agent's answer to the question arrived within `TURN_S`."""


@dataclass
class SoakReport:
    calls: list[CallOutcome] = field(default_factory=list)
    warm: dict[str, float] = field(default_factory=dict)
    """The main process at rest after the warm-up calls."""
    end: dict[str, float] = field(default_factory=dict)
    """The main process at rest after the last call."""
    peak_rss_mb: float = 0.0
    timeline: list[dict[str, float]] = field(default_factory=list)
    """The probe after each call of the timed phase, `elapsed` seconds into it."""
    jobs: dict[str, int] = field(default_factory=dict)
    """The test server's job statuses at the end, by name."""
    dispatched: int = 0

    @property
    def failures(self) -> list[CallOutcome]:
        return [c for c in self.calls if c.error is not None]

    @property
    def rss_growth(self) -> float:
        """After warm-up, as a fraction of the warm RSS."""
        return (self.end["rss_mb"] - self.warm["rss_mb"]) / self.warm["rss_mb"]

    def as_json(self) -> dict[str, Any]:
        durations = sorted(c.seconds for c in self.calls)
        return {
            "calls": len(self.calls),
            "failed": [f"{c.caller}: {c.error}" for c in self.failures],
            "unanswered": [c.caller for c in self.calls if c.error is None and not c.answered],
            "dispatched": self.dispatched,
            "jobs": self.jobs,
            "call_s_p50": round(durations[len(durations) // 2], 2) if durations else None,
            "call_s_max": round(durations[-1], 2) if durations else None,
            "rss_mb": {
                "warm": round(self.warm["rss_mb"], 1),
                "end": round(self.end["rss_mb"], 1),
                "peak": round(self.peak_rss_mb, 1),
            },
            "rss_growth_pct": round(100 * self.rss_growth, 2),
            "at_rest": {
                key: [self.warm[key], self.end[key]]
                for key in ("fds", "threads", "pool_threads", "tasks", "children")
            },
        }


def read_probe(path: Path) -> dict[str, float]:
    return dict(json.loads(path.read_text()))


async def at_rest(worker: WorkerProcess, probe: Path, lk: LiveKitFixture) -> dict[str, float]:
    """The probe once no job runs and the child processes have stopped changing for 3 s
    (finished jobs' processes gone, the idle ones started)."""
    deadline = time.monotonic() + REST_S
    stable_since, last = time.monotonic(), read_probe(probe)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = read_probe(probe)
        busy = now["active_jobs"] or any(not r.job.state.ended_at for r in lk.workers.jobs.values())
        if busy or now["children"] != last["children"] or now["fds"] != last["fds"]:
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= 3.0:
            return now
    raise AssertionError(f"the worker did not come to rest within {REST_S} s: {last}")


async def one_call(lk: LiveKitFixture, caller: str, question: Any) -> CallOutcome:
    started = time.monotonic()
    events: list[dict[str, Any]] = []
    room = room_name(caller)
    try:
        async with call(lk, room, caller) as c:
            events = c.events
            await c.event(JOIN_S, type="transcript", role="agent", text=GREETING)
            c.play(question)
            try:
                await c.event(TURN_S, type="transcript", role="agent", text=ANSWER)
                answered = True
            except pytest.fail.Exception:  # reported; the call must still end as a call must
                answered = False
            await c.hang_up()
        check_call_events(c.events)
    except (Exception, pytest.fail.Exception) as exc:  # pytest's Failed is a BaseException
        seen = [(e["type"], e.get("state") or e.get("text", "")[:40]) for e in events[-4:]]
        error = f"{type(exc).__name__}: {exc} (last events: {seen})"
        return CallOutcome(caller, room, time.monotonic() - started, error)
    return CallOutcome(caller, room, time.monotonic() - started, answered=answered)


def room_log(log: str, room: str, limit: int = 40) -> list[str]:
    """The worker's log lines about `room` (time, level, message), the last `limit` of them:
    what a failed call's job did, without the whole soak's log."""
    lines = []
    for line in log.splitlines():
        if room not in line:
            continue
        try:
            record = json.loads(line)
            lines.append(f"{record.get('timestamp', '')} {record.get('level')} {record['message']}")
        except (ValueError, KeyError, TypeError):
            lines.append(line[:300])
    return lines[-limit:]


async def soak(
    lk: LiveKitFixture,
    log_dir: Path,
    env: Mapping[str, str],
    *,
    seconds: float,
    concurrency: int = 2,
    warmup_calls: int = 4,
) -> SoakReport:
    """`warmup_calls` calls, a rest, then `concurrency` callers for `seconds`, then a rest."""
    recording = Recording.load("single_question")
    question = recording.clip("question")
    report = SoakReport()
    probe = log_dir / "probe.json"
    settings = {
        **env,
        "SOAK_PROBE_FILE": str(probe),
        "WORKER_MAX_CALLS": str(concurrency + 1),
        "WORKER_IDLE_PROCESSES": str(concurrency),
    }
    async with (
        stand_ins(recording, answer, min_score=0.0) as services,
        voice_worker(
            lk, log_dir, {**services.env(), **settings}, module="tests.load.probed_worker"
        ) as worker,
    ):
        for i in range(warmup_calls):
            report.calls.append(await one_call(lk, f"warmup{i}", question))
        report.warm = await at_rest(worker, probe, lk)
        start = time.monotonic()

        async def caller_loop(slot: int) -> None:
            n = 0
            while time.monotonic() < start + seconds:
                report.calls.append(await one_call(lk, f"c{slot}n{n}", question))
                sample = read_probe(probe)
                report.peak_rss_mb = max(report.peak_rss_mb, sample["rss_mb"])
                report.timeline.append({**sample, "elapsed": time.monotonic() - start})
                n += 1

        await asyncio.gather(*(caller_loop(slot) for slot in range(concurrency)))
        report.end = await at_rest(worker, probe, lk)
        report.dispatched = len(lk.workers.jobs)
        for record in lk.workers.jobs.values():
            status = proto_agent.JobStatus.Name(record.job.state.status)
            report.jobs[status] = report.jobs.get(status, 0) + 1
    return report
