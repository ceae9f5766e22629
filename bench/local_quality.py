"""The bundled local LLMs' answers on scripted support turns, scored by rules, side by side.

    python -m bench.local_quality [--models qwen2.5-coder-1.5b,smollm2-135m]

Each model is served by the worker's own `LocalLLMServer` and reached through the worker's own
LLM path (`build_llm`: the OpenAI plugin behind `ToolSafeLLM`) with the shipped support agent's
instructions, greeting, `end_call` tool, sampling settings and history limit. The caller's turns
(bench/support_turns.yaml) each grow one conversation. An answer passes when it:

- says something (`said`), in at most two sentences (`short`),
- holds no list, markdown, emoji or URL (`spoken`: everything is read aloud),
- on the caller's goodbye, ends the call (`ends`: the model's `end_call`, or the worker's own
  goodbye match on the caller's words), and elsewhere does not hang up (`stays`).

The model's own `end_call` on goodbyes is counted apart (`end_call_by_model`). Whether an answer
is sensible is for a person to read: every answer is in the output. A benchmark, not a test: it
prints JSON and never fails on a score.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from livekit.agents import llm

from worker.call.pipeline import load_vad
from worker.config import AgentConfig, load_registry
from worker.local.llm import QWEN, SMOLLM2, LocalLLMServer
from worker.local.runtime import LocalRuntime, llm_batch_threads, llm_threads
from worker.providers import build_llm, connect_options, resolve
from worker.settings import VADSettings
from worker.tools.calls import prompt_tools

ROOT = Path(__file__).resolve().parents[1]
TURNS = Path(__file__).with_name("support_turns.yaml")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST = re.compile(r"^\s*([-*\u2022]|\d+[.)])\s", re.M)
_MARKDOWN = re.compile(r"\*\*|__|`|^\s*#", re.M)
_URL = re.compile(r"https?://|www\.|\b[\w-]+\.(com|org|net|io)\b", re.I)


@dataclass(frozen=True)
class Turn:
    conversation: str
    text: str
    goodbye: bool


def load_turns() -> dict[str, list[Turn]]:
    data = yaml.safe_load(TURNS.read_text(encoding="utf-8"))
    return {
        name: [
            Turn(name, t, False) if isinstance(t, str) else Turn(name, t["text"], t["goodbye"])
            for t in turns
        ]
        for name, turns in data["conversations"].items()
    }


def support_agent() -> AgentConfig:
    registry = resolve(load_registry(ROOT / "prompts"), {}, allow_local=True).registry
    return registry.get("5b710eca")


def failures(agent: AgentConfig, turn: Turn, text: str, called: list[str]) -> list[str]:
    """The rules `text` (and the tools it called) breaks on `turn`."""
    goodbyes = agent.goodbyes()
    hung_up = "end_call" in called
    broken = []
    if not text.strip() and not (turn.goodbye and hung_up):
        broken.append("said")
    if len([s for s in _SENTENCE_END.split(text.strip()) if s]) > 2:
        broken.append("short")
    emoji = any(0x2600 <= ord(c) <= 0x27BF or ord(c) >= 0x1F000 for c in text)
    if _LIST.search(text) or _MARKDOWN.search(text) or _URL.search(text) or emoji:
        broken.append("spoken")
    if turn.goodbye and not (hung_up or (goodbyes is not None and goodbyes.is_goodbye(turn.text))):
        broken.append("ends")
    if not turn.goodbye and hung_up:
        broken.append("stays")
    return broken


async def run_model(model: str, agent: AgentConfig, turns: dict[str, list[Turn]]) -> dict[str, Any]:
    server = LocalLLMServer(
        model, threads=llm_threads(), batch_threads=llm_batch_threads(), parallel=1
    )
    runtime = LocalRuntime(vad=load_vad(VADSettings()), llm_url=server.start())
    entry = agent.llm[0]
    instructions, greeting = agent.render(agent.instructions, {}), agent.render(agent.greeting, {})
    tools = await prompt_tools(agent)
    model_llm = build_llm(agent, {}, runtime)
    answers: list[dict[str, Any]] = []
    try:
        for conversation in turns.values():
            ctx = llm.ChatContext()
            ctx.add_message(role="system", content=instructions)
            ctx.add_message(role="assistant", content=greeting)
            for turn in conversation:
                ctx.add_message(role="user", content=turn.text)
                request = ctx.copy()
                if entry.max_history is not None:
                    request = request.truncate(max_items=entry.max_history)
                started = time.monotonic()
                stream = model_llm.chat(
                    chat_ctx=request, tools=tools, conn_options=connect_options(entry)
                )
                response = await stream.collect()
                await stream.aclose()
                called = [call.name for call in response.tool_calls]
                ctx.add_message(role="assistant", content=response.text)
                answers.append(
                    {
                        "conversation": turn.conversation,
                        "caller": turn.text,
                        "agent": response.text,
                        "tools": called,
                        "seconds": round(time.monotonic() - started, 2),
                        "failed": failures(agent, turn, response.text, called),
                    }
                )
    finally:
        await model_llm.aclose()
        server.stop()
    goodbye_turns = [a for t, a in zip(_flat(turns), answers, strict=True) if t.goodbye]
    rules = ("said", "short", "spoken", "ends", "stays")
    return {
        "passed": sum(not a["failed"] for a in answers),
        "turns": len(answers),
        "failures": {rule: sum(rule in a["failed"] for a in answers) for rule in rules},
        "end_call_by_model": f"{sum('end_call' in a['tools'] for a in goodbye_turns)}/"
        f"{len(goodbye_turns)}",
        "seconds_p50": statistics.median(a["seconds"] for a in answers),
        "answers": answers,
    }


def _flat(turns: dict[str, list[Turn]]) -> list[Turn]:
    return [turn for conversation in turns.values() for turn in conversation]


async def main(models: list[str]) -> None:
    agent, turns = support_agent(), load_turns()
    report = {model: await run_model(model, agent, turns) for model in models}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=f"{QWEN},{SMOLLM2}")
    asyncio.run(main([m for m in parser.parse_args().models.split(",") if m]))
