"""The ledger a job keeps for the main process, and how the main process settles a dead job's call.

The whole path (a SIGKILLed job process, LiveKit's API, the caller's app) is in
`tests/e2e/test_job_crash.py`; here the decisions: when a call is already over, what the crash
`call_ended` says, and that a failing LiveKit API is logged, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from livekit import api

from tests.harness import check_call_events
from worker.call.outbox import Outbox
from worker.crash_guard import CrashGuard, DeadJob, ledger_path, read_ledger
from worker.logs import ContextLogger
from worker.protocol import TOPIC, EndReason, EventEncoder

JOB = DeadJob(job_id="AJ_test", room="agent_a_u_1", agent_identity="agent-AJ_test", exit_code=-9)


class Admin:
    """What the guard asked LiveKit's `RoomService`; `fail` makes a call raise."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.sent: list[api.SendDataRequest] = []
        self.removed: list[api.RoomParticipantIdentity] = []
        self.fail = fail or {}

    async def send_data(self, send: api.SendDataRequest) -> api.SendDataResponse:
        if "send" in self.fail:
            raise self.fail["send"]
        self.sent.append(send)
        return api.SendDataResponse()

    async def remove_participant(
        self, remove: api.RoomParticipantIdentity
    ) -> api.RemoveParticipantResponse:
        if "remove" in self.fail:
            raise self.fail["remove"]
        self.removed.append(remove)
        return api.RemoveParticipantResponse()


async def run_outbox(guard: CrashGuard, *, end: bool, fail_from: int | None = None) -> list[bytes]:
    """A call's events through an Outbox with the job's ledger: three events, `call_ended` last
    if `end`; sends from packet `fail_from` on raise."""
    sent: list[bytes] = []

    async def send(packet: bytes) -> None:
        if fail_from is not None and len(sent) + 1 >= fail_from:
            raise ConnectionError("room gone")
        sent.append(packet)

    ledger = guard.ledger(JOB.job_id, "CA_crashtest")
    ledger.session_started()
    outbox = Outbox(
        EventEncoder("CA_crashtest"), send, ContextLogger(logging.getLogger("t"), {}), ledger
    )
    running = asyncio.create_task(outbox.run())
    outbox.put(lambda e: e.agent_state("listening"))
    outbox.interim("I would like to")
    outbox.put(lambda e: e.transcript("user", "I would like to order", final=True))
    if end:
        outbox.put(lambda e: e.call_ended(2.0, EndReason.CLIENT_ENDED))
        outbox.close()
        await asyncio.wait_for(running, 5)
    else:
        await asyncio.sleep(0.05)
        running.cancel()
    ledger.close()
    return sent


async def test_a_call_that_delivered_its_call_ended_is_left_alone(tmp_path: Path) -> None:
    guard = CrashGuard(tmp_path)
    await run_outbox(guard, end=True)
    admin = Admin()
    assert not await guard.settle(JOB, admin)
    assert admin.sent == []
    assert admin.removed == []
    assert not ledger_path(tmp_path, JOB.job_id).exists(), "the ledger is removed once read"


async def test_a_dead_call_gets_call_ended_error_with_the_next_seq(tmp_path: Path) -> None:
    guard = CrashGuard(tmp_path)
    sent = await run_outbox(guard, end=False)
    entry = read_ledger(ledger_path(tmp_path, JOB.job_id))
    assert entry is not None
    assert (entry.done, entry.pid, entry.seq, entry.call_id) == (
        False,
        os.getpid(),
        3,
        "CA_crashtest",
    )

    admin = Admin()
    assert await guard.settle(JOB, admin)
    [request] = admin.sent
    assert (request.room, request.topic, request.kind) == (JOB.room, TOPIC, api.DataPacket.RELIABLE)
    events = [json.loads(p) for p in [*sent, request.data]]
    check_call_events(events)  # the same call id, seq 4 after 1-3, call_ended once and last
    assert events[-1]["reason"] == "error"
    assert 0 <= events[-1]["duration"] < 5
    assert [(r.room, r.identity) for r in admin.removed] == [(JOB.room, JOB.agent_identity)]


async def test_a_call_ended_that_could_not_be_sent_is_sent_again_by_the_main_process(
    tmp_path: Path,
) -> None:
    """The room refused the job's last packet: the caller never heard the end, so the main
    process tells them (with a seq after the lost one: a gap, never a repeat)."""
    guard = CrashGuard(tmp_path)
    sent = await run_outbox(guard, end=True, fail_from=4)
    admin = Admin()
    assert await guard.settle(JOB, admin)
    [request] = admin.sent
    assert [json.loads(p)["seq"] for p in sent] == [1, 2, 3]
    assert json.loads(request.data)["seq"] == 5


@pytest.mark.parametrize("ledger", [None, b"", b"\x00" * 7], ids=["missing", "empty", "short"])
async def test_a_job_that_died_before_its_ledger_still_gets_its_call_ended(
    tmp_path: Path, ledger: bytes | None
) -> None:
    if ledger is not None:
        ledger_path(tmp_path, JOB.job_id).write_bytes(ledger)
    admin = Admin()
    assert await CrashGuard(tmp_path).settle(JOB, admin)
    [request] = admin.sent
    event = json.loads(request.data)
    check_call_events([event])
    assert (event["seq"], event["reason"], event["duration"]) == (1, "error", 0)
    assert event["call_id"].startswith("CA_")


async def test_an_agent_already_gone_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admin = Admin(
        fail={"remove": api.TwirpError("not_found", "participant not in room", status=404)}
    )
    assert await CrashGuard(tmp_path).settle(JOB, admin)
    assert len(admin.sent) == 1
    assert "could not end the call" not in caplog.text


@pytest.mark.parametrize(
    ("fail", "logged"),
    [
        ({"send": ConnectionError("connection refused")}, "connection refused"),
        (
            {"remove": api.TwirpError("permission_denied", "no room_admin", status=403)},
            "no room_admin",
        ),
    ],
)
async def test_a_failing_livekit_api_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fail: dict[str, Exception], logged: str
) -> None:
    assert await CrashGuard(tmp_path).settle(JOB, Admin(fail=fail))
    message = "could not end the call in room 'agent_a_u_1' after its job process died: "
    assert message in caplog.text
    assert logged in caplog.text


def test_job_ids_cannot_leave_the_ledger_directory(tmp_path: Path) -> None:
    path = ledger_path(tmp_path, "../../etc/passwd")
    assert path.parent == tmp_path
    assert path.name == "etcpasswd.call"


async def test_closing_the_guard_removes_its_directory(tmp_path: Path) -> None:
    guard = CrashGuard(tmp_path / "calls")
    guard.directory.mkdir()
    guard.ledger(JOB.job_id, "CA_x").close()
    await guard.aclose()
    assert not guard.directory.exists()
