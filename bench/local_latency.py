"""The offline stack's latency (Whisper, the local LLM through llama.cpp, Piper), and what each
cheap optimization gains, compared in one run.

    python -m bench.local_latency [--rounds 3]

Each call runs in a fresh process (so "cold" means cold) through the worker's own call code,
with the shipped support agent on local providers and a recorded caller: a question after the
greeting, then two more utterances, each 1.5 s into the previous answer (barge-ins). Measured on
the agent's audio timeline, per caller turn:

- answer_ms: the caller stops (true end, from the recording) -> first agent audio, and
  first_answer_ms for the call's first answer only (what cold models and prompts cost);
- answer_from_vad_ms: the VAD reports the end of speech -> first agent audio;
- parts: transcription (speech end -> transcript), LLM first token, TTS first audio, from
  LiveKit's per-turn metrics;
- stop_ms: the caller starts talking over the agent -> the agent's last audio; a barge-in
  that finds the agent silent (between two pieces of its reply, or done) is counted in
  silent_at_barge_in instead.

Variants, interleaved round by round: `baseline` (none of the optimizations: Whisper with its
library default beam of 5, Piper on whole sentences, cold models, the LLM server on 2 threads),
`first_clause` (Piper starts on a reply's first clause), `warm` (Whisper and Piper run once at
load, the LLM starts from the agent's prompt snapshot as `setup` leaves it, and reads the
prompt while the greeting plays), `greedy_whisper` (beam 1),
`optimized_llm_1_thread` (all three, the LLM generating on one thread), `optimized_1_thread`
(all three, one thread per model and for the LLM), `optimized` (the worker's defaults: all three,
the LLM on every core; the default 1.5B model) and `smollm2` (the same defaults with the small
SmolLM2). Turns end on silence (`detection: vad`), so the numbers are the stack's own; the
variant `smart_turn` adds the shipped agent's end-of-turn model, whose doubt about a finished
sentence can add up to `voice_max_delay` (bench/turn_taking.py measures that decision).
Prints one JSON object: per variant the medians, p95s and samples; then ratios to `baseline`
and the calls that failed per variant (their errors go to stderr; the run goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import Recording
from worker.call.lifecycle import CallSetup, run_call
from worker.call.pipeline import load_vad
from worker.config import AgentConfig, AgentRegistry, load_registry
from worker.local.llm import LocalLLMServer
from worker.local.prompt_snapshots import snapshot_prompts
from worker.local.runtime import LocalRuntime, llm_batch_threads, llm_threads
from worker.providers import build_providers, resolve
from worker.settings import VADSettings
from worker.transports.local import CallClock, LocalTransport, PacedAudioInput, VirtualSpeaker

ROOT = Path(__file__).resolve().parents[1]
_OFF = {
    "first_clause": False,
    "warm": False,
    "beam_size": 5,
    "threads": None,
    "llm_threads": 2,  # the LLM server's default before this benchmark
    "model": None,  # the default local LLM (the 1.5B)
    "detection": "vad",  # turns end on silence: the stack's latency, not the turn model's doubt
}
_ALL = {**_OFF, "first_clause": True, "warm": True, "beam_size": 1}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": _OFF,
    "first_clause": {**_OFF, "first_clause": True},
    "warm": {**_OFF, "warm": True},
    "greedy_whisper": {**_OFF, "beam_size": 1},
    "optimized_llm_1_thread": {**_ALL, "llm_threads": 1},
    "optimized_1_thread": {**_ALL, "threads": 1, "llm_threads": 1},
    "optimized": {**_ALL, "llm_threads": None},  # the worker's defaults
    "smollm2": {**_ALL, "llm_threads": None, "model": "smollm2-135m"},  # defaults, small LLM
    "smart_turn": {**_ALL, "llm_threads": None, "detection": "smart_turn"},  # all the defaults
}
TURNS = ("question", "barge_in", "goodbye")
WINDOW = 0.01
LOUD = 300.0
PARTS = {
    "transcription_delay": "stt_ms",
    "end_of_turn_delay": "end_of_turn_ms",
    "on_user_turn_completed_delay": "turn_completed_ms",
    "llm_node_ttft": "llm_ttft_ms",
    "tts_node_ttfb": "tts_ttfb_ms",
}


def loudness(speaker: VirtualSpeaker, start: float) -> np.ndarray:
    rate = speaker.sample_rate or 24000
    samples = speaker.timeline[int(start * rate) :].astype(np.float64)
    size = int(WINDOW * rate)
    count = len(samples) // size
    windows: np.ndarray = np.sqrt((samples[: count * size].reshape(count, size) ** 2).mean(axis=1))
    return windows > LOUD


@dataclass
class Call:
    """A call in progress: its transport pieces, the events so far, and session measurements."""

    clock: CallClock
    audio_in: PacedAudioInput
    speaker: VirtualSpeaker
    events: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    vad_ends: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in PARTS.values()})

    def on_event(self, packet: bytes) -> None:
        self.events.append({**json.loads(packet), "at": self.clock.now()})
        self.arrived.set()

    async def wait_for(self, kind: str, after: int, **fields: Any) -> dict[str, Any]:
        while True:
            for event in self.events[after:]:
                if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    return event
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 30)

    def watch(self, session: Any) -> None:
        """Record the VAD's ends of speech and the per-turn metrics LiveKit reports."""

        def on_user(ev: Any) -> None:
            if ev.new_state == "listening":
                self.vad_ends.append(self.clock.now())

        def on_item(ev: Any) -> None:
            for key, name in PARTS.items():
                if (value := (ev.item.metrics or {}).get(key)) is not None:
                    self.parts[name].append(round(value * 1000))

        session.on("user_state_changed", on_user)
        session.on("conversation_item_added", on_item)


