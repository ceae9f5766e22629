"""Capacity: N calls at once through one real worker, for N in a ramp, until it breaks; prints JSON.

    python -m tests.lkserver.netns python -m bench.capacity --calls 1,2,3,4,6 --worker-cpus 0

A real `python -m worker start` (job processes as in production) against `tests/lkserver`, with
the stand-ins as providers (Deepgram, OpenAI and ElevenLabs as local servers), and N callers on
the official SDK, each with a recorded caller: the greeting, a question, a long answer the caller
talks over, the next answer, a hang-up. The worker and its processes are pinned to
`--worker-cpus` and this process (the test server's WebRTC, the callers, the stand-ins) to the
rest, so the harness's own cost, which is large (aiortc decodes and re-encodes every call's
audio in Python), is kept off the worker's cores and reported beside it: a step where the
harness's core is saturated measured the harness, and says so (`harness_bound`).

Per N: the time to the greeting (dispatch to the first greeting audio at the caller), the answer
latency (end of the question to the first answer audio at the caller, through Opus and WebRTC
both ways; the stand-ins add their latency), the barge-in reaction (the interruption's start to
the agent's audio going quiet at the caller), p50/p95/max of each; the worker's CPU while all N
calls are live, in cores, and per call above the idle worker; its memory (RSS, PSS, USS of the
main process and every child) at rest and with N calls live, and per call; the worker's "slower
than realtime" VAD warnings; the turns the end-of-turn model doubted (each waits, lengthening
that answer); failed calls; and the first limit hit, against the one-call step:
answer p95 over 110 %, barge-in p95 250 ms over it, or a failed call. Each step is a fresh worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.calls import (
    JOIN_S,
    SPEECH_RMS,
    TURN_S,
    Caller,
    call,
    room_name,
    script,
    stand_ins,
    voice_worker,
)
from tests.e2e.conftest import LiveKitFixture, running_server
from tests.harness import Recording
from tests.lkserver.netns import RUNNER, in_test_namespace
from tests.polling import until

LONG_ANSWER = (
    "Of course. You can return any item within thirty days of delivery, in its original "
    "packaging, with the receipt or the order number. Refunds go back to the card you paid with, "
    "usually within five working days, and exchanges ship as soon as the return arrives."
)
ADDRESS_ANSWER = "We are at twelve Harbor Street."
LISTEN_S = 2.0
"""Every call listens this long once all are greeted, before any question: the idle cost."""
TALK_OVER_AFTER_S = 1.5
"""How far into the long answer the caller talks over it."""
QUIET_S = 0.2
"""The agent's audio below speech level this long at the caller: it has stopped."""
ANSWER_BUDGET = 1.10
BARGE_IN_BUDGET_S = 0.25
"""Over the one-call step's: through the test server's WebRTC (aiortc's jitter buffer, Opus
twice) one call's barge-in already measures about 0.5 s at the caller (the pipeline benchmark
measures the stop itself)."""
HARNESS_SATURATED = 0.9
"""Of the harness's cores in use: the step measured the harness, not the worker."""


@dataclass
class CallTimes:
    greeting_s: float | None = None
    answer_s: float | None = None
    barge_in_s: float | None = None
    error: str | None = None


@dataclass
class Tree:
    """The worker's main process and its children: CPU seconds and memory, sampled."""

    pid: int

    def processes(self) -> list[psutil.Process]:
        main = psutil.Process(self.pid)
        return [main, *main.children(recursive=True)]

    def pin(self, cpus: set[int]) -> None:
        """The main process and its current children; the processes it forks later inherit."""
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.cpu_affinity(sorted(cpus))

    def cpu(self) -> dict[int, float]:
        times = {}
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                t = process.cpu_times()
                times[process.pid] = t.user + t.system
        return times

    def memory_mb(self) -> dict[str, float]:
        rss = pss = uss = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                info = process.memory_full_info()
                rss, pss, uss = rss + info.rss, pss + info.pss, uss + info.uss
        return {"rss": rss / 2**20, "pss": pss / 2**20, "uss": uss / 2**20}


