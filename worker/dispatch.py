"""The dispatch metadata: what a backend (the session API, or its own code) tells one call.

A JSON object. Its keys fill the agent's `{placeholders}` (`placeholders.py`), and one reserved
key, `MAX_DURATION_KEY`, can shorten the agent's call limit for this call (never lengthen it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from .config import MIN_CALL_SECONDS, AgentConfig
from .placeholders import parse_metadata

logger = logging.getLogger("worker.dispatch")

MAX_DURATION_KEY = "voice_agent.max_duration"
"""Not an identifier, so no placeholder can be named like it."""


def encode_metadata(context: Mapping[str, object], max_duration: int | None = None) -> str:
    """The metadata for a dispatch: `context` (placeholder values) and an optional call limit."""
    if MAX_DURATION_KEY in context:
        raise ValueError(f"{MAX_DURATION_KEY!r} is reserved")
    metadata = dict(context)
    if max_duration is not None:
        metadata[MAX_DURATION_KEY] = max_duration
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)


def with_call_limit(agent: AgentConfig, metadata: str) -> AgentConfig:
    """`agent`, its `max_duration` shortened if the metadata asks for a shorter call."""
    fields = parse_metadata(metadata, where="dispatch metadata")
    if MAX_DURATION_KEY not in fields:
        return agent
    requested = fields[MAX_DURATION_KEY]
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        logger.warning(
            "ignoring %s in the dispatch metadata: %r is not a positive whole number of seconds",
            MAX_DURATION_KEY,
            requested,
        )
        return agent
    if requested >= agent.limits.max_duration:
        return agent
    # no shorter than any agent may be configured for: the goodbye needs its time
    shortened = max(requested, MIN_CALL_SECONDS)
    limits = agent.limits.model_copy(update={"max_duration": shortened})
    return agent.model_copy(update={"limits": limits})
