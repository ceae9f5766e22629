"""Ending a call whose job process died: the caller gets `call_ended` and the agent leaves.

A job process that is SIGKILLed, runs out of memory or crashes in native code sends nothing more,
and LiveKit keeps its participant in the room for a while: the caller would sit in silence. Each
job keeps a tiny ledger file (`CallLedger`: call id, start, the last `seq` it handed out, whether
`call_ended` went out); when a job process ends, the main process (`CrashGuard`) reads it and, for a
call not told it ended, sends `call_ended{reason:"error"}` with the next `seq` through LiveKit's
server API (`RoomService.SendData`) and removes the agent participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from livekit import api

from worker.protocol import TOPIC, EndReason, EventEncoder, new_call_id

logger = logging.getLogger("worker.crash_guard")

_LAYOUT = struct.Struct("<BIIdd40s")
"""done (u8), pid, seq (u32), created, started (epoch s; 0: not started), call id (UTF-8)."""
_DONE, _PID, _SEQ, _CREATED, _STARTED, _CALL_ID = (0, 1, 5, 9, 17, 25)
SETTLE_TIMEOUT = 5.0
"""Seconds the main process gives LiveKit's API to take the `call_ended` and the removal."""


@dataclass(frozen=True)
class LedgerEntry:
    done: bool
    """`call_ended` was delivered, or there was no call to tell (no caller, unroutable room)."""
    pid: int
    seq: int
    """The last `seq` handed to the transport (it may not have arrived)."""
    started: float
    """When the session started (epoch seconds), 0 before."""
    call_id: str


class CallLedger:
    """The job process's side: a few bytes rewritten in place, no fsync (a dead process's writes
    are in the kernel's page cache; only a machine crash loses them, and the call with it)."""

    def __init__(self, path: Path, call_id: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        encoded = call_id.encode()[:40]
        os.write(self._fd, _LAYOUT.pack(0, os.getpid(), 0, time.time(), 0.0, encoded))

    def session_started(self) -> None:
        os.pwrite(self._fd, struct.pack("<d", time.time()), _STARTED)

    def sending(self, seq: int) -> None:
        """Called before packet `seq` goes out: the crash `call_ended` takes the next one, so it
        never repeats a `seq` the caller may have seen."""
        os.pwrite(self._fd, struct.pack("<I", seq), _SEQ)

    def done(self) -> None:
        os.pwrite(self._fd, b"\x01", _DONE)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def ledger_path(directory: Path, job_id: str) -> Path:
    # job ids are LiveKit's (`AJ_...`); anything else is kept out of the path
    return directory / ("".join(c for c in job_id if c.isalnum() or c in "_-")[:64] + ".call")


def read_ledger(path: Path) -> LedgerEntry | None:
    """The entry, or None if the job never wrote one (it died first) or it is unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) != _LAYOUT.size:
        return None
    done, pid, seq, _created, started, call_id = _LAYOUT.unpack(raw)
    return LedgerEntry(
        done=bool(done),
        pid=pid,
        seq=seq,
        started=started,
        call_id=call_id.rstrip(b"\0").decode(errors="replace"),
    )


class RoomAdmin(Protocol):
    """The two `RoomService` calls the guard makes (`livekit.api.LiveKitAPI().room`)."""

    async def send_data(self, send: api.SendDataRequest) -> api.SendDataResponse: ...

    async def remove_participant(
        self, remove: api.RoomParticipantIdentity
    ) -> api.RemoveParticipantResponse: ...


@dataclass(frozen=True)
class DeadJob:
    job_id: str
    room: str
    agent_identity: str
    exit_code: int | None
    metadata: str = ""
    """The job's dispatch metadata."""


DeadCallHook = Callable[[DeadJob, str, float, float], Awaitable[None]]
"""What else to do for a dead job's call: (job, call id, start epoch or 0, duration)."""


class CrashGuard:
    """The main process's side: owns the ledger directory and settles the calls of dead jobs."""

    def __init__(
        self, directory: Path | None = None, on_dead_call: DeadCallHook | None = None
    ) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="voice-agent-calls-"))
        self.on_dead_call = on_dead_call
        """Told of each call settled here (the call's record for the backend)."""
        self._lkapi: api.LiveKitAPI | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def ledger(self, job_id: str, call_id: str) -> CallLedger:
        return CallLedger(ledger_path(self.directory, job_id), call_id)

    def job_ended(self, job: DeadJob, room_admin: RoomAdmin | None = None) -> None:
        """A job process ended (LiveKit's `process_closed`): settle its call in the background."""
        task = asyncio.get_running_loop().create_task(self.settle(job, room_admin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self, job: DeadJob, room_admin: RoomAdmin | None = None) -> bool:
        """Tell the caller and remove the agent unless the call ended itself; True if it had to."""
        path = ledger_path(self.directory, job.job_id)
        entry = read_ledger(path)
        with contextlib.suppress(OSError):
            path.unlink()
        if entry is not None and entry.done:
            return False
        admin = room_admin or self._room_admin()
        call_id = entry.call_id if entry is not None and entry.call_id else new_call_id()
        encoder = EventEncoder(call_id, after_seq=entry.seq if entry is not None else 0)
        duration = max(0.0, time.time() - entry.started) if entry and entry.started else 0.0
        (packet,) = encoder.call_ended(duration, EndReason.ERROR)
        logger.error(
            "job process for room %r died mid-call (exit code %s): ending the call for the caller",
            job.room,
            job.exit_code,
            extra={"job_id": job.job_id, "call_id": call_id, "room": job.room},
        )
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await admin.send_data(
                    api.SendDataRequest(
                        room=job.room,
                        data=packet,
                        kind=api.DataPacket.Kind.RELIABLE,
                        topic=TOPIC,  # to everyone: the job alone knew which participant it served
                    )
                )
                try:
                    await admin.remove_participant(
                        api.RoomParticipantIdentity(room=job.room, identity=job.agent_identity)
                    )
                except api.TwirpError as exc:
                    if exc.code != "not_found":  # not_found: the agent is gone already
                        raise
        except Exception as exc:
            logger.error(
                "could not end the call in room %r after its job process died: %s",
                job.room,
                exc or type(exc).__name__,
                extra={"job_id": job.job_id, "call_id": call_id, "room": job.room},
            )
        if self.on_dead_call is not None:
            started = entry.started if entry is not None else 0.0
            await self.on_dead_call(job, call_id, started, duration)
        return True

    def _room_admin(self) -> RoomAdmin:
        """LiveKit's API client, from the credentials the server runs with (LiveKit puts them in
        the environment); created on first use, inside the server's loop."""
        if self._lkapi is None:
            self._lkapi = api.LiveKitAPI(timeout=aiohttp.ClientTimeout(total=SETTLE_TIMEOUT))
        return self._lkapi.room

    async def aclose(self) -> None:
        """Wait (bounded) for calls being settled, then release the client and the directory."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SETTLE_TIMEOUT)
        if self._lkapi is not None:
            await self._lkapi.aclose()
            self._lkapi = None
        shutil.rmtree(self.directory, ignore_errors=True)
