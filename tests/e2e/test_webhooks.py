"""The call's record reaches the backend from the real worker, at least once and exactly once
per id, even when the receiver is down at the end of the call and the worker is then killed."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.calls import GREETING, JOIN_S, TURN_S, StandIns, call, stand_ins, voice_worker
from tests.e2e.conftest import LiveKitFixture
from tests.harness import Recording
from tests.polling import until
from tests.standins.openai import Reply
from tests.standins.webhooks import SECRET, WebhookReceiver
from worker.records.store import RecordStore

pytestmark = pytest.mark.timeout(180)


async def answer(body: dict[str, Any]) -> Reply:
    return ["You can reset it from the sign-in page."]


@pytest.fixture
async def services() -> AsyncIterator[StandIns]:
    async with stand_ins(Recording.load("single_question"), answer, min_score=0.0) as running:
        yield running


async def test_a_record_left_when_the_worker_is_killed_is_delivered_by_the_next_worker(
    livekit_server: LiveKitFixture, services: StandIns, tmp_path: Path
) -> None:
    lk = livekit_server
    receiver = WebhookReceiver()
    await receiver.start()
    await receiver.close()  # the backend is down when the call ends
    data = tmp_path / "data"
    env = {
        **services.env(),
        "WORKER_WEBHOOK_URL": receiver.url,
        "WORKER_WEBHOOK_SECRET": SECRET,
        "WORKER_WEBHOOK_EVENTS": "call.started,call.ended",
        "WORKER_DATA_DIR": str(data),
    }
    outbox = data / "webhooks.sqlite3"
    async with voice_worker(lk, tmp_path / "first", env) as first:
        async with call(lk, identity="caller") as caller:
            await caller.event(JOIN_S, type="transcript", role="agent", text=GREETING)
            ended = await caller.hang_up()
        call_id = ended["call_id"]
        store = RecordStore(outbox)

        def refused_once() -> bool:
            record = store.get(f"{call_id}.ended")
            return record is not None and record.attempts >= 1

        await until(refused_once, TURN_S, "a refused delivery")
        os.killpg(first.process.pid, signal.SIGKILL)  # before the record could go out
        await first.process.wait()
    pending = store.get(f"{call_id}.ended")
    assert pending is not None
    assert pending.state == "pending"

    await receiver.start()  # the backend is back, on the same URL
    try:
        async with voice_worker(lk, tmp_path / "second", env) as second:
            await until(lambda: f"{call_id}.ended" in receiver.accepted, 30, "the record")
            assert "2 pending, 0 expired" in second.log()  # it said what it found
    finally:
        await receiver.close()
    record = receiver.accepted[f"{call_id}.ended"]
    assert record["call_id"] == call_id
    assert record["end_reason"] == "client_ended"
    assert record["transcript"][0] == {
        "role": "agent",
        "text": GREETING,
        "interrupted": False,
        "at": record["transcript"][0]["at"],
    }
    assert record["agent"]["id"].startswith("5b710eca")
    assert f"{call_id}.started" in receiver.accepted
    assert receiver.rejected == 0
    assert receiver.duplicates == 0  # delivered once: the first worker never got it through
    assert store.get(f"{call_id}.ended").state == "delivered"  # type: ignore[union-attr]
    assert SECRET not in (tmp_path / "first" / "worker.log").read_text()
