"""Delivering the outbox's records, from the worker's main process: at least once, signed.

Each pending record is POSTed to its URL with Standard Webhooks headers (`signing`), signed at
each attempt so the timestamp is fresh. A 2xx answer delivers it; anything else (another status,
a refused connection, a timeout) is retried with exponential backoff and full jitter until its
deadline, then kept as `expired`, logged and counted. Redirects are not followed: the record goes
only to the URL configured. Job processes never deliver: a job that exits, or a worker that is
killed, leaves its records in the outbox for the next main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import prometheus_client

from worker.records.signing import signed_headers
from worker.records.store import Record, RecordStore

logger = logging.getLogger("worker.webhooks")

RECORDS = prometheus_client.Counter(
    "voice_worker_webhook_records",
    "Webhook records by outcome: delivered, or expired (kept undelivered past the time budget)",
    ["outcome"],
)
BATCH = 8
"""Records attempted at once."""
PRUNE_EVERY = 3600.0


def backoff(attempts: int, *, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds before the next attempt after `attempts` failed ones: full jitter, capped."""
    return float(min(cap, base * 2 ** min(attempts, 30)) * (0.5 + rng() / 2))


def host(url: str) -> str:
    """What logs say of a URL: its host (its path or query may carry a token)."""
    return urlsplit(url).netloc.rpartition("@")[2]


class WebhookSender:
    def __init__(
        self,
        store: RecordStore,
        key: bytes,
        *,
        timeout: float,
        poll: float = 1.0,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        keep_delivered: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._key = key
        self._timeout = timeout
        self._poll = poll
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._keep_delivered = keep_delivered
        self._pruned = 0.0
        self._clock = clock
        self._rng = rng
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        """Set after a pass that found nothing due."""

    async def settle(self, timeout: float) -> None:
        """Deliver what is due now, waiting at most `timeout` seconds (a stopping worker)."""
        self._settled.clear()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def run(self) -> None:
        """Deliver records until cancelled."""
        counts = await asyncio.to_thread(self._store.counts)
        if counts["pending"] or counts["expired"]:
            logger.info(
                "webhook outbox %s: %d pending, %d expired (undelivered)",
                self._store.path,
                counts["pending"],
                counts["expired"],
            )
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout)
        ) as http:
            while True:
                try:
                    if not await self.deliver_due(http):
                        self._settled.set()
                except Exception:  # the outbox file (locked, full disk): said, and tried again
                    logger.exception("webhook delivery pass failed on %s", self._store.path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                self._wake.clear()

    async def deliver_due(self, http: aiohttp.ClientSession) -> int:
        """One pass over the due records; how many were attempted. Hourly, delivered records
        past `keep_delivered` are pruned."""
        now = self._clock()
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            await asyncio.to_thread(self._store.prune_delivered, now - self._keep_delivered)
        due = await asyncio.to_thread(self._store.due, now, BATCH)
        await asyncio.gather(*(self._attempt(http, record) for record in due))
        return len(due)

    async def _attempt(self, http: aiohttp.ClientSession, record: Record) -> None:
        headers = signed_headers(self._key, record.id, int(self._clock()), record.body)
        try:
            async with http.post(
                record.url, data=record.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        attempt = record.attempts + 1
        if not error:
            await asyncio.to_thread(self._store.delivered, record.id)
            RECORDS.labels("delivered").inc()
            logger.info(
                "webhook %s %s delivered to %s (attempt %d)",
                record.event,
                record.id,
                host(record.url),
                attempt,
            )
            return
        retry_in = backoff(
            record.attempts, base=self._retry_base, cap=self._retry_cap, rng=self._rng
        )
        if self._clock() + retry_in > record.deadline:
            await asyncio.to_thread(self._store.expired, record.id, error)
            RECORDS.labels("expired").inc()
            logger.error(
                "webhook %s %s to %s not delivered within its time budget (%d attempts, last:"
                " %s): kept as expired in %s",
                record.event,
                record.id,
                host(record.url),
                attempt,
                error,
                self._store.path,
            )
            return
        await asyncio.to_thread(self._store.retry_at, record.id, self._clock() + retry_in, error)
        logger.warning(
            "webhook %s %s to %s: attempt %d failed (%s), retrying in %.1fs",
            record.event,
            record.id,
            host(record.url),
            attempt,
            error,
            retry_in,
        )
