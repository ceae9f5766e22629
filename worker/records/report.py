"""A call's record for the backend, gathered in the job process as the call runs.

The transcript is the one the caller's app got: each agent turn as played (cut where it was
interrupted, and marked), each user turn as final; tool calls by name, status and duration only.
Dispatch metadata contributes its keys, and only the values the agent file allows (they can be
personal data). At the end the record goes into the durable outbox (`store`), from which the main
process delivers it (`webhook`): nothing here sends anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import AgentConfig
from worker.records.store import Record, RecordStore
from worker.settings import WebhookSettings

logger = logging.getLogger("worker.webhooks")

WRITE_TIMEOUT = 10.0
"""Seconds a call's end waits for its record to be on disk."""


@dataclass(frozen=True)
class RecordTarget:
    """Where an agent's records go, resolved from its file and the environment."""

    url: str
    events: tuple[str, ...]
    retry_for: float
    outbox: Path
    metadata_values: tuple[str, ...]


def record_target(agent: AgentConfig, settings: WebhookSettings) -> RecordTarget | None:
    """None: the agent's calls leave no record (no URL, or `webhook.enabled: false`)."""
    url = agent.webhook.url or settings.url
    if not agent.webhook.enabled or url is None:
        return None
    return RecordTarget(
        url=url,
        events=tuple(agent.webhook.events or settings.events),
        retry_for=settings.retry_for,
        outbox=settings.outbox,
        metadata_values=tuple(agent.webhook.metadata_values),
    )


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


class CallRecorder:
    """One call's record; `ended` writes it to the outbox (without a target: nowhere, the
    record is only kept in memory, as for `simulate` and the tests)."""

    def __init__(
        self,
        target: RecordTarget | None,
        *,
        call_id: str,
        agent: AgentConfig,
        room: str,
        user_id: str | None,
        metadata: Mapping[str, Any],
        started: float | None = None,
    ) -> None:
        """`started`: when the call began (epoch seconds), if not now."""
        self.target = target
        self.call_id = call_id
        allowed = target.metadata_values if target is not None else ()
        self._base: dict[str, Any] = {
            "call_id": call_id,
            "room": room,
            "agent": {"id": agent.id, "name": agent.name},
            "user_id": user_id,
            "metadata": {
                key: (metadata[key] if key in allowed else None) for key in sorted(metadata)
            },
        }
        self._started = started or time.time()
        self._clock_start = time.monotonic() - (time.time() - self._started)
        self.transcript: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.body: dict[str, Any] | None = None
        """The `call.ended` record, once the call has ended."""

    def _at(self) -> float:
        return round(time.monotonic() - self._clock_start, 3)

    async def started(self) -> None:
        """The call began (the session is up): `call.started`, if the target wants it."""
        self._started = time.time()
        self._clock_start = time.monotonic()
        await self._write("call.started", {"started_at": _iso(self._started)})

    def said(self, role: str, text: str, *, interrupted: bool = False) -> None:
        self.transcript.append(
            {"role": role, "text": text, "interrupted": interrupted, "at": self._at()}
        )

    def tool_call(self, name: str, status: str, seconds: float | None) -> None:
        if status != "started":
            self.tool_calls.append(
                {
                    "name": name,
                    "status": status,
                    "duration": None if seconds is None else round(seconds, 3),
                    "at": self._at(),
                }
            )

    async def ended(
        self,
        *,
        reason: str,
        duration: float,
        turns: list[dict[str, float]],
        usage: list[dict[str, Any]],
        recording: dict[str, Any] | None = None,
        complete: bool = True,
    ) -> None:
        """`complete: False`: the call's process died, and its transcript with it."""
        self.body = {
            "type": "call.ended",
            **self._base,
            "started_at": _iso(self._started),
            "ended_at": _iso(time.time()),
            "duration": round(duration, 3),
            "end_reason": reason,
            "transcript": self.transcript,
            "turn_latencies": turns,
            "usage": summarize_usage(usage),
            "tool_calls": self.tool_calls,
            "recording": recording,
            "complete": complete,
        }
        await self._write("call.ended", self.body)

    async def _write(self, event: str, fields: dict[str, Any]) -> None:
        if self.target is None or event not in self.target.events:
            return
        body = {"type": event, **self._base, **fields}
        now = time.time()
        record = Record(
            id=f"{self.call_id}.{event.removeprefix('call.')}",
            event=event,
            url=self.target.url,
            body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            created=now,
            deadline=now + self.target.retry_for,
        )
        try:
            await asyncio.wait_for(
                asyncio.to_thread(_add, self.target.outbox, record), WRITE_TIMEOUT
            )
        except Exception as exc:  # the call must end whatever the disk does; said loudly
            logger.error(
                "webhook %s %s could not be written to %s: %s",
                event,
                record.id,
                self.target.outbox,
                type(exc).__name__,
            )


def _add(path: Path, record: Record) -> None:
    store = RecordStore(path)
    try:
        store.add(record)
    finally:
        store.close()


def summarize_usage(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals a backend bills by, and the per-model usage they come from."""

    def total(kind: str, field: str) -> float:
        return float(sum(m.get(field, 0) for m in models if m.get("type") == kind))

    return {
        "llm_input_tokens": int(total("llm_usage", "input_tokens")),
        "llm_output_tokens": int(total("llm_usage", "output_tokens")),
        "tts_characters": int(total("tts_usage", "characters_count")),
        "stt_audio_seconds": round(total("stt_usage", "audio_duration"), 3),
        "models": models,
    }