def cores_between(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    """CPU cores used by the processes alive at both samples (a job that ended is not counted:
    every call is live through the window)."""
    used = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
    return used / seconds


def first_quiet(caller: Caller, since: float) -> float | None:
    """When the agent's audio at the caller went below speech level for `QUIET_S` after `since`."""
    frames = int(QUIET_S * 100)
    run = 0
    for at, level in caller.levels:
        if at < since:
            continue
        run = run + 1 if level <= SPEECH_RMS else 0
        if run >= frames:
            return at - (frames - 1) / 100
    return None


def first_speech(caller: Caller, since: float) -> float | None:
    return next((at for at, level in caller.levels if at >= since and level > SPEECH_RMS), None)


class Countdown:
    """Set once `n` calls have passed a point (or failed before it)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.reached = asyncio.Event()
        if n <= 0:
            self.reached.set()

    def mark(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.reached.set()


@dataclass
class Step:
    """The N calls of one step, and when all of them were live together."""

    n: int
    times: list[CallTimes] = field(default_factory=list)
    greeted: Countdown = field(init=False)
    answered: Countdown = field(init=False)

    def __post_init__(self) -> None:
        self.greeted, self.answered = Countdown(self.n), Countdown(self.n)


async def one_call(lk: LiveKitFixture, step: Step, slot: int, recording: Recording) -> None:
    times = CallTimes()
    step.times.append(times)
    question, interrupt = recording.clip("question"), recording.clip("interrupt")
    greeted = answered = False
    try:
        dispatched = time.monotonic()
        async with call(lk, room_name(f"cap{step.n}x{slot}"), f"cap{step.n}x{slot}") as caller:
            await caller.event(JOIN_S, type="transcript", role="agent", final=True)
            if (heard := first_speech(caller, dispatched)) is not None:
                times.greeting_s = heard - dispatched
            greeted = True
            step.greeted.mark()
            await step.greeted.reached.wait()
            await asyncio.sleep(LISTEN_S)

            caller.play(question)
            asked_end = time.monotonic() + question.size / recording.rate
            await until(lambda: caller.spoke_since(asked_end, 0.3), TURN_S, "the long answer")
            if (heard := first_speech(caller, asked_end)) is not None:
                times.answer_s = heard - asked_end
                await asyncio.sleep(max(0.0, heard + TALK_OVER_AFTER_S - time.monotonic()))
            talked_over = time.monotonic()
            caller.play(interrupt)
            await caller.event(TURN_S, type="transcript", role="agent", interrupted=True)
            if (quiet := first_quiet(caller, talked_over)) is not None:
                times.barge_in_s = quiet - talked_over
            await caller.event(TURN_S, type="transcript", role="agent", text=ADDRESS_ANSWER)
            answered = True
            step.answered.mark()
            await caller.hang_up()
    except (Exception, pytest.fail.Exception) as exc:  # a failed call is the step's result
        times.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if not greeted:
            step.greeted.mark()
        if not answered:
            step.answered.mark()


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    p95 = known[min(len(known) - 1, math.ceil(0.95 * len(known)) - 1)]
    return {
        "p50": round(statistics.median(known), 3),
        "p95": round(p95, 3),
        "max": round(known[-1], 3),
    }


async def run_step(
    lk: LiveKitFixture,
    index: int | str,
    n: int,
    log_dir: Path,
    *,
    worker_cpus: set[int],
    harness_cpus: set[int],
    greetings: str,
    idle_processes: int | None = None,
) -> dict[str, Any]:
    """One step of `n` calls; `idle_processes`: the worker's warm pool (default: `n`, so no call
    waits for a process to start)."""
    recording = Recording.load("barge_in")
    replies = [("return policy", LONG_ANSWER), ("address", ADDRESS_ANSWER)]
    settings = {
        "WORKER_MAX_CALLS": str(n + 1),
        "WORKER_IDLE_PROCESSES": str(n if idle_processes is None else idle_processes),
        "WORKER_GREETING_CACHE": greetings,
    }
    step_dir = log_dir / f"step{index}-n{n}"
    step_dir.mkdir(parents=True, exist_ok=True)
    harness = psutil.Process()
    async with (
        stand_ins(recording, script(replies)) as services,
        voice_worker(lk, step_dir, {**services.env(), **settings}) as worker,
    ):
        tree = Tree(worker.process.pid)
        tree.pin(worker_cpus)
        await asyncio.sleep(5.0)  # the idle pool settles
        tree.pin(worker_cpus)
        rest = tree.memory_mb()
        idle_before, idle_at = tree.cpu(), time.monotonic()
        await asyncio.sleep(3.0)
        idle_cores = cores_between(idle_before, tree.cpu(), time.monotonic() - idle_at)

        step = Step(n)
        calls = asyncio.gather(*(one_call(lk, step, slot, recording) for slot in range(n)))
        await step.greeted.reached.wait()
        live_before, live_at = tree.cpu(), time.monotonic()
        harness_before = harness.cpu_times()
        live_memory = tree.memory_mb()
        await step.answered.reached.wait()
        seconds = time.monotonic() - live_at
        live_cores = cores_between(live_before, tree.cpu(), seconds)
        harness_after = harness.cpu_times()
        harness_cores = (
            harness_after.user + harness_after.system - harness_before.user - harness_before.system
        ) / seconds
        await calls
    log = (step_dir / "worker.log").read_text(errors="replace")
    summaries = [json.loads(line) for line in log.splitlines() if '"call ended' in line]
    return {
        "calls": n,
        "failed": [t.error for t in step.times if t.error],
        "greeting_s": spread(t.greeting_s for t in step.times),
        "answer_s": spread(t.answer_s for t in step.times),
        "barge_in_s": spread(t.barge_in_s for t in step.times),
        "worker_cores": {
            "idle": round(idle_cores, 3),
            "live": round(live_cores, 3),
            "per_call": round((live_cores - idle_cores) / n, 3),
            "window_s": round(seconds, 1),
        },
        "memory_mb": {
            "rest": {k: round(v, 1) for k, v in rest.items()},
            "live": {k: round(v, 1) for k, v in live_memory.items()},
            "per_call": {k: round((live_memory[k] - rest[k]) / n, 1) for k in rest},
        },
        "vad_slower_than_realtime": log.count("slower than realtime"),
        # a turn the end-of-turn model doubted waits up to 1.5 s: the answer's latency says so
        "end_of_turn_waits": sum(
            c.get("turn_taking", {}).get("end_of_turn", {}).get("waited", 0) for c in summaries
        ),
        "harness_cores": round(harness_cores, 3),
        "harness_bound": harness_cores >= HARNESS_SATURATED * len(harness_cpus),
    }


def first_limit(steps: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first step past a budget, against the one-call step (the first)."""
    if not steps or not steps[0]["answer_s"]:
        return None
    single = steps[0]["answer_s"]["p95"]
    for step in steps:
        if step["failed"]:
            return {"calls": step["calls"], "limit": "a call failed"}
        if step["answer_s"] and step["answer_s"]["p95"] > ANSWER_BUDGET * single:
            return {"calls": step["calls"], "limit": f"answer p95 over {ANSWER_BUDGET:.0%}"}
        barge_in = steps[0]["barge_in_s"]
        if (
            step["barge_in_s"]
            and barge_in
            and step["barge_in_s"]["p95"] > barge_in["p95"] + BARGE_IN_BUDGET_S
        ):
            return {
                "calls": step["calls"],
                "limit": f"barge-in p95 {BARGE_IN_BUDGET_S} s over one call's",
            }
    return None