def configured_agent(variant: dict[str, Any]) -> AgentConfig:
    """The shipped support agent on local providers, with the variant's switches."""
    registry = resolve(load_registry(ROOT / "prompts"), {}, allow_local=True).registry
    agent = registry.get("5b710eca")
    return agent.model_copy(
        update={
            "tts": [
                e.model_copy(update={"first_clause": variant["first_clause"]}) for e in agent.tts
            ],
            "llm": [e.model_copy(update={"warm_prompt": variant["warm"]}) for e in agent.llm],
            "stt": [e.model_copy(update={"beam_size": variant["beam_size"]}) for e in agent.stt],
            "turn_taking": agent.turn_taking.model_copy(update={"detection": variant["detection"]}),
        }
    )


async def one_call(variant: dict[str, Any]) -> dict[str, list[float]]:
    """One measured call in this process; returns the samples of each metric."""
    agent = configured_agent(variant)
    server = LocalLLMServer(None, threads=llm_threads(), batch_threads=llm_batch_threads())
    url = server.start()
    if variant["warm"]:  # the prompt snapshot `setup` leaves (made once, then restored)
        await snapshot_prompts(AgentRegistry([agent]), url)
    runtime = LocalRuntime.load(
        AgentRegistry([agent]), vad_model=load_vad(VADSettings()), llm_url=url, warm=variant["warm"]
    )
    caller = Recording.load("caller_basic")
    clock = CallClock()
    call = Call(clock, PacedAudioInput(clock, sample_rate=caller.rate), VirtualSpeaker(clock))
    transport = LocalTransport(audio_in=call.audio_in, speaker=call.speaker, on_event=call.on_event)
    setup = CallSetup(
        agent=agent,
        call_id="CA_bench",
        vad=runtime.vad,
        providers=build_providers(agent, {}, runtime),
        turn_runner=runtime.turn_runner,
    )
    call_task = asyncio.create_task(run_call(setup, transport))
    await call.wait_for("transcript", 0, role="agent")  # the greeting is over
    call.watch(transport.listener.session)  # type: ignore[union-attr]
    samples = await measure_turns(call, caller)
    transport.hang_up("benchmark done")
    await call_task
    server.stop()
    return {**samples, **call.parts}


