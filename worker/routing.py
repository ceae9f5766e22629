"""Room names to agents: the grammar of `agent_{agent_id}_{user_id}_{timestamp}` and agent lookup.

Pure functions with no LiveKit imports, so the CLI (`python -m worker route`), `on_request` and the
job entrypoint share one definition, and property tests can exercise it in isolation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "agent_"
MAX_AGENT_ID_LEN = 64
MAX_USER_ID_LEN = 128
MAX_TIMESTAMP_DIGITS = 16  # epoch milliseconds stay exact in a JavaScript number
MIN_PREFIX_LEN = 8  # room names often carry only the first 8 hex digits of a UUID

AGENT_ID_RE = re.compile(r"[A-Za-z0-9-]+")
# Identity-safe characters: what a LiveKit identity, a log line and a URL path all take unescaped.
USER_ID_RE = re.compile(r"[A-Za-z0-9_.@+:=-]+")
_ROOM_RE = re.compile(
    rf"{PREFIX}(?P<agent_id>[A-Za-z0-9-]+)_(?P<user_id>.+)_(?P<timestamp>[0-9]+)", re.DOTALL
)


ROOM_NAME_PATTERN = (
    rf"^{PREFIX}[A-Za-z0-9-]{{1,{MAX_AGENT_ID_LEN}}}_[A-Za-z0-9_.@+:=-]{{1,{MAX_USER_ID_LEN}}}"
    rf"_[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}$"
)
"""What `parse_room` accepts, as one regular expression (for API schemas)."""


class RoutingError(ValueError):
    """A room name that cannot be routed to an agent; the message says why, on one line."""


@dataclass(frozen=True)
class RoomName:
    """The parts of a routable room name, kept verbatim: `format_room(parse_room(x)) == x`."""

    agent_id: str
    user_id: str
    timestamp: str

    @property
    def timestamp_ms(self) -> int:
        return int(self.timestamp)


def parse_room(name: str) -> RoomName:
    """Split a room name into agent id, user id and timestamp, or raise `RoutingError`."""
    if not name.startswith(PREFIX):
        raise RoutingError(f"room name {_quote(name)} does not start with {PREFIX!r}")
    match = _ROOM_RE.fullmatch(name)
    if match is None:
        raise RoutingError(
            f"room name {_quote(name)} is not agent_{{agent_id}}_{{user_id}}_{{timestamp}} "
            "(agent id: letters, digits, '-'; timestamp: digits)"
        )
    parsed = RoomName(match["agent_id"], match["user_id"], match["timestamp"])
    _check_parts(parsed)
    return parsed


def format_room(room: RoomName) -> str:
    """The room name for `room`; validates the parts so nothing unparseable is ever produced."""
    if not AGENT_ID_RE.fullmatch(room.agent_id):
        raise RoutingError(f"agent id {_quote(room.agent_id)} may only hold letters, digits, '-'")
    if not room.timestamp.isascii() or not room.timestamp.isdigit():
        raise RoutingError(f"timestamp {_quote(room.timestamp)} must be digits")
    _check_parts(room)
    return f"{PREFIX}{room.agent_id}_{room.user_id}_{room.timestamp}"


def _check_parts(room: RoomName) -> None:
    if len(room.agent_id) > MAX_AGENT_ID_LEN:
        raise RoutingError(f"agent id is longer than {MAX_AGENT_ID_LEN} characters")
    if not room.user_id:
        raise RoutingError("user id is empty")
    if len(room.user_id) > MAX_USER_ID_LEN:
        raise RoutingError(f"user id is longer than {MAX_USER_ID_LEN} characters")
    if not USER_ID_RE.fullmatch(room.user_id):
        raise RoutingError(
            f"user id {_quote(room.user_id)} may only hold letters, digits and _ . @ + : = -"
        )
    if len(room.timestamp) > MAX_TIMESTAMP_DIGITS:
        raise RoutingError(f"timestamp is longer than {MAX_TIMESTAMP_DIGITS} digits")


def resolve_agent_id(requested: str, known_ids: Iterable[str]) -> str:
    """The configured id `requested` names: an exact id wins, else a unique case-insensitive prefix
    of at least `MIN_PREFIX_LEN` characters."""
    ids = list(known_ids)
    if requested in ids:
        return requested
    if len(requested) >= MIN_PREFIX_LEN:
        wanted = requested.lower()
        matches = [agent_id for agent_id in ids if agent_id.lower().startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:  # unreachable with a validated registry; kept for direct callers
            raise RoutingError(f"agent id {requested!r} matches several agents: {sorted(matches)}")
    raise RoutingError(f"no configured agent matches {requested!r}")


def ambiguous_prefixes(known_ids: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of configured ids that share their first `MIN_PREFIX_LEN` characters (a config error:
    a room name carrying that prefix could not be routed)."""
    seen: dict[str, str] = {}
    clashes: list[tuple[str, str]] = []
    for agent_id in known_ids:
        key = agent_id[:MIN_PREFIX_LEN].lower()
        if len(agent_id) >= MIN_PREFIX_LEN and key in seen:
            clashes.append((seen[key], agent_id))
        elif len(agent_id) >= MIN_PREFIX_LEN:
            seen[key] = agent_id
    return clashes


def _quote(value: str, limit: int = 80) -> str:
    """A bounded, single-line rendering of untrusted text for error messages and logs."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)
