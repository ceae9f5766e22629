"""The local LLM's prompt snapshots, made ahead of calls: by `python -m worker setup` (and so in
the Docker image), and at a worker's start for any agent still without one. Each agent on the
local LLM has its prompt read once, and its calls restore it instead of reading ~300 tokens while
the caller waits (see local_llm_client.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from livekit.agents import llm

from worker.call.agent import read_prompt
from worker.config import AgentConfig, AgentRegistry, LocalLLM
from worker.providers import local_llm, snapshot_name
from worker.tools.calls import prompt_tools

logger = logging.getLogger("worker.local.llm")


async def snapshot_prompts(registry: AgentRegistry, url: str) -> dict[str, float]:
    """Read the prompt of each agent whose first LLM is local, as a call with the default
    placeholder values would, and save its snapshot; seconds per agent id (an agent that
    already had one restores it, and only its greeting is read again)."""
    took: dict[str, float] = {}
    for agent in registry:
        entry = agent.llm[0]
        if not isinstance(entry, LocalLLM) or not entry.warm_prompt:
            continue
        started = time.monotonic()
        model = local_llm(entry, url, snapshot=snapshot_name(agent))
        try:
            await read_prompt(model, *await _prompt(agent))
            if await model.keep_snapshot():
                logger.info("prompt snapshot of %s saved", agent.id)
        finally:
            await model.aclose()
        took[agent.id] = time.monotonic() - started
    return took


async def _prompt(agent: AgentConfig) -> tuple[llm.ChatContext, list[llm.Tool], str]:
    """A call's context before the greeting, its tools and its greeting (default values)."""
    instructions = agent.render(agent.instructions, {})
    context = llm.ChatContext.empty()
    context.add_message(role="system", content=instructions)  # as the session puts them
    return context, await prompt_tools(agent), agent.render(agent.greeting, {})


def snapshot_in_background(registry: AgentRegistry, url: str) -> threading.Thread:
    """`snapshot_prompts` on a thread of its own, while the worker registers and takes calls (a
    call meanwhile reads its prompt itself, as without snapshots)."""

    def run() -> None:
        try:
            asyncio.run(snapshot_prompts(registry, url))
        except Exception:  # the server stopped under it, say: calls only read more
            logger.warning("could not make the prompt snapshots", exc_info=True)

    thread = threading.Thread(target=run, name="prompt-snapshots", daemon=True)
    thread.start()
    return thread