async def run(
    ramp: Sequence[int],
    log_dir: Path,
    worker_cpus: set[int],
    harness_cpus: set[int],
    *,
    cached_greetings: bool = True,
    idle_processes: int | None = None,
) -> dict[str, Any]:
    """The ramp; with `cached_greetings`, every step's worker shares one greeting cache, filled
    by an unreported call first (a worker's steady state), else each call renders its own."""
    os.sched_setaffinity(0, harness_cpus)
    steps = []
    greetings = str(log_dir / "greetings") if cached_greetings else "off"
    plan: list[tuple[int | str, int]] = [*enumerate(ramp)]
    if cached_greetings:
        plan.insert(0, ("warm-up", 1))
    with (log_dir / "driver.out").open("w") as out, contextlib.redirect_stdout(out):
        for index, n in plan:
            async with running_server() as lk:
                step = await run_step(
                    lk,
                    index,
                    n,
                    log_dir,
                    worker_cpus=worker_cpus,
                    harness_cpus=harness_cpus,
                    greetings=greetings,
                    idle_processes=idle_processes,
                )
            if index == "warm-up":
                continue
            steps.append(step)
            print(json.dumps(step), file=sys.stderr)
            if step["failed"] and len(step["failed"]) == n:
                break  # every call failed: larger steps would too
    return {
        "machine": {"cpus": os.cpu_count(), "worker_cpus": sorted(worker_cpus)},
        "greetings": "cached" if cached_greetings else "rendered",
        "idle_processes": "calls" if idle_processes is None else idle_processes,
        "harness_cpus": sorted(harness_cpus),
        "steps": steps,
        "first_limit": first_limit(steps),
        "log_dir": str(log_dir),
    }


def cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="1,2,3,4", help="the ramp: calls at once per step")
    parser.add_argument("--worker-cpus", type=cpus, default={0})
    parser.add_argument("--harness-cpus", type=cpus, default=None, help="default: the others")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument(
        "--greetings",
        choices=["cached", "rendered"],
        default="cached",
        help="cached: the worker's greeting cache, filled first (the default); rendered: off",
    )
    parser.add_argument(
        "--idle-processes",
        type=int,
        default=None,
        help="the worker's warm pool (WORKER_IDLE_PROCESSES); default: each step's calls",
    )
    args = parser.parse_args()
    if not in_test_namespace():
        sys.exit(
            f"bench.capacity needs the e2e network namespace: {RUNNER} python -m bench.capacity"
        )
    harness_cpus = args.harness_cpus or (set(range(os.cpu_count() or 1)) - args.worker_cpus)
    if not harness_cpus:
        sys.exit("bench.capacity: no CPU left for the harness (--harness-cpus)")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="capacity-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ramp = [int(n) for n in args.calls.split(",")]
    result = asyncio.run(
        run(
            ramp,
            log_dir,
            args.worker_cpus,
            harness_cpus,
            cached_greetings=args.greetings == "cached",
            idle_processes=args.idle_processes,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
