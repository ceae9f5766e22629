"""The call's events out: interims coalesce under pressure, nothing else is ever dropped."""

from __future__ import annotations

import asyncio
import json
import logging

from worker.call.outbox import INTERIM_MAX_CHARS, Outbox
from worker.logs import ContextLogger
from worker.protocol import MAX_PACKET_BYTES, EndReason, EventEncoder


async def test_a_turn_that_never_commits_cannot_flood_the_caller() -> None:
    """Was: each interim re-sent the whole turn into an unbounded queue (35 MB, 17.7 s CPU)."""
    sent: list[bytes] = []

    async def slow_send(packet: bytes) -> None:
        await asyncio.sleep(0.001)  # a congested data channel
        sent.append(packet)

    encoder = EventEncoder("CA_test")
    outbox = Outbox(encoder, slow_send, ContextLogger(logging.getLogger("test"), {}))
    running = asyncio.create_task(outbox.run())
    words: list[str] = []
    for i in range(10_000):  # an hour of background speech, one interim per word
        words.append(f"word{i}")
        outbox.interim(" ".join(words))
        if i % 100 == 0:
            await asyncio.sleep(0)  # the loop runs between transcripts
    outbox.put(lambda e: e.transcript("user", "the committed turn", final=True))
    outbox.put(lambda e: e.call_ended(3600.0, EndReason.ERROR))
    outbox.close()
    await asyncio.wait_for(running, 10)

    events = [json.loads(p) for p in sent]
    assert len(sent) < 300, "interims coalesced"
    assert outbox.coalesced > 9_000
    assert all(len(p) <= MAX_PACKET_BYTES for p in sent)
    interims = [e for e in events if e["type"] == "transcript" and not e["final"]]
    assert all(len(e["text"]) <= INTERIM_MAX_CHARS for e in interims)
    assert interims[-1]["text"].endswith("word9999"), "the newest interim is never lost"
    assert [e["type"] for e in events[-2:]] == ["transcript", "call_ended"]
    assert events[-2]["final"] is True
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "no gaps"


async def test_a_failed_send_is_logged_and_the_rest_still_goes(caplog: object) -> None:
    sent: list[bytes] = []

    async def flaky(packet: bytes) -> None:
        if not sent and b"agent_state" in packet:
            sent.append(b"")
            raise ConnectionError("data channel closed")
        sent.append(packet)

    encoder = EventEncoder("CA_test")
    outbox = Outbox(encoder, flaky, ContextLogger(logging.getLogger("test"), {}))
    outbox.put(lambda e: e.agent_state("listening"))
    outbox.put(lambda e: e.call_ended(1.0, EndReason.ERROR))
    outbox.close()
    await asyncio.wait_for(outbox.run(), 5)
    assert b"call_ended" in sent[-1]
