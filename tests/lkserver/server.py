"""`LiveKitTestServer`: rooms, `/rtc` signalling and media/data forwarding for the official clients.

A test fixture, never the product: it implements just the part of livekit-server's protocol that
the pinned SDKs need (see `LIVEKIT_PROTOCOL_NOTES.md`): the two-connection signalling mode, Opus
audio relayed through aiortc (decoded and re-encoded), reliable and lossy data packets, participant
updates, attributes. No simulcast, RED, resume, or unpublish.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.sdp import candidate_from_sdp
from livekit.api.access_token import Claims, VideoGrants
from livekit.protocol import models as proto_models
from livekit.protocol import rtc as proto_rtc

from tests.lkserver.auth import AuthError, TokenAuth

log = logging.getLogger("lkserver")

SERVER_VERSION = "1.9.0"
PROTOCOL = 16
PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
CONNECT_S = 15
"""How long a later offer waits for the subscriber connection (then it goes anyway)."""
RELIABLE = "_reliable"
LOSSY = "_lossy"

DisconnectReason = proto_models.DisconnectReason
ParticipantState = proto_models.ParticipantInfo.State

RoomHook = Callable[["Room"], Awaitable[None] | None]
ParticipantHook = Callable[["Room", "Participant"], Awaitable[None] | None]

_KINDS = {
    "": proto_models.ParticipantInfo.Kind.STANDARD,
    "standard": proto_models.ParticipantInfo.Kind.STANDARD,
    "agent": proto_models.ParticipantInfo.Kind.AGENT,
    "sip": proto_models.ParticipantInfo.Kind.SIP,
    "ingress": proto_models.ParticipantInfo.Kind.INGRESS,
    "egress": proto_models.ParticipantInfo.Kind.EGRESS,
}


def new_sid(prefix: str) -> str:
    """An id in LiveKit's shape (`RM_...`, `PA_...`, `TR_...`): clients only need uniqueness."""
    return f"{prefix}_{secrets.token_hex(6)}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Tasks:
    """Background tasks that are cancelled on close and whose failures are logged, not lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task failed", exc_info=exc)

    async def cancel(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(eq=False)
class Room:
    """A room; its timeouts and `max_participants` are reported to clients, not enforced."""

    name: str
    sid: str = field(default_factory=lambda: new_sid("RM"))
    metadata: str = ""
    empty_timeout: int = 300
    departure_timeout: int = 20
    max_participants: int = 0
    created_at: int = field(default_factory=lambda: int(time.time()))
    """Unix seconds, as in the protocol's `Room.creation_time`."""
    participants: dict[str, Participant] = field(default_factory=dict)

    def info(self) -> proto_models.Room:
        return proto_models.Room(
            sid=self.sid,
            name=self.name,
            metadata=self.metadata,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=self.created_at,
            creation_time_ms=self.created_at * 1000,
            num_participants=len(self.participants),
            num_publishers=sum(1 for p in self.participants.values() if p.tracks),
        )


@dataclass(eq=False)
class PublishedTrack:
    """A track a participant sends, as the others are told of it and as aiortc receives it."""

    info: proto_models.TrackInfo
    media: MediaStreamTrack
    drain: MediaBlackhole
    """Keeps the relay reading while nobody subscribes; otherwise received audio piles up."""


@dataclass(eq=False)
class _Subscription:
    """A relayed copy of someone's track on this participant's subscriber connection."""

    publisher: Participant
    track_sid: str
    transceiver: RTCRtpTransceiver
    proxy: MediaStreamTrack
    announced: bool = False
    """`track_subscribed` sent to the publisher (after the subscriber's answer)."""


