"""Twirp `RoomService` and `AgentDispatchService`: the server API that `livekit.api` calls.

Twirp is plain HTTP: `POST /twirp/livekit.<Service>/<Method>` with a protobuf or JSON body (by
Content-Type), answered in the same encoding; errors are JSON `{"code", "msg"}` with the matching
HTTP status. livekit-api sends protobuf; JSON is accepted too, as livekit-server does, so a test
can poke the API with plain HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import models as proto_models
from livekit.protocol import room as proto_room
from livekit.protocol import sip as proto_sip

from tests.lkserver.auth import AuthError, Grant
from tests.lkserver.server import LiveKitTestServer
from tests.lkserver.workers import WorkerService

PROTOBUF = "application/protobuf"
JSON = "application/json"

_STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "bad_route": 404,
    "not_found": 404,
    "already_exists": 409,
    "failed_precondition": 412,
}
"""Twirp error codes and their HTTP statuses (the spec's table, the codes used here)."""


class TwirpError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg}, status=_STATUS[self.code])


Req = TypeVar("Req", bound=Message)


@dataclass(frozen=True)
class _Method(Generic[Req]):
    request: type[Req]
    grant: Grant
    room_scoped: bool
    """The grant must name the request's `room` (livekit-server's rule for room_admin)."""
    handler: Callable[[Req], Awaitable[Message]]
    room_field: str = "room"
    sip_call: bool = False
    """The token must also hold the SIP `call` grant."""


