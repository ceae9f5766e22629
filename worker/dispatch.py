"""The dispatch metadata: what a backend (the session API, or its own code) tells one call.

A JSON object. Its keys fill the agent's `{placeholders}` (`placeholders.py`); two reserved
keys can shorten the agent's call limit for this call (`MAX_DURATION_KEY`, never lengthen it) and
turn its recording on or off (`RECORDING_KEY`, where the agent allows it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from worker.config import MIN_CALL_SECONDS, AgentConfig
from worker.placeholders import parse_metadata

logger = logging.getLogger("worker.dispatch")

MAX_DURATION_KEY = "voice_agent.max_duration"
"""Not an identifier, so no placeholder can be named like it."""
RECORDING_KEY = "voice_agent.recording"


def encode_metadata(
    context: Mapping[str, object],
    max_duration: int | None = None,
    recording: bool | None = None,
) -> str:
    """The metadata for a dispatch: `context` (placeholder values), an optional call limit and
    an optional recording choice."""
    for reserved in (MAX_DURATION_KEY, RECORDING_KEY):
        if reserved in context:
            raise ValueError(f"{reserved!r} is reserved")
    metadata = dict(context)
    if max_duration is not None:
        metadata[MAX_DURATION_KEY] = max_duration
    if recording is not None:
        metadata[RECORDING_KEY] = recording
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


def recording_wanted(agent: AgentConfig, metadata: str) -> bool:
    """Whether this call is recorded: the dispatch's choice where the agent allows one, else
    the agent's `recording.enabled`."""
    requested = parse_metadata(metadata, where="dispatch metadata").get(RECORDING_KEY)
    if requested is None:
        return agent.recording.enabled
    if not isinstance(requested, bool):
        logger.warning("ignoring %s in the dispatch metadata: %r is not true or false",
                       RECORDING_KEY, requested)  # fmt: skip
        return agent.recording.enabled
    if not agent.recording.per_session:
        logger.warning(
            "ignoring %s in the dispatch metadata: agent %s does not allow it per session",
            RECORDING_KEY,
            agent.id,
        )
        return agent.recording.enabled
    return requested
