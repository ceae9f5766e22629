"""The data-channel protocol between the agent and the caller's app (the README has the table).

Outgoing events are UTF-8 JSON objects on topic `TOPIC`, sent reliably, each with `type`,
`call_id`, a per-call monotonic `seq` and `ts` (epoch milliseconds). No event exceeds
`MAX_PACKET_BYTES`: long text is split into numbered parts. Incoming control messages are parsed
strictly; anything unexpected raises `ControlError` with a one-line reason for the warning log.
"""

from __future__ import annotations

import enum
import functools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from worker.untrusted import UntrustedJSONError, loads_bounded

TOPIC = "voice-agent"
"""The topic of every event we send, and of control messages (which are also accepted on "")."""
MAX_PACKET_BYTES = 15 * 1024
CONTROL_MAX_DEPTH = 4
"""A control message is one flat object."""
"""LiveKit's documented limit for one reliable data packet."""

Role = Literal["user", "agent"]
AgentStateName = Literal["initializing", "idle", "listening", "thinking", "speaking"]


class EndReason(enum.StrEnum):
    """Why a call ended: the `reason` of `call_ended`."""

    CALLER_LEFT = "caller_left"
    CLIENT_ENDED = "client_ended"
    AGENT_ENDED = "agent_ended"
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"
    ERROR = "error"
    WORKER_SHUTDOWN = "worker_shutdown"
    INPUT_ENDED = "input_ended"
    TRANSFERRED = "transferred"


class Control(enum.Enum):
    """Control messages a linked caller may send."""

    END_CALL = "end_call"
    AUDIO_ENDED = "AudioEnded"  # the seed-era hang-up message


class ControlError(ValueError):
    """An incoming message that is not a valid control message (logged, then ignored)."""


def parse_control(data: bytes) -> Control:
    """Decode one incoming data packet into a control message, or raise `ControlError`."""
    if len(data) > MAX_PACKET_BYTES:
        raise ControlError(f"oversized message ({len(data)} bytes > {MAX_PACKET_BYTES})")
    try:
        message = loads_bounded(data, max_bytes=MAX_PACKET_BYTES, max_depth=CONTROL_MAX_DEPTH)
    except UntrustedJSONError as exc:
        raise ControlError(f"not acceptable JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError(f"expected a JSON object, got {type(message).__name__}")
    if "type" in message:
        if not isinstance(message["type"], str):
            raise ControlError("'type' must be a string")
        if message["type"] == Control.END_CALL.value:
            return Control.END_CALL
        raise ControlError(f"unknown message type {message['type'][:40]!r}")
    if message.get("message") == Control.AUDIO_ENDED.value:
        return Control.AUDIO_ENDED
    raise ControlError("neither {'type': 'end_call'} nor {'message': 'AudioEnded'}")


class EventEncoder:
    """Stamps and serializes the events of one call; `seq` grows by one per packet."""

    def __init__(
        self, call_id: str, *, after_seq: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        """`after_seq`: the last `seq` already used (by a job process that died, see
        `crash_guard`)."""
        self.call_id = call_id
        self._clock = clock
        self._seq = after_seq

    def transcript(
        self, role: Role, text: str, *, final: bool, interrupted: bool = False
    ) -> list[bytes]:
        fields = {"role": role, "final": final, "interrupted": interrupted}
        return self._text_event("transcript", text, fields)

    def agent_state(self, state: AgentStateName) -> list[bytes]:
        return [self._event("agent_state", {"state": state})]

    def tool_call(
        self, name: str, status: Literal["started", "succeeded", "failed"], seconds: float | None
    ) -> list[bytes]:
        """A tool call's progress: never its arguments or result (they can be personal)."""
        fields: dict[str, Any] = {"name": name, "status": status}
        if seconds is not None:
            fields["duration"] = round(seconds, 3)
        return [self._event("tool_call", fields)]

    def call_ended(self, duration: float, reason: EndReason) -> list[bytes]:
        return [self._event("call_ended", {"duration": round(duration, 3), "reason": reason.value})]

    def _text_event(self, type_: str, text: str, fields: dict[str, Any]) -> list[bytes]:
        ts = self._now()
        whole = self._encode(type_, {**fields, "text": text}, self._seq + 1, ts)
        if len(whole) <= MAX_PACKET_BYTES:
            self._seq += 1
            return [whole]
        overhead = len(whole) - _json_len(text) + len(b',"part":9999,"parts":9999') + 10
        chunks = split_text(text, MAX_PACKET_BYTES - overhead)
        packets = []
        for i, chunk in enumerate(chunks, start=1):
            self._seq += 1
            part = {**fields, "text": chunk, "part": i, "parts": len(chunks)}
            packets.append(self._encode(type_, part, self._seq, ts))
        return packets

    def _event(self, type_: str, fields: dict[str, Any]) -> bytes:
        self._seq += 1
        return self._encode(type_, fields, self._seq, self._now())

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _encode(self, type_: str, fields: dict[str, Any], seq: int, ts: int) -> bytes:
        event = {"type": type_, "call_id": self.call_id, "seq": seq, "ts": ts, **fields}
        # errors="replace": a lone surrogate (a provider's stray JSON escape) must not crash a call
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="replace")


def new_call_id() -> str:
    return f"CA_{uuid.uuid4().hex[:16]}"


def split_text(text: str, budget: int) -> list[str]:
    """Split `text` into pieces whose JSON-escaped UTF-8 size fits `budget` bytes, at spaces
    where possible; joining the pieces gives back `text`."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for word in _words_with_spaces(text):
        size = _json_len(word)
        if size > budget:  # a single enormous "word": cut it by characters
            if current:
                chunks.append("".join(current))
                current, used = [], 0
            chunks.extend(_hard_split(word, budget))
            continue
        if used + size > budget and current:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(word)
        used += size
    if current:
        chunks.append("".join(current))
    return chunks or [""]


def _words_with_spaces(text: str) -> list[str]:
    """Words each followed by the whitespace after them, so concatenation is lossless."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text)):
        if text[i - 1].isspace() and not text[i].isspace():
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    return pieces


def _hard_split(word: str, budget: int) -> list[str]:
    pieces: list[str] = []
    start, used = 0, 0
    for i, ch in enumerate(word):
        size = _char_len(ch)
        if used + size > budget and i > start:
            pieces.append(word[start:i])
            start, used = i, 0
        used += size
    pieces.append(word[start:])
    return pieces


def _json_len(text: str) -> int:
    """Bytes `text` takes inside a JSON string (escapes included, quotes excluded)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", errors="replace")) - 2


@functools.lru_cache(maxsize=4096)
def _char_len(ch: str) -> int:
    return _json_len(ch)
