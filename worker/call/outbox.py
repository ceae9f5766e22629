"""The call's events on their way to the caller: in order, one send at a time, bounded.

Each interim transcript re-sends the caller's whole turn so far; a turn that never commits
(continuous background speech) once queued 35 MB of interims and 17.7 s of encoding on the
call's loop. Here the newest interim replaces one not yet sent, and is encoded only when sent
(so `seq` still counts the packets sent, without gaps); an interim carries at most the turn's
last `INTERIM_MAX_CHARS`. Everything else (finals, `agent_state`, `call_ended`) is never dropped.
The call's ledger (see `crash_guard`) learns each `seq` before it is sent, and when the last
packet (`call_ended`) has gone out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from worker.logs import ContextLogger
from worker.protocol import EventEncoder

if TYPE_CHECKING:
    from worker.crash_guard import CallLedger

INTERIM_MAX_CHARS = 2000
"""An interim transcript's text: the end of the turn so far (the final carries all of it)."""


class Outbox:
    def __init__(
        self,
        encoder: EventEncoder,
        send: Callable[[bytes], Awaitable[None]],
        log: ContextLogger,
        ledger: CallLedger | None = None,
    ) -> None:
        self._encoder = encoder
        self._send = send
        self._log = log
        self._ledger = ledger
        self._seq = 0
        """The `seq` of the last packet taken for sending (packets leave in `seq` order)."""
        self._queue: collections.deque[bytes] = collections.deque()
        self._interim: str | None = None
        self._ready = asyncio.Event()
        self._sent = asyncio.Event()
        """Set while everything queued has been sent."""
        self._sent.set()
        self._closed = False
        self.coalesced = 0
        """Interims replaced by a newer one before they were sent."""

    def put(self, event: Callable[[EventEncoder], list[bytes]]) -> None:
        """Queue an event, encoded here (`seq` is given in the order packets are sent): after
        any pending interim, which is encoded first."""
        if self._closed:
            return
        if self._interim is not None:
            self._queue.extend(self._encoder.transcript("user", self._interim, final=False))
            self._interim = None
        self._queue.extend(event(self._encoder))
        self._sent.clear()
        self._ready.set()

    def interim(self, text: str) -> None:
        """The caller's turn so far; replaces an interim not yet sent."""
        if self._closed:
            return
        if self._interim is not None:
            self.coalesced += 1
        self._interim = text[-INTERIM_MAX_CHARS:]
        self._ready.set()

    async def sent(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until every event queued so far has left (before
        the caller is handed elsewhere and can receive no more)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sent.wait(), timeout)

    def close(self) -> None:
        """Nothing more is accepted; `run` returns once what was accepted is sent."""
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        delivered = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue or self._interim is not None:
                if self._queue:
                    packet = self._queue.popleft()
                else:
                    assert self._interim is not None
                    (packet,) = self._encoder.transcript("user", self._interim, final=False)
                    self._interim = None
                self._seq += 1
                if self._ledger is not None:
                    self._ledger.sending(self._seq)
                try:
                    await self._send(packet)
                    delivered = True
                except Exception as exc:
                    delivered = False
                    self._log.warning("could not send event to the caller: %s", exc)
            self._sent.set()
            if self._closed:
                if delivered and self._ledger is not None:
                    self._ledger.done()  # the last packet, `call_ended`, went out
                return
