"""The local LLM's prompt snapshots, made ahead of any call by `python -m worker setup` (and so
in the Docker image): each agent on the local LLM has its prompt read once, and even its first
call restores it instead of reading ~300 tokens while the caller waits (see local_llm_client.py).
"""

from __future__ import annotations

import logging
import time

from livekit.agents import llm

from .agent import VoiceAgent, read_prompt
from .config import AgentConfig, AgentRegistry, LocalLLM
from .providers import local_llm, snapshot_name

logger = logging.getLogger("worker.local_llm")


async def snapshot_prompts(registry: AgentRegistry, url: str) -> dict[str, float]:
    """Read the prompt of each agent whose first LLM is local, as a call with the default
    placeholder values would, and save its snapshot; seconds per agent id (a snapshot that
    already existed is restored and only checked, in well under a second)."""
    took: dict[str, float] = {}
    for agent in registry:
        entry = agent.llm[0]
        if not isinstance(entry, LocalLLM) or not entry.warm_prompt:
            continue
        started = time.monotonic()
        model = local_llm(entry, url, snapshot=snapshot_name(agent))
        try:
            await read_prompt(model, *_prompt(agent))
            if not await model.saved():
                logger.debug("no new prompt snapshot for %s (it had one)", agent.id)
        finally:
            await model.aclose()
        took[agent.id] = time.monotonic() - started
    return took


def _prompt(agent: AgentConfig) -> tuple[llm.ChatContext, list[llm.Tool], str]:
    """A call's context before the greeting, its tools and its greeting (default values)."""
    instructions = agent.render(agent.instructions, {})
    greeting = agent.render(agent.greeting, {})
    voice = VoiceAgent(
        instructions=instructions,
        greeting=greeting,
        greeting_interruptible=False,
        on_end_call=lambda: None,
    )
    context = llm.ChatContext.empty()
    context.add_message(role="system", content=instructions)  # as the session puts them
    return context, [t for t in voice.tools if isinstance(t, llm.Tool)], greeting