async def measure_turns(call: Call, caller: Recording) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        "answer_ms": [],
        "first_answer_ms": [],
        "answer_from_vad_ms": [],
        "stop_ms": [],
        "silent_at_barge_in": [],
    }
    for index, utterance in enumerate(TURNS):
        mark = len(call.events)
        if index:
            await asyncio.sleep(1.5)  # into the previous answer: this one barges in
        clip = caller.clip(utterance)
        end = await call.audio_in.play(clip)
        start = end - len(clip) / caller.rate
        await call.wait_for("agent_state", mark, state="speaking")
        await asyncio.sleep(0.3)
        first_audio = end + float(np.argmax(loudness(call.speaker, end))) * WINDOW
        samples["answer_ms"].append(round((first_audio - end) * 1000))
        if not index:  # the call's first answer: what cold models and prompts cost
            samples["first_answer_ms"].append(round((first_audio - end) * 1000))
        vad_end = next((t for t in call.vad_ends if t > end - 0.05), None)
        if vad_end is not None:
            samples["answer_from_vad_ms"].append(round((first_audio - vad_end) * 1000))
        if index:
            before_stop = loudness(call.speaker, start)[: int(2.0 / WINDOW)]
            last_loud = np.flatnonzero(before_stop).max(initial=-1)
            if last_loud < 0:  # the agent was between pieces, or done: nothing to stop
                samples["silent_at_barge_in"].append(1)
            else:
                samples["stop_ms"].append(round((last_loud + 1) * WINDOW * 1000))
    return samples


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_child(name: str) -> dict[str, list[float]] | None:
    variant = VARIANTS[name]
    env = dict(os.environ)
    if variant["threads"]:
        env["WORKER_LOCAL_THREADS"] = str(variant["threads"])
    if variant["llm_threads"]:
        env["WORKER_LLM_THREADS"] = str(variant["llm_threads"])
    env.pop("WORKER_LOCAL_LLM", None)
    if variant["model"]:
        env["WORKER_LOCAL_LLM"] = variant["model"]
    for key in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVEN_API_KEY"):
        env.pop(key, None)
    result = subprocess.run(  # noqa: S603 - this interpreter, this module
        [sys.executable, "-m", "bench.local_latency", "--one", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:  # one failed call is reported, and the run's other calls kept
        print(f"{name}: the call failed:\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main(rounds: int, variants: list[str]) -> None:
    collected: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    started = time.monotonic()
    failed = dict.fromkeys(variants, 0)
    for _ in range(rounds):
        for name in variants:
            if (measured := run_child(name)) is None:
                failed[name] += 1
                continue
            for metric, values in measured.items():
                collected[name].setdefault(metric, []).extend(values)
    report: dict[str, Any] = {
        name: {
            metric: (
                {"count": len(v)}
                if metric == "silent_at_barge_in"
                else {"median": statistics.median(v), "p95": p95(v), "samples": v}
            )
            for metric, v in metrics.items()
            if v
        }
        for name, metrics in collected.items()
    }
    report["ratio_to_baseline"] = {
        name: {
            metric: round(report[name][metric]["median"] / report["baseline"][metric]["median"], 3)
            for metric in ("answer_ms", "first_answer_ms", "answer_from_vad_ms", "tts_ttfb_ms")
            if metric in report[name] and report["baseline"][metric]["median"]
        }
        for name in variants
        if name != "baseline"
    }
    report["failed_calls"] = failed
    report["seconds"] = round(time.monotonic() - started)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset (baseline is always included)",
    )
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one_call(VARIANTS[args.one]))))
    else:
        chosen = ["baseline", *(v for v in args.variants.split(",") if v and v != "baseline")]
        unknown = set(chosen) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants: {sorted(unknown)}")
        main(args.rounds, chosen)
