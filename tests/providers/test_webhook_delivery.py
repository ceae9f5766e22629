"""The main process's delivery of call records to a real receiver (tests/standins/webhooks.py),
which verifies every request with the Standard Webhooks reference library."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.polling import until
from tests.standins.webhooks import SECRET, WebhookReceiver
from worker.records.signing import secret_key
from worker.records.store import Record, RecordStore
from worker.records.webhook import WebhookSender

pytestmark = pytest.mark.providers


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as server:
        yield server


def pending(url: str, record_id: str = "call-1.ended", *, budget: float = 60.0) -> Record:
    now = time.time()
    body = json.dumps({"type": "call.ended", "call_id": "call-1", "end_reason": "agent_ended"})
    return Record(
        id=record_id, event="call.ended", url=url, body=body.encode(), created=now,
        deadline=now + budget,
    )  # fmt: skip


def sender(store: RecordStore, timeout: float = 2.0) -> WebhookSender:
    return WebhookSender(store, secret_key(SECRET), timeout=timeout, poll=0.05, retry_base=0.05)


async def deliver(store: RecordStore) -> None:
    """Run a sender on `store` until nothing is pending."""
    task = asyncio.create_task(sender(store).run())
    try:
        await until(lambda: not store.counts()["pending"], 10, "nothing pending")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_record_arrives_signed_once_after_the_receiver_fails(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    store = RecordStore(tmp_path / "outbox.sqlite3")
    store.add(pending(receiver.url))
    receiver.fail_next = 3
    await deliver(store)
    assert receiver.attempts() == ["failed", "failed", "failed", "completed"]
    assert receiver.accepted["call-1.ended"]["end_reason"] == "agent_ended"
    assert (receiver.rejected, receiver.duplicates) == (0, 0)
    assert store.counts()["delivered"] == 1
    timestamps = [int(r.headers["webhook-timestamp"]) for r in receiver.of_kind("attempt")]
    assert timestamps == sorted(timestamps)  # signed at each attempt, never a stale one


async def test_a_receiver_that_is_down_then_up_gets_it(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    url = receiver.url
    await receiver.close()  # down: connections refused
    store = RecordStore(tmp_path / "outbox.sqlite3")
    store.add(pending(url))
    running = asyncio.create_task(sender(store).run())
    try:
        await until(lambda: store.due(1e12, 1)[0].attempts, 10, "a refused attempt")
        await receiver.start()  # the same port
        await until(lambda: not store.counts()["pending"], 10, "the delivery")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await receiver.close()
    assert list(receiver.accepted) == ["call-1.ended"]
    record = store.get("call-1.ended")
    assert record is not None
    assert record.state == "delivered"
    assert record.attempts >= 2


async def test_records_left_by_a_dead_process_go_out_from_the_next(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = RecordStore(path)  # a job wrote these, then everything died before delivering
    first.add(pending(receiver.url, "call-1.ended"))
    first.add(pending(receiver.url, "call-2.ended"))
    del first
    await deliver(RecordStore(path))
    assert sorted(receiver.accepted) == ["call-1.ended", "call-2.ended"]


async def test_past_its_budget_a_record_is_kept_expired_and_said(
    receiver: WebhookReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.faults.status = 500
    store = RecordStore(tmp_path / "outbox.sqlite3")
    store.add(pending(receiver.url, budget=0.3))
    with caplog.at_level(logging.WARNING, logger="worker.webhooks"):
        await deliver(store)
    record = store.get("call-1.ended")
    assert record is not None
    assert (record.state, record.last_error) == ("expired", "HTTP 500")
    (said,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "call-1.ended" in said.getMessage()
    assert "not delivered within its time budget" in said.getMessage()
    assert "/hooks/calls" not in caplog.text  # the host only: a path may hold a token


async def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    elsewhere = WebhookReceiver()
    async with elsewhere:

        async def moved(_: aiohttp.web.Request) -> aiohttp.web.Response:
            raise aiohttp.web.HTTPFound(elsewhere.url)

        app = aiohttp.web.Application()
        app.router.add_post("/hook", moved)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        store = RecordStore(tmp_path / "outbox.sqlite3")
        store.add(pending(f"http://127.0.0.1:{port}/hook", budget=0.3))
        try:
            await deliver(store)
        finally:
            await runner.cleanup()
    record = store.get("call-1.ended")
    assert record is not None
    assert (record.state, record.last_error) == ("expired", "HTTP 302")
    assert elsewhere.received == []


async def test_a_receiver_that_never_answers_is_timed_out_and_retried(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.faults.no_answer = True
    store = RecordStore(tmp_path / "outbox.sqlite3")
    store.add(pending(receiver.url))
    running = asyncio.create_task(sender(store, timeout=0.3).run())
    try:
        await until(lambda: len(receiver.attempts()) >= 2, 10, "two timed-out attempts")
        receiver.faults.no_answer = False
        await until(lambda: not store.counts()["pending"], 10, "the delivery")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert list(receiver.accepted) == ["call-1.ended"]
    record = store.get("call-1.ended")
    assert record is not None
    assert record.attempts >= 3


async def test_a_failing_outbox_pass_is_logged_and_delivery_goes_on(
    receiver: WebhookReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path / "outbox.sqlite3")
    store.add(pending(receiver.url))
    real_due, failures = store.due, [sqlite3.OperationalError("database is locked")]

    def due(now: float, limit: int) -> list[Record]:
        if failures:
            raise failures.pop()
        return real_due(now, limit)

    store.due = due  # type: ignore[method-assign]
    await deliver(store)
    assert list(receiver.accepted) == ["call-1.ended"]
    assert "webhook delivery pass failed" in caplog.text