def _candidate(candidate_init: str) -> RTCIceCandidate | None:
    """A trickled `RTCIceCandidateInit` (JSON); None marks the end of candidates."""
    init = json.loads(candidate_init)
    line = init.get("candidate", "")
    if not line:
        return None
    candidate = candidate_from_sdp(line.removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def _msid_track_ids(sdp: str) -> dict[str, str]:
    """mid -> track id from the `a=msid:<stream> <track>` lines: the client's track cid."""
    result: dict[str, str] = {}
    mid = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:").strip()
        elif line.startswith("a=msid:") and mid is not None:
            _, _, track_id = line.removeprefix("a=msid:").partition(" ")
            if track_id.strip():
                result[mid] = track_id.strip()
    return result


class Participant:
    """One signalling connection with its publisher and subscriber peer connections."""

    def __init__(
        self,
        server: LiveKitTestServer,
        room: Room,
        claims: Claims,
        ws: web.WebSocketResponse,
        capabilities: Iterable[str] = (),
    ) -> None:
        self.server = server
        self.room = room
        self.ws = ws
        self.sid = new_sid("PA")
        self.identity = claims.identity
        self.name = claims.name
        self.kind = _KINDS.get(claims.kind, proto_models.ParticipantInfo.Kind.STANDARD)
        self.metadata = claims.metadata
        self.attributes: dict[str, str] = dict(claims.attributes or {})
        grants = claims.video or VideoGrants()
        is_agent = bool(grants.agent) or self.kind == proto_models.ParticipantInfo.Kind.AGENT
        self.permission = proto_models.ParticipantPermission(
            can_subscribe=grants.can_subscribe,
            can_publish=grants.can_publish,
            can_publish_data=grants.can_publish_data,
            can_update_metadata=bool(grants.can_update_own_metadata) or is_agent,
            agent=is_agent,
        )
        # Others' clients read these: e.g. they compress data streams only for peers that can
        # inflate them.
        self.capabilities = list(capabilities)
        self.joined_at = time.time()
        self.state: proto_models.ParticipantInfo.State = ParticipantState.JOINED
        self.disconnect_reason: proto_models.DisconnectReason = DisconnectReason.UNKNOWN_REASON
        self.version = 1
        self.tracks: dict[str, PublishedTrack] = {}
        self._tasks = _Tasks()

        # No STUN: the namespace has no way out. Max-bundle: with aiortc's default ("balanced") a
        # track added while an offer is in flight keeps a transport the answer discards: silence.
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.publisher = RTCPeerConnection(config)
        self.subscriber = RTCPeerConnection(config)
        self._announced: dict[str, proto_models.TrackInfo] = {}  # cid -> add_track's TrackInfo
        self._mid_cids: dict[str, str] = {}
        self._early_candidates: dict[int, list[RTCIceCandidate | None]] = {
            proto_rtc.SignalTarget.PUBLISHER: [],
            proto_rtc.SignalTarget.SUBSCRIBER: [],
        }
        self._subscriptions: dict[str, _Subscription] = {}
        self._offer_id = 0
        self._offer_in_flight = False
        self._negotiation_needed = False

        # The client receives data on channels the server opens on the subscriber connection.
        self._reliable = self.subscriber.createDataChannel(RELIABLE)
        self._lossy = self.subscriber.createDataChannel(LOSSY, ordered=False, maxRetransmits=0)
        self._outbox: list[bytes] = []
        self._reliable.on("open", self._flush_outbox)

        self.publisher.on("track", self._on_track)
        self.publisher.on("datachannel", self._on_datachannel)
        self.publisher.on("connectionstatechange", self._on_publisher_state)
        self._subscriber_connected = asyncio.Event()
        self.subscriber.on("connectionstatechange", self._on_subscriber_state)

    def __repr__(self) -> str:
        return f"<Participant {self.identity} {self.sid} in {self.room.name}>"

    def info(self) -> proto_models.ParticipantInfo:
        return proto_models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            state=self.state,
            tracks=[t.info for t in self.tracks.values()],
            metadata=self.metadata,
            joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000),
            version=self.version,
            permission=self.permission,
            is_publisher=bool(self.tracks),
            kind=self.kind,
            attributes=self.attributes,
            disconnect_reason=self.disconnect_reason,
            capabilities=self.capabilities,
        )

    @property
    def connected(self) -> bool:
        return bool(self.state != ParticipantState.DISCONNECTED)

    async def send(self, message: proto_rtc.SignalResponse) -> None:
        """Send a signal message unless the socket is gone (a leaving peer may miss some)."""
        if self.ws.closed:
            return
        try:
            await self.ws.send_bytes(message.SerializeToString())
        except ConnectionError:
            log.debug("signal to %s dropped: socket closed", self.identity)

    # --- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Handle signal requests until the socket closes."""
        async for message in self.ws:
            if message.type != WSMsgType.BINARY:
                continue
            request = proto_rtc.SignalRequest.FromString(message.data)
            try:
                await self._handle(request)
            except Exception:
                log.exception(
                    "signal request %s from %s failed", request.WhichOneof("message"), self
                )

    async def join(self) -> None:
        """Send the JoinResponse, tell the others, subscribe to what they publish."""
        others = [p for p in self.room.participants.values() if p is not self]
        await self.send(
            proto_rtc.SignalResponse(
                join=proto_rtc.JoinResponse(
                    room=self.room.info(),
                    participant=self.info(),
                    other_participants=[p.info() for p in others],
                    server_version=SERVER_VERSION,
                    server_info=self.server.server_info(),
                    subscriber_primary=False,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                )
            )
        )
        log.info(
            "join room=%s identity=%s sid=%s kind=%s",
            self.room.name,
            self.identity,
            self.sid,
            proto_models.ParticipantInfo.Kind.Name(self.kind),
        )
        await self.server.broadcast_update(self.room, self, exclude=self)
        # The first offer carries the data channels alone. With an audio m-line ahead of them,
        # aiortc (1.16) would stop the transport they share once the answer bundles them.
        await self._send_offer()
        for other in others:
            for track in other.tracks.values():
                self.subscribe(other, track)  # offered once the client has answered

    async def close(
        self, reason: proto_models.DisconnectReason, *, tell_client: bool = False
    ) -> None:
        """Leave the room: tell the others why, stop media, close the connections and socket."""
        if not self.connected:
            return
        self.state = ParticipantState.DISCONNECTED
        self.disconnect_reason = reason
        self.version += 1
        log.info(
            "leave room=%s identity=%s sid=%s reason=%s",
            self.room.name,
            self.identity,
            self.sid,
            DisconnectReason.Name(reason),
        )
        if tell_client:
            await self.send(
                proto_rtc.SignalResponse(
                    leave=proto_rtc.LeaveRequest(
                        can_reconnect=False,
                        reason=reason,
                        action=proto_rtc.LeaveRequest.Action.DISCONNECT,
                    )
                )
            )
        if self.room.participants.get(self.identity) is self:
            del self.room.participants[self.identity]
        await self.server.broadcast_update(self.room, self)
        for other in self.room.participants.values():
            for track_sid in self.tracks:
                other.unsubscribe(track_sid)
        for subscription in self._subscriptions.values():
            subscription.proxy.stop()
        for track in self.tracks.values():
            await track.drain.stop()
        await self._tasks.cancel()
        await self.ws.close()
        await self.publisher.close()
        await self.subscriber.close()
        if not self.room.participants:
            await self.server.close_room(self.room)

    def _on_subscriber_state(self) -> None:
        if self.subscriber.connectionState == "connected":
            self._subscriber_connected.set()

    def _on_publisher_state(self) -> None:
        if self.publisher.connectionState == "connected" and self.state == ParticipantState.JOINED:
            self.state = ParticipantState.ACTIVE
            self.version += 1
            self._tasks.spawn(self.server.broadcast_update(self.room, self))

    # --- signal requests ---------------------------------------------------------------------

    async def _handle(self, request: proto_rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "offer":
            await self._on_publisher_offer(request.offer)
        elif kind == "answer":
            await self._on_subscriber_answer(request.answer)
        elif kind == "trickle":
            await self._on_trickle(request.trickle)
        elif kind == "add_track":
            await self._on_add_track(request.add_track)
        elif kind == "mute":
            await self._on_mute(request.mute)
        elif kind == "update_metadata":
            await self._on_update_metadata(request.update_metadata)
        elif kind == "ping_req":
            await self.send(
                proto_rtc.SignalResponse(
                    pong_resp=proto_rtc.Pong(
                        last_ping_timestamp=request.ping_req.timestamp, timestamp=_now_ms()
                    )
                )
            )
        elif kind == "ping":
            await self.send(proto_rtc.SignalResponse(pong=_now_ms()))
        elif kind == "leave":
            await self.close(DisconnectReason.CLIENT_INITIATED)
        else:  # subscription settings, layers, permissions, sync state: nothing to do here
            log.debug("ignored %s from %s", kind, self)

    async def _on_publisher_offer(self, offer: proto_rtc.SessionDescription) -> None:
        self._mid_cids.update(_msid_track_ids(offer.sdp))
        await self.publisher.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        await self._add_early_candidates(proto_rtc.SignalTarget.PUBLISHER)
        await self.publisher.setLocalDescription(await self.publisher.createAnswer())
        await self.send(
            proto_rtc.SignalResponse(
                answer=proto_rtc.SessionDescription(
                    type="answer", sdp=self.publisher.localDescription.sdp, id=offer.id
                )
            )
        )

    async def _on_subscriber_answer(self, answer: proto_rtc.SessionDescription) -> None:
        await self.subscriber.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        await self._add_early_candidates(proto_rtc.SignalTarget.SUBSCRIBER)
        self._offer_in_flight = False
        for subscription in self._subscriptions.values():
            if subscription.announced or subscription.transceiver.mid is None:
                continue
            subscription.announced = True
            await subscription.publisher.send(
                proto_rtc.SignalResponse(
                    track_subscribed=proto_rtc.TrackSubscribed(track_sid=subscription.track_sid)
                )
            )
        if self._negotiation_needed:
            self._offer_in_flight = True
            self._tasks.spawn(self._offer_once_connected())

    async def _on_trickle(self, trickle: proto_rtc.TrickleRequest) -> None:
        candidate = _candidate(trickle.candidateInit)
        pc = self._pc(trickle.target)
        if pc.remoteDescription is None:  # arrived before the description: keep for later
            self._early_candidates[trickle.target].append(candidate)
        else:
            await pc.addIceCandidate(candidate)

    async def _add_early_candidates(self, target: proto_rtc.SignalTarget) -> None:
        early, self._early_candidates[target] = self._early_candidates[target], []
        for candidate in early:
            await self._pc(target).addIceCandidate(candidate)

    def _pc(self, target: proto_rtc.SignalTarget) -> RTCPeerConnection:
        if target == proto_rtc.SignalTarget.SUBSCRIBER:
            return self.subscriber
        return self.publisher

    async def _on_add_track(self, request: proto_rtc.AddTrackRequest) -> None:
        info = proto_models.TrackInfo(
            sid=new_sid("TR"),
            type=request.type,
            name=request.name,
            source=request.source,
            muted=request.muted,
            mime_type="audio/opus" if request.type == proto_models.TrackType.AUDIO else "",
            disable_dtx=request.disable_dtx,
            stereo=request.stereo,
            disable_red=request.disable_red,
            stream=request.stream,
            audio_features=request.audio_features,
        )
        self._announced[request.cid] = info
        await self.send(
            proto_rtc.SignalResponse(
                track_published=proto_rtc.TrackPublishedResponse(cid=request.cid, track=info)
            )
        )

    async def _on_mute(self, request: proto_rtc.MuteTrackRequest) -> None:
        track = self.tracks.get(request.sid)
        if track is not None and track.info.muted != request.muted:
            track.info.muted = request.muted
            self.version += 1
            await self.server.broadcast_update(self.room, self)

    async def _on_update_metadata(self, request: proto_rtc.UpdateParticipantMetadata) -> None:
        if not self.permission.can_update_metadata:
            reason = proto_rtc.RequestResponse.Reason.NOT_ALLOWED
        else:
            reason = proto_rtc.RequestResponse.Reason.OK
            if request.name:
                self.name = request.name
            if request.metadata:
                self.metadata = request.metadata
            for key, value in request.attributes.items():
                if value:
                    self.attributes[key] = value
                else:  # an empty value deletes the attribute
                    self.attributes.pop(key, None)
            self.version += 1
            log.info(
                "attributes room=%s identity=%s %s", self.room.name, self.identity, self.attributes
            )
            await self.server.broadcast_update(self.room, self)
        await self.send(
            proto_rtc.SignalResponse(
                request_response=proto_rtc.RequestResponse(
                    request_id=request.request_id, reason=reason
                )
            )
        )

    # --- media -------------------------------------------------------------------------------

    def _on_track(self, media: MediaStreamTrack) -> None:
        mid = next(
            (t.mid for t in self.publisher.getTransceivers() if t.receiver.track is media), None
        )
        info = self._announced.pop(self._mid_cids.get(mid or "", ""), None)
        if info is None:
            log.warning("track %s from %s (mid %s) was never announced", media.kind, self, mid)
            return
        info.mid = mid or ""
        drain = MediaBlackhole()
        drain.addTrack(self.server.relay.subscribe(media, buffered=False))
        self.tracks[info.sid] = PublishedTrack(info=info, media=media, drain=drain)
        self.version += 1
        log.info(
            "publish room=%s identity=%s track=%s kind=%s",
            self.room.name,
            self.identity,
            info.sid,
            media.kind,
        )
        self._tasks.spawn(self._publish(self.tracks[info.sid]))

    async def _publish(self, track: PublishedTrack) -> None:
        await track.drain.start()
        # Subscribers must know the track (update) before the offer that carries it.
        await self.server.broadcast_update(self.room, self)
        for other in list(self.room.participants.values()):
            if other is not self:
                other.subscribe(self, track)

    def subscribe(self, publisher: Participant, track: PublishedTrack) -> None:
        """Add a relayed copy of `track` to the subscriber connection and renegotiate."""
        if not self.permission.can_subscribe or track.info.sid in self._subscriptions:
            return
        proxy = self.server.relay.subscribe(track.media)
        transceiver = self.subscriber.addTransceiver(proxy, direction="sendonly")
        # The client maps the incoming track to its participant and publication by msid.
        transceiver.sender._stream_id = f"{publisher.sid}|{track.info.sid}"
        transceiver.sender._track_id = track.info.sid
        self._subscriptions[track.info.sid] = _Subscription(
            publisher=publisher, track_sid=track.info.sid, transceiver=transceiver, proxy=proxy
        )
        log.info(
            "subscribe room=%s identity=%s track=%s publisher=%s",
            self.room.name,
            self.identity,
            track.info.sid,
            publisher.identity,
        )
        self.negotiate()

    def unsubscribe(self, track_sid: str) -> None:
        subscription = self._subscriptions.pop(track_sid, None)
        if subscription is None:
            return
        subscription.proxy.stop()
        subscription.transceiver.direction = "inactive"  # aiortc cannot remove a transceiver
        self.negotiate()

    def negotiate(self) -> None:
        """Offer on the subscriber connection, one offer at a time (the client answers each)."""
        self._negotiation_needed = True
        if not self._offer_in_flight and self.connected:
            self._offer_in_flight = True
            self._tasks.spawn(self._offer_once_connected())

    async def _offer_once_connected(self) -> None:
        """Offer once the subscriber connection is up. An aiortc (1.16) RTP sender that starts
        before DTLS has connected stops for good: the track would be silent. The first offer, in
        `join`, is what connects it, and goes at once."""
        try:
            async with asyncio.timeout(CONNECT_S):
                await self._subscriber_connected.wait()
        except TimeoutError:
            log.warning("%s: subscriber connection not up after %s s, offering", self, CONNECT_S)
        await self._send_offer()

    async def _send_offer(self) -> None:
        self._offer_in_flight = True
        self._negotiation_needed = False
        await self.subscriber.setLocalDescription(await self.subscriber.createOffer())
        self._offer_id += 1
        await self.send(
            proto_rtc.SignalResponse(
                offer=proto_rtc.SessionDescription(
                    type="offer", sdp=self.subscriber.localDescription.sdp, id=self._offer_id
                )
            )
        )

    # --- data --------------------------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label in (RELIABLE, LOSSY):
            reliable = channel.label == RELIABLE

            def on_message(message: bytes | str) -> None:
                if isinstance(message, bytes):
                    self.server.forward_data(self, message, reliable=reliable)

            channel.on("message", on_message)

    def deliver(self, payload: bytes, *, reliable: bool) -> None:
        """Send a data packet to this participant; reliable ones wait for the channel to open."""
        channel = self._reliable if reliable else self._lossy
        if channel.readyState == "open":
            channel.send(payload)
        elif reliable:
            self._outbox.append(payload)

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for payload in outbox:
            self._reliable.send(payload)


class LiveKitTestServer:
    """The aiohttp app with rooms; `/rtc` here, workers and Twirp via `add_routes`."""

    def __init__(
        self, api_key: str, api_secret: str, host: str = "10.99.0.1", port: int = 0
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.auth = TokenAuth(api_key, api_secret)
        self.host = host
        self.port = port
        self.rooms: dict[str, Room] = {}
        self.relay = MediaRelay()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/rtc", self._rtc),
                web.get("/rtc/validate", self._validate),
                web.get("/rtc/v1", self._single_pc_unsupported),
                web.get("/rtc/v1/validate", self._single_pc_unsupported),
            ]
        )
        self._room_created: list[RoomHook] = []
        self._participant_joined: list[ParticipantHook] = []
        self._room_closed: list[RoomHook] = []
        self._tasks = _Tasks()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def server_info(self) -> proto_models.ServerInfo:
        return proto_models.ServerInfo(
            edition=proto_models.ServerInfo.Edition.Standard,
            version=SERVER_VERSION,
            protocol=PROTOCOL,
            node_id="lkserver",
        )

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Routes of the other parts (workers, Twirp); only before `start()`."""
        self.app.add_routes(routes)

    def on_room_created(self, callback: RoomHook) -> None:
        self._room_created.append(callback)

    def on_participant_joined(self, callback: ParticipantHook) -> None:
        self._participant_joined.append(callback)

    def on_room_closed(self, callback: RoomHook) -> None:
        self._room_closed.append(callback)

    def _fire(self, hooks: Iterable[Callable[..., Awaitable[None] | None]], *args: object) -> None:
        """Run hooks; coroutine ones as background tasks so signalling never waits on them."""
        for hook in hooks:
            result = hook(*args)
            if inspect.isawaitable(result):
                self._tasks.spawn(_await(result))

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("listening on %s", self.url)

    async def stop(self) -> None:
        """Disconnect everyone (SERVER_SHUTDOWN), then stop tasks and the listener."""
        for room in list(self.rooms.values()):
            for participant in list(room.participants.values()):
                await participant.close(DisconnectReason.SERVER_SHUTDOWN, tell_client=True)
            await self.close_room(room)
        await self._tasks.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- rooms -------------------------------------------------------------------------------

    async def create_room(self, name: str, **options: Any) -> Room:
        """The room `name`, created with `options` (Room fields) unless it exists."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name=name, **options)
            log.info("room created room=%s sid=%s", name, room.sid)
            self._fire(self._room_created, room)
        return room

    async def delete_room(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            raise KeyError(f"room {name!r} not found")
        for participant in list(room.participants.values()):
            await participant.close(DisconnectReason.ROOM_DELETED, tell_client=True)
        await self.close_room(room)

    async def remove_participant(self, room: str, identity: str) -> None:
        participant = self.rooms[room].participants.get(identity) if room in self.rooms else None
        if participant is None:
            raise KeyError(f"participant {identity!r} not in room {room!r}")
        await participant.close(DisconnectReason.PARTICIPANT_REMOVED, tell_client=True)

    async def close_room(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            log.info("room closed room=%s sid=%s", room.name, room.sid)
            self._fire(self._room_closed, room)

    async def broadcast_update(
        self, room: Room, participant: Participant, *, exclude: Participant | None = None
    ) -> None:
        """Tell everyone in the room (the participant too) about the participant's new state."""
        update = proto_rtc.SignalResponse(
            update=proto_rtc.ParticipantUpdate(participants=[participant.info()])
        )
        for other in list(room.participants.values()):
            if other is not exclude:
                await other.send(update)

    def forward_data(self, sender: Participant, payload: bytes, *, reliable: bool) -> None:
        """Stamp the sender into a data packet and deliver it to its destinations (or everyone)."""
        if not sender.permission.can_publish_data:
            return
        packet = proto_models.DataPacket.FromString(payload)
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
            destinations.update(packet.user.destination_identities)
        stamped = packet.SerializeToString()
        for identity, recipient in sender.room.participants.items():
            if recipient is not sender and (not destinations or identity in destinations):
                recipient.deliver(stamped, reliable=reliable)

    def send_server_data(
        self,
        room: str,
        data: bytes,
        *,
        reliable: bool,
        topic: str | None,
        destinations: list[str],
    ) -> None:
        """`RoomService.SendData`: a user packet from the server itself (no participant), as
        livekit-server sends it; KeyError for an unknown room."""
        packet = proto_models.DataPacket(
            kind=proto_models.DataPacket.Kind.RELIABLE
            if reliable
            else proto_models.DataPacket.Kind.LOSSY,
            destination_identities=destinations,
            user=proto_models.UserPacket(
                payload=data, topic=topic, destination_identities=destinations
            ),
        )
        stamped = packet.SerializeToString()
        for identity, recipient in self.rooms[room].participants.items():
            if not destinations or identity in destinations:
                recipient.deliver(stamped, reliable=reliable)

    # --- HTTP --------------------------------------------------------------------------------

    async def _rtc(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self.auth.verify_request(request, require=("room_join",))
        except AuthError as e:
            log.info("rtc rejected: %s", e.reason)
            return e.response()
        assert claims.video is not None  # verify() checked its room_join grant
        if request.query.get("reconnect") == "1":
            # Resuming needs an ICE restart, which aiortc lacks; refused, the client rejoins.
            log.warning("resume refused room=%s identity=%s", claims.video.room, claims.identity)
            return web.Response(status=404, text="resume not supported")
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        room = await self.create_room(claims.video.room)
        previous = room.participants.get(claims.identity)
        if previous is not None:
            await previous.close(DisconnectReason.DUPLICATE_IDENTITY, tell_client=True)
            room = await self.create_room(claims.video.room)  # closed if it was the only one
        participant = Participant(self, room, claims, ws, _capabilities(request))
        room.participants[participant.identity] = participant
        try:
            await participant.join()
            self._fire(self._participant_joined, room, participant)
            await participant.serve()
        finally:
            await participant.close(DisconnectReason.SIGNAL_CLOSE)
        return ws

    async def _validate(self, request: web.Request) -> web.Response:
        """What the SDK asks after a failed connect, to report why (401 with the reason)."""
        try:
            self.auth.verify_request(request, require=("room_join",))
        except AuthError as e:
            return web.Response(status=401, text=e.reason)
        return web.Response(text="success")

    async def _single_pc_unsupported(self, request: web.Request) -> web.Response:
        """404 (with CORS, so browsers can read it) makes clients fall back to `/rtc`."""
        return web.Response(
            status=404,
            text="single peer connection mode not supported",
            headers={"Access-Control-Allow-Origin": "*"},
        )


def _capabilities(request: web.Request) -> list[str]:
    """The client's `capabilities=CAP_A,CAP_B` query parameter (unknown names skipped)."""
    known = proto_models.ClientInfo.Capability.keys()
    return [n for n in request.query.get("capabilities", "").split(",") if n in known]


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable
