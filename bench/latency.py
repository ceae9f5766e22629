"""Answer latency and barge-in reaction: the worker's turn-taking defaults against LiveKit's own
(its local v1-mini turn detector, and its timings on VAD silence alone), side by side in one run
(rounds interleaved, so machine noise hits all alike).

    python -m bench.latency [--rounds 5]

Each runs the worker's call code with the same fake providers as the project's reference
measurement (STT final +150 ms after the caller stops, LLM first token +300 ms, TTS first audio
+150 ms), a recorded caller paced in real time, and the agent's audio on a timeline. Measured on
that timeline, as a caller would hear it:

- answer_ms: end of the caller's question -> first agent audio of the answer;
- barge_in_ms: start of the caller talking over the answer -> the agent's audio stops.

Prints one JSON object: per configuration the samples and their median, then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

import numpy as np
from livekit.agents import vad

from tests.fakes import FakeLLM, FakeSTT, FakeTTS, Reply
from tests.harness import FakeCallHarness, Recording, is_type, make_agent
from worker.call.pipeline import load_vad
from worker.config import AgentConfig
from worker.settings import VADSettings

ANSWER = (
    "Let me look that up for you. Your order was packed this morning, it left our warehouse at "
    "noon, and the courier expects to deliver it tomorrow before six in the evening."
)
WINDOW = 0.01  # seconds per loudness window on the agent's timeline
LOUD = 300.0


def livekit_turn_taking(detection: str) -> dict[str, Any]:
    """LiveKit Agents 1.8.9's defaults for the worker's turn-taking knobs, with `detection`."""
    return {
        "turn_taking": {
            "aec_warmup": 0,
            "detection": detection,
            "endpointing": {"min_delay": 0.5, "max_delay": 3.0},
            "interruption": {"min_duration": 0.5, "false_interruption_timeout": 2.0},
            "acknowledgements": {"enabled": False},
        }
    }


LIVEKIT_VAD = VADSettings(min_silence=0.55, min_speech=0.05, prefix_padding=0.5)
CONFIGS: dict[str, tuple[dict[str, Any], VADSettings]] = {
    "worker": ({}, VADSettings()),
    # what LiveKit does self-hosted with nothing set: its local v1-mini turn detector
    "livekit_defaults": (livekit_turn_taking("livekit"), LIVEKIT_VAD),
    # its timings with the turn ended on VAD silence alone (the figure this project quoted first)
    "livekit_vad": (livekit_turn_taking("vad"), LIVEKIT_VAD),
}


def loud_windows(call: FakeCallHarness, start: float) -> np.ndarray:
    """For each 10 ms window from `start` on: was the agent audible?"""
    rate = call.speaker.sample_rate or 24000
    samples = call.speaker.timeline[int(start * rate) :].astype(np.float64)
    size = int(WINDOW * rate)
    count = len(samples) // size
    frames = samples[: count * size].reshape(count, size)
    loud: np.ndarray = np.sqrt((frames**2).mean(axis=1)) > LOUD
    return loud


async def one_call(agent: AgentConfig, vad_model: vad.VAD, caller: Recording) -> dict[str, float]:
    stt = FakeSTT([], latency=0.15, endpoint_silence=None)  # finals exactly 150 ms after speech
    # the whole reply at the first token, as in the reference measurement: token pacing would add
    # the same sentence-buffering delay to both configurations and hide what differs
    llm = FakeLLM(lambda _text: Reply(ANSWER), ttft=0.3, token_interval=0.0)
    async with FakeCallHarness(agent, vad_model=vad_model, stt=stt, llm=llm, tts=FakeTTS()) as call:
        await call.wait_event(is_type("transcript", role="agent"))  # the greeting is over
        question_end = await call.play(caller.clip("question"))
        stt.transcribe_later(caller.text("question"))
        await call.wait_event(is_type("agent_state", state="speaking"), after=len(call.events) - 1)
        await asyncio.sleep(1.5)
        answer_at = question_end + float(np.argmax(loud_windows(call, question_end))) * WINDOW

        clip = caller.clip("barge_in")
        barge_end = await call.play(clip)
        barge_start = barge_end - len(clip) / caller.rate
        stt.transcribe_later(caller.text("barge_in"))
        await asyncio.sleep(1.0)
        loud = loud_windows(call, barge_start)
        last_loud = int(np.flatnonzero(loud[: int(2.0 / WINDOW)]).max(initial=-1))
        return {
            "answer_ms": round((answer_at - question_end) * 1000),
            "barge_in_ms": round((last_loud + 1) * WINDOW * 1000),
        }


async def main(rounds: int) -> None:
    caller = Recording.load("caller_basic")
    samples: dict[str, dict[str, list[float]]] = {
        name: {"answer_ms": [], "barge_in_ms": []} for name in CONFIGS
    }
    models = {name: load_vad(settings) for name, (_, settings) in CONFIGS.items()}
    for _ in range(rounds):
        for name, (overrides, _) in CONFIGS.items():
            result = await one_call(make_agent(**overrides), models[name], caller)
            for metric, value in result.items():
                samples[name][metric].append(value)
    report: dict[str, Any] = {
        name: {
            metric: {"median": statistics.median(values), "samples": values}
            for metric, values in metrics.items()
        }
        for name, metrics in samples.items()
    }
    for other in ("livekit_defaults", "livekit_vad"):
        report[f"ratio_worker_to_{other}"] = {
            metric: round(report["worker"][metric]["median"] / report[other][metric]["median"], 3)
            for metric in ("answer_ms", "barge_in_ms")
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