class TwirpService:
    """Serves the Twirp routes on `server`; attach before `server.start()`."""

    def __init__(self, server: LiveKitTestServer, workers: WorkerService) -> None:
        self._server = server
        self._workers = workers
        room_service = "livekit.RoomService"
        dispatch_service = "livekit.AgentDispatchService"
        self.transfers: list[proto_sip.TransferSIPParticipantRequest] = []
        """Every `SIP.TransferSIPParticipant` request that succeeded, in order."""
        self._methods: dict[tuple[str, str], _Method[Any]] = {
            ("livekit.SIP", "TransferSIPParticipant"): _Method(
                proto_sip.TransferSIPParticipantRequest,
                "room_admin",
                True,
                self._transfer_sip_participant,
                room_field="room_name",
                sip_call=True,
            ),
            (room_service, "CreateRoom"): _Method(
                proto_room.CreateRoomRequest, "room_create", False, self._create_room
            ),
            (room_service, "ListRooms"): _Method(
                proto_room.ListRoomsRequest, "room_list", False, self._list_rooms
            ),
            (room_service, "DeleteRoom"): _Method(
                proto_room.DeleteRoomRequest, "room_create", False, self._delete_room
            ),
            (room_service, "ListParticipants"): _Method(
                proto_room.ListParticipantsRequest, "room_admin", True, self._list_participants
            ),
            (room_service, "RemoveParticipant"): _Method(
                proto_room.RoomParticipantIdentity, "room_admin", True, self._remove_participant
            ),
            (room_service, "SendData"): _Method(
                proto_room.SendDataRequest, "room_admin", True, self._send_data
            ),
            (dispatch_service, "CreateDispatch"): _Method(
                proto_dispatch.CreateAgentDispatchRequest,
                "room_admin",
                True,
                self._create_dispatch,
            ),
            (dispatch_service, "ListDispatch"): _Method(
                proto_dispatch.ListAgentDispatchRequest, "room_admin", True, self._list_dispatch
            ),
            (dispatch_service, "DeleteDispatch"): _Method(
                proto_dispatch.DeleteAgentDispatchRequest,
                "room_admin",
                True,
                self._delete_dispatch,
            ),
        }
        server.add_routes([web.post("/twirp/{service}/{method}", self._handle)])

    def _check(
        self, request: web.Request, grant: Grant | None = None, room: str | None = None
    ) -> None:
        """Raise livekit-server's Twirp error for a bad token (401) or a missing grant (403)."""
        try:
            self._server.auth.verify_request(request, require=[grant] if grant else [], room=room)
        except AuthError as e:
            code = "unauthenticated" if e.status == 401 else "permission_denied"
            raise TwirpError(code, e.reason) from None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            return await self._call(request)
        except TwirpError as e:
            return e.response()

    async def _call(self, request: web.Request) -> web.Response:
        service, name = request.match_info["service"], request.match_info["method"]
        method = self._methods.get((service, name))
        if method is None:
            raise TwirpError("bad_route", f"no handler for {service}/{name}")
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            raise TwirpError("bad_route", f"unexpected Content-Type: {content_type!r}")
        self._check(request)  # the token itself first, as livekit-server's auth middleware does
        body = await request.read()
        message = method.request()
        try:
            if content_type == PROTOBUF:
                message.ParseFromString(body)
            else:
                json_format.Parse(body or b"{}", message)
        except (DecodeError, json_format.ParseError) as e:
            raise TwirpError("malformed", f"could not decode the request: {e}") from None
        room = getattr(message, method.room_field, "") if method.room_scoped else None
        self._check(request, method.grant, room)
        if method.sip_call:
            claims = self._server.auth.verify_request(request)
            if claims.sip is None or not claims.sip.call:
                raise TwirpError("permission_denied", "token lacks the sip call grant")
        result = await method.handler(message)
        if content_type == PROTOBUF:
            return web.Response(body=result.SerializeToString(), content_type=PROTOBUF)
        # Twirp's JSON: proto field names, defaults included.
        fields = json_format.MessageToDict(
            result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return web.Response(text=json.dumps(fields), content_type=JSON)

    # SIP

    async def _transfer_sip_participant(
        self, req: proto_sip.TransferSIPParticipantRequest
    ) -> Message:
        """livekit-server's checks, then the transfer as a phone system completes it: the SIP
        participant leaves the room for the number it was sent to."""
        room = self._server.rooms.get(req.room_name)
        participant = room.participants.get(req.participant_identity) if room else None
        if participant is None:
            raise TwirpError("not_found", f"participant {req.participant_identity!r} not found")
        if participant.kind != proto_models.ParticipantInfo.Kind.SIP:
            raise TwirpError("failed_precondition", "participant is not a SIP participant")
        if not req.transfer_to:
            raise TwirpError("invalid_argument", "missing transfer_to")
        self.transfers.append(req)
        await self._server.remove_participant(req.room_name, req.participant_identity)
        return proto_sip.TransferSIPParticipantResponse(status=proto_sip.STS_TRANSFER_SUCCESSFUL)

    # RoomService

    async def _create_room(self, req: proto_room.CreateRoomRequest) -> Message:
        """The room, created unless it exists (livekit-server returns the existing one)."""
        if not req.name:
            raise TwirpError("invalid_argument", "room name is required")
        existed = req.name in self._server.rooms
        options: dict[str, Any] = {"metadata": req.metadata}
        if req.empty_timeout:
            options["empty_timeout"] = req.empty_timeout
        if req.departure_timeout:
            options["departure_timeout"] = req.departure_timeout
        if req.max_participants:
            options["max_participants"] = req.max_participants
        room = await self._server.create_room(req.name, **options)
        if not existed:
            for agent in req.agents:
                await self._workers.create_dispatch(room.name, agent.agent_name, agent.metadata)
        return room.info()

    async def _list_rooms(self, req: proto_room.ListRoomsRequest) -> Message:
        names = set(req.names)
        return proto_room.ListRoomsResponse(
            rooms=[
                room.info()
                for room in self._server.rooms.values()
                if not names or room.name in names
            ]
        )

    async def _delete_room(self, req: proto_room.DeleteRoomRequest) -> Message:
        try:
            await self._server.delete_room(req.room)
        except KeyError:
            raise TwirpError("not_found", f"room {req.room!r} not found") from None
        return proto_room.DeleteRoomResponse()

    async def _list_participants(self, req: proto_room.ListParticipantsRequest) -> Message:
        room = self._server.rooms.get(req.room)
        if room is None:
            raise TwirpError("not_found", f"room {req.room!r} not found")
        return proto_room.ListParticipantsResponse(
            participants=[p.info() for p in room.participants.values()]
        )

    async def _remove_participant(self, req: proto_room.RoomParticipantIdentity) -> Message:
        try:
            await self._server.remove_participant(req.room, req.identity)
        except KeyError:
            raise TwirpError(
                "not_found", f"participant {req.identity!r} not in room {req.room!r}"
            ) from None
        return proto_room.RemoveParticipantResponse()

    async def _send_data(self, req: proto_room.SendDataRequest) -> Message:
        try:
            self._server.send_server_data(
                req.room,
                req.data,
                reliable=req.kind == proto_models.DataPacket.Kind.RELIABLE,
                topic=req.topic or None,
                destinations=list(req.destination_identities),
            )
        except KeyError:
            raise TwirpError("not_found", f"room {req.room!r} not found") from None
        return proto_room.SendDataResponse()

    # AgentDispatchService

    async def _create_dispatch(self, req: proto_dispatch.CreateAgentDispatchRequest) -> Message:
        if not req.room:
            raise TwirpError("invalid_argument", "room is required")
        return await self._workers.create_dispatch(req.room, req.agent_name, req.metadata)

    async def _list_dispatch(self, req: proto_dispatch.ListAgentDispatchRequest) -> Message:
        if req.room not in self._server.rooms:
            raise TwirpError("not_found", f"room {req.room!r} not found")
        return proto_dispatch.ListAgentDispatchResponse(
            agent_dispatches=self._workers.list_dispatches(req.room, req.dispatch_id)
        )

    async def _delete_dispatch(self, req: proto_dispatch.DeleteAgentDispatchRequest) -> Message:
        dispatch = await self._workers.delete_dispatch(req.room, req.dispatch_id)
        if dispatch is None:
            raise TwirpError("not_found", f"dispatch {req.dispatch_id!r} not in room {req.room!r}")
        return dispatch
