"""Starting and ending voice sessions through LiveKit's server APIs (the session API's core).

A session is a room named `agent_{agent_id}_{user_id}_{epoch_ms}` (RoomService), an explicit
dispatch of the worker's agent into it carrying the caller's context (AgentDispatchService), and
a short-lived token for the caller that can do nothing but join that room, listen, speak and send
data. Every LiveKit failure becomes `LiveKitUnavailableError`, whose message holds no secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from livekit import api

from worker.config import AgentConfig, AgentRegistry
from worker.dispatch import encode_metadata
from worker.routing import RoomName, RoutingError, format_room, parse_room
from worker.settings import ApiSettings
from worker.untrusted import UntrustedJSONError, loads_bounded

logger = logging.getLogger("worker.api.sessions")

OWNER_KEY = "session_api_key"
"""The room metadata's field naming the API key (its fingerprint) that created the session: only
that key may end it."""
CONTEXT_MAX_BYTES = 4096
"""The caller context, as JSON: it travels in the dispatch metadata and fills placeholders."""
_POLL_S = 0.1
HEALTH_CACHE_S = 2.0


class SessionError(Exception):
    """A request the API answers with an error; `status` is its HTTP status."""

    status = 400


class UnknownAgentError(SessionError):
    status = 404


class SessionNotFoundError(SessionError):
    status = 404


class LiveKitUnavailableError(SessionError):
    status = 503


class NoWorkerError(SessionError):
    status = 503


@dataclass(frozen=True)
class SessionRequest:
    agent_id: str
    user_id: str | None = None
    context: Mapping[str, object] | None = None
    max_duration: int | None = None
    recording: bool | None = None


@dataclass(frozen=True)
class Session:
    session_id: str
    room_name: str
    token: str
    livekit_url: str
    agent: AgentConfig
    expires_at: datetime


class SessionService:
    """Creates and ends sessions for the agents of `registry` with one LiveKit API client."""

    def __init__(
        self, registry: AgentRegistry, settings: ApiSettings, api_key: str, api_secret: str
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._api_key = api_key
        self._api_secret = api_secret
        self._lkapi: api.LiveKitAPI | None = None
        self._health: tuple[float, LiveKitUnavailableError | None] | None = None
        self._health_lock = asyncio.Lock()

    @property
    def lkapi(self) -> api.LiveKitAPI:
        """Created on first use, inside the server's event loop (it owns an aiohttp session)."""
        if self._lkapi is None:
            self._lkapi = api.LiveKitAPI(
                self.settings.livekit_url,
                self._api_key,
                self._api_secret,
                timeout=aiohttp.ClientTimeout(total=10),
            )
        return self._lkapi

    async def aclose(self) -> None:
        if self._lkapi is not None:
            await self._lkapi.aclose()

    def agent(self, agent_id: str) -> AgentConfig:
        try:
            return self.registry.get(agent_id)
        except RoutingError as exc:
            raise UnknownAgentError(str(exc)) from None

    def validate(self, request: SessionRequest) -> tuple[AgentConfig, RoomName, str]:
        """The agent, the room and the dispatch metadata for `request`, or a `SessionError`."""
        agent = self.agent(request.agent_id)
        context = dict(request.context or {})
        size = len(json.dumps(context, separators=(",", ":"), ensure_ascii=False).encode())
        if size > CONTEXT_MAX_BYTES:
            raise SessionError(f"context is {size} bytes as JSON; the limit is {CONTEXT_MAX_BYTES}")
        limit = agent.limits.max_duration
        if request.max_duration is not None and request.max_duration > limit:
            raise SessionError(
                f"max_duration {request.max_duration} exceeds the agent's limit of {limit} s"
            )
        if request.recording is not None and not agent.recording.per_session:
            raise SessionError(
                f"recording: agent {agent.id} does not allow choosing it per session"
                f" (its calls are {'' if agent.recording.enabled else 'not '}recorded)"
            )
        try:
            metadata = encode_metadata(context, request.max_duration, request.recording)
        except ValueError as exc:
            raise SessionError(f"context: {exc}") from None
        user_id = request.user_id or f"user-{secrets.token_hex(6)}"
        room = RoomName(agent.id, user_id, str(int(time.time() * 1000)))
        try:
            format_room(room)
        except RoutingError as exc:
            raise SessionError(str(exc)) from None
        return agent, room, metadata

    async def create(self, request: SessionRequest, *, owner: str) -> Session:
        """The session, its room marked as `owner`'s (an API key's fingerprint)."""
        agent, room, metadata = self.validate(request)
        name = format_room(room)
        settings = self.settings
        async with _livekit("create the room"):
            created = await self.lkapi.room.create_room(
                api.CreateRoomRequest(
                    name=name,
                    empty_timeout=settings.empty_timeout,
                    max_participants=settings.max_participants,
                    metadata=json.dumps({OWNER_KEY: owner}),
                )
            )
        try:
            async with _livekit("dispatch the agent"):
                dispatch = await self.lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(
                        agent_name=settings.agent_name, room=name, metadata=metadata
                    )
                )
            if settings.dispatch_wait > 0 and not await self._accepted(name, dispatch.id):
                raise NoWorkerError(
                    f"no agent worker accepted the call within {settings.dispatch_wait:g} s; "
                    "try again shortly"
                )
        except SessionError:
            await self._discard(name)  # a room nobody will serve
            raise
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=settings.token_ttl
        )
        token = (
            api.AccessToken(self._api_key, self._api_secret)
            .with_identity(room.user_id)
            .with_kind("standard")
            .with_ttl(timedelta(seconds=settings.token_ttl))
            .with_grants(
                api.VideoGrants(
                    room_join=True,
                    room=name,
                    can_subscribe=True,
                    can_publish=True,
                    can_publish_sources=["microphone"],
                    can_publish_data=True,
                )
            )
            .to_jwt()
        )
        logger.info(
            "session %s: room %s, agent %s, user %s, dispatch %s",
            created.sid,
            name,
            agent.id,
            room.user_id,
            dispatch.id,
        )
        return Session(
            session_id=created.sid,
            room_name=name,
            token=token,
            livekit_url=settings.public_url,
            agent=agent,
            expires_at=expires_at,
        )

    async def end(self, room_name: str, *, owner: str) -> None:
        """End a session's call: its room is deleted, so the agent says nothing more and leaves.
        Only the key that created it may: to any other, and for rooms the API never created,
        there is no such session."""
        try:
            parse_room(room_name)
        except RoutingError as exc:
            raise SessionError(str(exc)) from None
        async with _livekit("end the session"):
            found = await self.lkapi.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
            if not found.rooms or _owner(found.rooms[0].metadata) != owner:
                raise SessionNotFoundError(f"no session in room {room_name!r}")
            await self.lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
        logger.info("session in room %s ended by the API", room_name)

    async def check(self) -> None:
        """Raise `LiveKitUnavailableError` unless LiveKit's server API answers. The answer is
        kept `HEALTH_CACHE_S`: the health check needs no key, and must not let anyone make the
        API call LiveKit at will."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] >= HEALTH_CACHE_S:
            async with self._health_lock:
                if self._health is None or time.monotonic() - self._health[0] >= HEALTH_CACHE_S:
                    self._health = (time.monotonic(), await self._ask_livekit())
        if self._health[1] is not None:
            raise self._health[1]

    async def _ask_livekit(self) -> LiveKitUnavailableError | None:
        try:
            async with _livekit("answer a health check"):
                await self.lkapi.room.list_rooms(api.ListRoomsRequest(names=["healthz"]))
        except LiveKitUnavailableError as exc:
            return exc
        return None

    async def _accepted(self, room: str, dispatch_id: str) -> bool:
        """Whether a worker took the dispatch's job within `dispatch_wait` seconds."""
        deadline = time.monotonic() + self.settings.dispatch_wait
        while time.monotonic() < deadline:
            async with _livekit("check the dispatch"):
                dispatches = await self.lkapi.agent_dispatch.list_dispatch(room)
            jobs = [j for d in dispatches if d.id == dispatch_id for j in d.state.jobs]
            if any(j.state.worker_id for j in jobs):
                return True
            await asyncio.sleep(_POLL_S)
        return False

    async def _discard(self, room: str) -> None:
        try:
            async with _livekit("delete the unserved room"):
                await self.lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
        except LiveKitUnavailableError:
            logger.warning("could not delete room %s, which no worker took", room)


def _owner(metadata: str) -> str | None:
    """The creating key's fingerprint from a room's metadata (None if not the API's room)."""
    try:
        fields = loads_bounded(metadata, max_bytes=CONTEXT_MAX_BYTES)
    except UntrustedJSONError:
        return None
    owner = fields.get(OWNER_KEY) if isinstance(fields, dict) else None
    return owner if isinstance(owner, str) else None


@asynccontextmanager
async def _livekit(doing: str) -> AsyncIterator[None]:
    """Turns LiveKit client failures into `SessionError`s with a log line (no secrets)."""
    try:
        yield
    except SessionError:
        raise
    except api.ServerError as error:
        if error.code == api.ServerErrorCode.NOT_FOUND:
            raise SessionNotFoundError(error.message) from None
        logger.error("LiveKit refused to %s: %s (HTTP %s)", doing, error.code, error.status)
        raise LiveKitUnavailableError(f"LiveKit refused to {doing} ({error.code})") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        logger.error("could not %s: LiveKit unreachable (%s)", doing, type(error).__name__)
        raise LiveKitUnavailableError(f"could not {doing}: LiveKit is unreachable") from None
