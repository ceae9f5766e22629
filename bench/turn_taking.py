"""Turn-taking side by side in one run: the worker's default (Smart Turn with its transcript guard
and acknowledgement-aware barge-in), its previous default (a fixed 0.3 s silence, barge-in after
0.15 s) and LiveKit 1.8.9's defaults (its local v1-mini turn detector, 0.5/3.0 s endpointing,
0.5 s barge-in).

    python -m bench.turn_taking [--rounds 1]

Each configuration runs the worker's call code with the reference fakes (STT final +150 ms after
each part the caller says, LLM first token +300 ms, TTS first audio +150 ms) and the fixture
callers, paced in real time; configurations alternate call by call, so machine noise hits all
alike. Measured on the agent's audio timeline, as the caller hears it:

- answer_ms: end of a complete turn (tests/fixtures/complete_turns) -> first agent audio;
- split: a hesitant sentence (tests/fixtures/hesitant: 24, pauses 0.5-1.2 s mid-sentence)
  became two user turns or the agent started answering in its pause;
- acknowledgement: one said 2 s into a long answer (tests/fixtures/acknowledgements) stopped
  the agent (its turn ended interrupted) or was answered (reached the LLM as a turn);
- barge_in_ms: a real interruption (tests/fixtures/interruptions) starts -> agent audio stops;
- model_ms: the end-of-turn model's own computing time per decision inside the calls (median
  per call, from each call's summary log line).

Prints one JSON object: per configuration the samples and their summaries, then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit.agents import vad

from bench.latency import LIVEKIT_VAD, livekit_turn_taking, loud_windows
from tests.fakes import FakeLLM, FakeSTT, FakeTTS, Reply
from tests.harness import FakeCallHarness, Recording, is_type, make_agent
from worker.call.pipeline import load_vad
from worker.config import AgentConfig
from worker.settings import VADSettings

LONG_ANSWER = (
    "Let me walk you through it. You can return any item within thirty days of delivery, as long "
    "as it is unused and in its original packaging. Print the label from your account, drop the "
    "parcel at any post office, and we refund the original payment method within five business "
    "days of receiving it."
)
WINDOW = 0.01

CONFIGS: dict[str, tuple[dict[str, Any], VADSettings]] = {
    "smart_turn": ({}, VADSettings()),
    "vad_0.3s": (
        {
            "turn_taking": {
                "aec_warmup": 0,
                "detection": "vad",
                "interruption": {"min_duration": 0.15},
                "acknowledgements": {"enabled": False},
            }
        },
        VADSettings(),
    ),
    "livekit_defaults": (livekit_turn_taking("livekit"), LIVEKIT_VAD),
}


class Summaries(logging.Handler):
    """Collects the `turn_taking` part of each call's summary log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("call ended:") and hasattr(record, "turn_taking"):
            self.calls.append(record.turn_taking)


def call(
    agent: AgentConfig, vad_model: vad.VAD, respond: Callable[[str], Reply]
) -> FakeCallHarness:
    stt = FakeSTT([], latency=0.15, endpoint_silence=None)
    llm = FakeLLM(respond, ttft=0.3, token_interval=0.0)  # the whole reply at the first token
    return FakeCallHarness(agent, vad_model=vad_model, stt=stt, llm=llm, tts=FakeTTS())


def first_sound(call: FakeCallHarness, after: float) -> float:
    """Call time of the agent's first audible 10 ms after `after`."""
    loud = loud_windows(call, after)
    return after + float(np.argmax(loud)) * WINDOW if loud.any() else float("nan")


async def complete_turns(agent: AgentConfig, vad_model: vad.VAD) -> list[float]:
    clips = Recording.load("complete_turns")
    answers: list[float] = []
    async with call(agent, vad_model, lambda _: Reply("Sure.")) as c:
        await c.wait_event(is_type("transcript", role="agent"))
        for uid in clips.utterances:
            mark = len(c.events)
            ((_, ended),) = await c.say(clips, uid)
            await c.wait_event(is_type("transcript", role="agent"), after=mark, timeout=15)
            answers.append(round((first_sound(c, ended) - ended) * 1000))
    return answers


async def hesitant_sentences(agent: AgentConfig, vad_model: vad.VAD, uids: list[str]) -> list[bool]:
    clips = Recording.load("hesitant")
    splits = []
    async with call(agent, vad_model, lambda _: Reply("Sure.")) as c:
        await c.wait_event(is_type("transcript", role="agent"))
        for uid in uids:
            mark = len(c.events)
            (_, first_end), (second_start, _) = await c.say(clips, uid)
            await c.wait_event(is_type("transcript", role="agent"), after=mark, timeout=15)
            await asyncio.sleep(0.5)  # a second answer, if the sentence was split
            users = [
                e for e in c.events[mark:] if e["type"] == "transcript" and e["role"] == "user"
            ]
            turns = sum(e["final"] for e in users)
            answered_in_pause = c.agent_rms(first_end + 0.05, second_start) > 300
            splits.append(turns > 1 or answered_in_pause)
    return splits


