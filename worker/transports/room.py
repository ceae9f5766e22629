"""The production transport: a LiveKit room, through RoomIO.

The agent's voice goes out as one Opus track; client events go out on the reliable data channel.
The caller is linked explicitly, and any disconnect of theirs ends the call (RoomIO alone only
reacts to some disconnect reasons and would leave the agent waiting in the room).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentSession, AutoSubscribe, JobContext, room_io

from worker.call.agent import VoiceAgent
from worker.call.lifecycle import Caller, CallTransport
from worker.protocol import TOPIC, EndReason
from worker.providers import OUTPUT_SAMPLE_RATE
from worker.tools.failure import ToolFailedError

logger = logging.getLogger("worker.room")

CALLER_KINDS = (
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
)
LINGER = 0.25
"""Seconds between the last event and leaving, so the reliable channel can deliver it."""

MAX_BITRATE = 32_000
DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
"""RFC 4733's event codes of the keypad."""
DTMF_GAP = 0.25
"""Seconds between two key presses: what an IVR expects of a person pressing keys."""


def agent_track_options() -> rtc.TrackPublishOptions:
    """How the agent's voice is published (Opus, WebRTC's audio codec)."""
    options = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_MICROPHONE,
        # The agent is silent about half of every call and its silence is digital: DTX sends
        # almost nothing then, at no audible cost.
        dtx=True,
        # Redundant audio survives the packet loss of mobile and Wi-Fi callers; it only doubles
        # the bitrate while the agent speaks.
        red=True,
    )
    # Opus is transparent for 24 kHz synthetic speech at 32 kbps; more only costs bandwidth.
    options.audio_encoding.max_bitrate = MAX_BITRATE
    return options


class RoomTransport(CallTransport):
    """A call in the job's room, with the caller chosen by the room name's user id."""

    label = "room"

    def __init__(self, ctx: JobContext, *, user_id: str | None) -> None:
        super().__init__()
        self._ctx = ctx
        self._user_id = user_id
        self._caller: Caller | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Start joining the room, and return once the request is on its way: LiveKit's native
        SDK connects in its own threads while this process builds the call's providers and
        session (the connect request left 0.17 s into a job before, 0.08 s now)."""
        if self._ctx.is_fake_job() or self._connecting is not None:
            return
        self._connecting = asyncio.create_task(
            self._ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY), name="room-connect"
        )
        await asyncio.sleep(0)  # the task's first step sends the connect request

    async def wait_for_caller(self, timeout: float) -> Caller | None:
        if self._ctx.is_fake_job():  # `console`: the terminal is the caller, the room a mock
            self._caller = Caller(identity="console")
            return self._caller
        await self.connect()
        assert self._connecting is not None
        await self._connecting
        room = self._ctx.room
        room.on("data_received", self._on_data)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)

        found: asyncio.Future[rtc.RemoteParticipant] = asyncio.get_running_loop().create_future()

        def consider(participant: rtc.RemoteParticipant) -> None:
            if not found.done() and participant.kind in CALLER_KINDS:
                found.set_result(participant)

        present = list(room.remote_participants.values())
        for participant in sorted(present, key=lambda p: p.identity != self._user_id):
            consider(participant)
        room.on("participant_connected", consider)
        try:
            participant = await asyncio.wait_for(found, timeout)
        except TimeoutError:
            return None
        finally:
            room.off("participant_connected", consider)
        self._caller = Caller(
            identity=participant.identity, attributes=dict(participant.attributes)
        )
        if self._user_id and participant.identity != self._user_id:
            logger.info(
                "no participant %r in the room; linking the first caller %r",
                self._user_id,
                participant.identity,
            )
        return self._caller

    async def start(self, session: AgentSession[Any], agent: VoiceAgent, caller: Caller) -> None:
        present = self._ctx.is_fake_job() or caller.identity in self._ctx.room.remote_participants
        if not present and self.listener is not None:
            self.listener.caller_left("caller left before the session started")
            return
        await session.start(
            agent,
            room=self._ctx.room,
            room_options=room_io.RoomOptions(
                participant_identity=caller.identity,
                participant_kinds=list(CALLER_KINDS),
                # the call ends on every disconnect itself, after telling the room
                close_on_disconnect=False,
                audio_output=room_io.AudioOutputOptions(
                    sample_rate=OUTPUT_SAMPLE_RATE,
                    num_channels=1,
                    track_publish_options=agent_track_options(),
                    track_name="agent_voice",
                ),
            ),
        )

    async def send(self, packet: bytes) -> None:
        await self._ctx.room.local_participant.publish_data(packet, reliable=True, topic=TOPIC)

    async def transfer(self, to: str) -> None:
        """LiveKit's `TransferSIPParticipant`: the phone system moves the caller to `to` (a SIP
        REFER), and they leave the room."""
        identity = self._phone_caller()
        await asyncio.sleep(LINGER)  # the end of the line still in flight to the caller
        request = api.TransferSIPParticipantRequest(
            room_name=self._ctx.room.name, participant_identity=identity, transfer_to=to
        )
        try:
            response = await self._ctx.api.sip.transfer_sip_participant(request)
        except Exception as exc:  # the server's text can name the number: type only
            logger.warning("the transfer of %r was refused: %s", identity, type(exc).__name__)
            raise ToolFailedError("the phone system refused the transfer") from None
        if response.status == api.SIPTransferStatus.STS_TRANSFER_FAILED:
            logger.warning("the transfer of %r failed (SIP %s)", identity, response.sip_status)
            raise ToolFailedError("the transfer did not go through")

    async def send_dtmf(self, digits: str) -> None:
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(DTMF_GAP)
            await self._ctx.room.local_participant.publish_dtmf(code=DTMF_CODES[digit], digit=digit)

    def check_phone_line(self) -> None:
        self._phone_caller()

    def _phone_caller(self) -> str:
        """The caller's identity, when they are on a phone line (a SIP participant)."""
        caller, participant = self._caller, None
        if caller is not None and not self._ctx.is_fake_job():
            participant = self._ctx.room.remote_participants.get(caller.identity)
        if participant is None or participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            raise ToolFailedError("the caller is not on a phone line (not a SIP participant)")
        return participant.identity

    async def close(self, reason: EndReason | None) -> None:
        if self._ctx.room.isconnected():
            await asyncio.sleep(LINGER)
        self._ctx.shutdown(reason=reason.value if reason else "no caller")

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if self.listener is not None:
            sender = packet.participant.identity if packet.participant else None
            self.listener.data_received(packet.data, sender=sender, topic=packet.topic or "")

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._caller is None or participant.identity != self._caller.identity:
            return
        code = participant.disconnect_reason
        if code == rtc.DisconnectReason.ROOM_DELETED:
            # the backend ended the call: the same end, whichever disconnect arrives first
            self._on_disconnected(code)
            return
        reason = rtc.DisconnectReason.Name(code) if code is not None else "unknown reason"
        if self.listener is not None:
            self.listener.caller_left(f"caller disconnected ({reason})")

    def _on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        if self.listener is None:
            return
        name = rtc.DisconnectReason.Name(reason)
        if reason == rtc.DisconnectReason.ROOM_DELETED:
            self.listener.transport_lost(EndReason.CLIENT_ENDED, "room deleted")
        else:
            self.listener.transport_lost(
                EndReason.ERROR, f"agent disconnected from the room ({name})"
            )
