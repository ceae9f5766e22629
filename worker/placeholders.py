"""Values for an agent's `{placeholders}`, taken from untrusted call context.

Sources, lowest precedence first: the config's defaults, the caller's participant attributes, the
dispatch metadata (a JSON object set by the backend that dispatched the agent). Every value is
untrusted text that ends up inside the LLM's instructions, so it is capped and stripped of braces,
newlines and control characters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from worker.config import PLACEHOLDER_MAX_LEN, AgentConfig
from worker.untrusted import MAX_METADATA_BYTES, UntrustedJSONError, loads_bounded

logger = logging.getLogger("worker.placeholders")


def sanitize(value: str) -> str:
    """Untrusted text made safe to splice into instructions: one line, no braces, capped."""
    cleaned = "".join(
        " " if ch in "\r\n\t" or not ch.isprintable() else ch for ch in value if ch not in "{}"
    )
    return " ".join(cleaned.split())[:PLACEHOLDER_MAX_LEN]


def parse_metadata(metadata: str, *, where: str) -> dict[str, object]:
    """The dispatch metadata as a JSON object; anything else is logged and ignored."""
    if not metadata.strip():
        return {}
    try:
        parsed = loads_bounded(metadata, max_bytes=MAX_METADATA_BYTES)
    except UntrustedJSONError as exc:
        logger.warning("ignoring %s: %s", where, exc)
        return {}
    if not isinstance(parsed, dict):
        logger.warning("ignoring %s: expected a JSON object, got %s", where, type(parsed).__name__)
        return {}
    return parsed


def placeholder_values(
    agent: AgentConfig, *, metadata: str = "", attributes: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The sanitized value of each of `agent`'s placeholders for one call."""
    values = dict(agent.placeholders)
    sources: list[tuple[str, Mapping[str, object]]] = [
        ("caller attribute", attributes or {}),
        ("dispatch metadata", parse_metadata(metadata, where="dispatch metadata")),
    ]
    for where, source in sources:
        for name in agent.placeholders:
            if name not in source:
                continue
            raw = source[name]
            if isinstance(raw, bool | int | float):
                raw = json.dumps(raw)
            if not isinstance(raw, str):
                logger.warning(
                    "ignoring %s %r: expected text, got %s", where, name, type(raw).__name__
                )
                continue
            values[name] = sanitize(raw)
    return values