async def over_the_agent(
    agent: AgentConfig, vad_model: vad.VAD, ack_uids: list[str]
) -> tuple[list[bool], list[float]]:
    """Acknowledgements 2 s into a long answer (did it stop or get answered?), each followed by
    a real interruption (how fast did the agent stop?)."""
    acks, interruptions = Recording.load("acknowledgements"), Recording.load("interruptions")
    question = Recording.load("complete_turns")
    stopped: list[bool] = []
    reactions: list[float] = []
    async with call(agent, vad_model, lambda _: Reply(LONG_ANSWER)) as c:
        await c.wait_event(is_type("transcript", role="agent"))
        await c.say(question, "c05")
        for i, uid in enumerate(ack_uids):
            mark = len(c.events)
            await c.wait_event(is_type("agent_state", state="speaking"), after=mark - 1)
            await asyncio.sleep(2.0)
            requests = len(c.llm.requests)
            await c.say(acks, uid)
            await asyncio.sleep(2.5)
            ack = acks.text(uid).lower().strip(".")
            answered = any(ack in r.lower() for r in c.llm.requests[requests:])
            cut = any(
                e["type"] == "transcript" and e["role"] == "agent" and e["interrupted"]
                for e in c.events[mark:]
            )
            stopped.append(answered or cut)
            interruption = list(interruptions.utterances)[i % len(interruptions.utterances)]
            if c.agent_rms(c.now() - 0.3, c.now()) > 300:  # the agent is talking: cut in
                ((start, _),) = await c.say(interruptions, interruption)
                await asyncio.sleep(1.5)
                reactions.append(stopped_after(loud_windows(c, start)))
            await asyncio.sleep(1.0)
    return stopped, reactions


def stopped_after(loud: np.ndarray, quiet: float = 0.2, limit: float = 2.0) -> float:
    """Milliseconds until the agent's audio went silent for `quiet` seconds (the answer to the
    interruption may follow); `limit` if it never did within it."""
    run = int(quiet / WINDOW)
    for i in range(min(len(loud), int(limit / WINDOW))):
        if not loud[i : i + run].any():
            return round(i * WINDOW * 1000)
    return round(limit * 1000)


def summarize(values: list[float]) -> dict[str, Any]:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return {"n": 0}
    return {
        "p50": round(statistics.median(ordered)),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "n": len(ordered),
        "samples": values,
    }


async def main(rounds: int) -> None:
    summaries = Summaries()
    logging.getLogger("worker.call").addHandler(summaries)
    logging.getLogger("worker").setLevel(logging.INFO)
    models = {name: load_vad(settings) for name, (_, settings) in CONFIGS.items()}
    agents = {name: make_agent(**overrides) for name, (overrides, _) in CONFIGS.items()}
    hesitant = list(Recording.load("hesitant").utterances)
    acks = list(Recording.load("acknowledgements").utterances)
    results: dict[str, dict[str, list[Any]]] = {
        name: {"answer_ms": [], "split": [], "ack_stopped": [], "barge_in_ms": []}
        for name in CONFIGS
    }
    for _ in range(rounds):
        for name in CONFIGS:
            results[name]["answer_ms"] += await complete_turns(agents[name], models[name])
        for chunk in (hesitant[:12], hesitant[12:]):
            for name in CONFIGS:
                results[name]["split"] += await hesitant_sentences(
                    agents[name], models[name], chunk
                )
        for chunk in (acks[:6], acks[6:]):
            for name in CONFIGS:
                stopped, reactions = await over_the_agent(agents[name], models[name], chunk)
                results[name]["ack_stopped"] += stopped
                results[name]["barge_in_ms"] += reactions
    report: dict[str, Any] = {}
    for name, r in results.items():
        report[name] = {
            "answer_ms": summarize(r["answer_ms"]),
            "hesitant_split": f"{sum(r['split'])}/{len(r['split'])}",
            "acknowledgements_stopped_or_answered": (
                f"{sum(r['ack_stopped'])}/{len(r['ack_stopped'])}"
            ),
            "barge_in_ms": summarize(r["barge_in_ms"]),
        }
    decisions = [s["end_of_turn"]["model_ms_p50"] for s in summaries.calls if s.get("end_of_turn")]
    report["smart_turn"]["model_ms_p50_per_call"] = decisions
    report["ratios_to_livekit_defaults"] = {
        name: {
            metric: round(
                report[name][metric]["p50"] / report["livekit_defaults"][metric]["p50"], 3
            )
            for metric in ("answer_ms", "barge_in_ms")
        }
        for name in ("smart_turn", "vad_0.3s")
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    asyncio.run(main(parser.parse_args().rounds))
