"""The two local end-of-turn models on the same fixtures, side by side: accuracy, time per
decision and memory. Each model runs in a fresh process of its own (for its memory).

    python -m bench.turn_models

- smart_turn: Pipecat's Smart Turn v3.2 (ONNX, BSD-2), the last 8 s of the turn, threshold 0.5;
- livekit: LiveKit's v1-mini (livekit-local-inference, LiveKit Model License), the last 1.2 s,
  its English threshold;
- smart_turn+transcript: the worker's detector, Smart Turn behind the transcript guard (a
  transcript stopping on a word no sentence ends on is unfinished whatever the voice says),
  given the fixture's exact words as the reference STT would.

Every input is what the detector hears at its decision: the speech with 0.3 s before it and
0.2 s of silence after it (LiveKit asks its model at 200 ms of silence; Smart Turn was trained on
turns cut so). Cases: the first part of each hesitant sentence (tests/fixtures/hesitant: must be
"unfinished"), each whole hesitant sentence, and each complete turn (tests/fixtures/
complete_turns), both "finished". Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.harness import Recording
from worker.turns.phrases import ends_mid_sentence

RATE = 16000
MODELS = ("smart_turn", "livekit")


def cases() -> list[tuple[str, np.ndarray, str, bool]]:
    """(kind, audio, words, finished) for every case, audio padded as at a decision."""
    hesitant, complete = Recording.load("hesitant"), Recording.load("complete_turns")

    def padded(samples: np.ndarray) -> np.ndarray:
        silence = np.zeros(int(0.3 * RATE), np.int16)
        return np.concatenate([silence, samples, silence[: int(0.2 * RATE)]])

    out = []
    for uid, utterance in hesitant.utterances.items():
        first = utterance["parts"][0]
        start, end = int(first["start"] * RATE), int(first["end"] * RATE)
        out.append(("fragment", padded(hesitant.samples[start:end]), first["text"], False))
        out.append(("sentence", padded(hesitant.clip(uid)), hesitant.text(uid), True))
    for uid in complete.utterances:
        out.append(("complete", padded(complete.clip(uid)), complete.text(uid), True))
    return out


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:  # noqa: PTH123
        return int(statm.read().split()[1]) * 4096 / 2**20


def load(model: str) -> tuple[Callable[[np.ndarray], float], float]:
    """The model's probability function and its "finished" threshold."""
    if model == "smart_turn":
        from worker.local.runtime import default_threads
        from worker.turns.smart_turn import THRESHOLD, SmartTurnModel, model_path

        smart = SmartTurnModel(model_path(), threads=default_threads())
        return smart.probability, THRESHOLD
    from livekit.local_inference import EOT, EOT_MAX_SAMPLES

    eot = EOT()
    return lambda audio: float(eot.predict(np.ascontiguousarray(audio[-EOT_MAX_SAMPLES:]))), 0.36


def measure(model: str) -> dict[str, Any]:
    """One model, in this process: verdicts per case, seconds per decision, memory."""
    data = cases()
    before = rss_mb()
    probability, threshold = load(model)
    probability(data[0][1])  # warm, as the worker's prewarm does
    loaded = rss_mb()
    verdicts, seconds = [], []
    for kind, audio, text, finished in data:
        started = time.perf_counter()
        p = probability(audio)
        seconds.append(time.perf_counter() - started)
        verdicts.append({"kind": kind, "text": text, "finished": finished, "p": round(p, 3)})
    return {
        "threshold": threshold,
        "verdicts": verdicts,
        "seconds": seconds,
        "load_mb": round(loaded - before),
        "peak_mb": round(rss_mb() - before),
    }


def accuracy(verdicts: list[dict[str, Any]], threshold: float, guard: bool) -> dict[str, str]:
    right: dict[str, list[bool]] = {"fragment": [], "sentence": [], "complete": []}
    for v in verdicts:
        judged = v["p"] >= threshold and not (guard and ends_mid_sentence(v["text"], "en"))
        right[v["kind"]].append(judged == v["finished"])
    return {
        "fragments_judged_unfinished": f"{sum(right['fragment'])}/{len(right['fragment'])}",
        "hesitant_sentences_judged_finished": f"{sum(right['sentence'])}/{len(right['sentence'])}",
        "complete_turns_judged_finished": f"{sum(right['complete'])}/{len(right['complete'])}",
    }


def main() -> None:
    report: dict[str, Any] = {}
    for model in MODELS:
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bench.turn_models", "--one", model],
            capture_output=True,
            text=True,
            check=True,
        )
        raw = json.loads(done.stdout)
        ms = sorted(s * 1000 for s in raw["seconds"])
        report[model] = {
            **accuracy(raw["verdicts"], raw["threshold"], guard=False),
            "decision_ms_p50": round(ms[len(ms) // 2], 1),
            "decision_ms_p95": round(ms[int(0.95 * len(ms))], 1),
            "memory_mb_loaded": raw["load_mb"],
            "memory_mb_peak": raw["peak_mb"],
        }
        if model == "smart_turn":
            report["smart_turn+transcript"] = accuracy(
                raw["verdicts"], raw["threshold"], guard=True
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", choices=MODELS, help=argparse.SUPPRESS)
    one = parser.parse_args().one
    if one:
        print(json.dumps(measure(one)))
    else:
        main()
