"""`python -m worker api`: the HTTP API a backend calls to start a voice call.

`POST /v1/voice-sessions` returns a LiveKit URL, a caller token and the room, with the agent
already dispatched (`sessions.py` does the LiveKit side). Every error is JSON `{"detail": ...}`
with a 4xx/503 status and no stack trace; the OpenAPI spec is at `/openapi.json`, docs at `/docs`.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and
# they refer to a dependency defined inside `create_app`
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException

from worker.api.auth import ApiKeys, RateLimiter
from worker.api.guard import RequestGuard
from worker.api.page import SDK_FILE, CallPage, DemoPolicy
from worker.api.sessions import Session, SessionError, SessionRequest, SessionService
from worker.config import MAX_CALL_SECONDS, MIN_CALL_SECONDS, AgentConfig
from worker.routing import (
    AGENT_ID_RE,
    MAX_AGENT_ID_LEN,
    MAX_USER_ID_LEN,
    ROOM_NAME_PATTERN,
    USER_ID_RE,
)

logger = logging.getLogger("worker.api")

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


class Error(BaseModel):
    detail: str


AgentId = Annotated[
    str, Field(min_length=1, max_length=MAX_AGENT_ID_LEN, pattern=f"^{AGENT_ID_RE.pattern}$")
]


class VoiceSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId = Field(
        description="The agent's id, or a unique prefix of 8 or more characters."
    )
    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_USER_ID_LEN,
        pattern=f"^{USER_ID_RE.pattern}$",
        description="The caller's identity in the room; generated when absent.",
    )
    context: dict[str, Any] | None = Field(
        default=None,
        description="Values for the agent's placeholders (up to 4 KB as JSON), sent to the agent "
        "as its dispatch metadata.",
    )
    max_duration: int | None = Field(
        default=None,
        ge=MIN_CALL_SECONDS,
        le=MAX_CALL_SECONDS,
        description="Seconds the call may last, at most the agent's own limit (else 400).",
    )
    recording: StrictBool | None = Field(
        default=None,
        description="Record this call (true) or not (false); absent: the agent's default. "
        "400 for an agent whose file forbids choosing (`recording.per_session: false`).",
    )


class DemoSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId = Field(
        description="One of the agents `WORKER_DEMO_AGENTS` offers (their full ids)."
    )


class VoiceSession(BaseModel):
    session_id: str = Field(description="The LiveKit room's sid.")
    room_name: str
    token: str = Field(description="The caller's join token, for this room only.")
    livekit_url: str
    agent_id: str
    agent_name: str
    expires_at: datetime = Field(description="When the token stops being accepted for joining.")


class AgentInfo(BaseModel):
    id: str
    name: str
    language: str
    placeholders: list[str] = Field(description="Context keys the agent uses.")
    max_duration: int = Field(description="The agent's call limit in seconds.")
    recording: bool = Field(description="Whether its calls are recorded by default.")
    recording_per_session: bool = Field(
        description="Whether a session may choose `recording` (else 400)."
    )


class Health(BaseModel):
    status: str


def _agent_info(agent: AgentConfig) -> AgentInfo:
    return AgentInfo(
        id=agent.id,
        name=agent.name,
        language=agent.language,
        placeholders=sorted(agent.placeholders),
        max_duration=agent.limits.max_duration,
        recording=agent.recording.enabled,
        recording_per_session=agent.recording.per_session,
    )


CREATE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "An invalid body."},
    503: {"model": Error, "description": "LiveKit unreachable or no worker available."},
}
DEMO_OWNER = "demo"
"""The owner of demo sessions: no API key's fingerprint, so no key can end them."""
DEMO_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": Error, "description": "Not from the call page on this site."},
    404: {"model": Error, "description": "Demo mode is off, or the agent is not offered."},
    413: {"model": Error, "description": "A request body over 8 KB."},
    429: {"model": Error, "description": "Too many demo calls from this address, or in all."},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No API key, or an unknown one."},
    413: {"model": Error, "description": "A request body over 8 KB."},
    429: {"model": Error, "description": "Too many requests with this key."},
}


def create_app(service: SessionService, keys: ApiKeys, rate_limit: int) -> FastAPI:
    """The API over `service`; `keys` admit callers, each key limited to `rate_limit`/minute.
    The call page is at `/`, its demo mode at `/demo/*` (`page.py`)."""
    limiter = RateLimiter(rate_limit)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(
        title="Voice sessions",
        version="1",
        summary="Start a call with a voice agent: a LiveKit room, a caller token, a dispatched "
        "agent.",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestGuard,
        keys=keys,
        failures_per_minute=service.settings.failed_auth_limit,
        body_timeout=service.settings.request_timeout,
    )
    if service.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    async def authorized(
        request: Request,
        api_key: Annotated[str | None, Depends(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        """The caller's key fingerprint, once its key is known and within its rate limit."""
        presented = api_key or (bearer.credentials if bearer else None)
        if not presented:
            raise HTTPException(401, "missing API key: send X-API-Key or Authorization: Bearer")
        key = keys.identify(presented)
        if key is None:
            logger.warning("rejected an unknown API key from %s", _client(request))
            raise HTTPException(401, "unknown API key")
        if wait := limiter.allow(key):
            logger.warning("rate limited %s", key)
            raise HTTPException(429, f"rate limit exceeded: retry in {wait:.1f} s")
        return key

    @app.post(
        "/v1/voice-sessions",
        status_code=201,
        responses={
            **ERRORS,
            **CREATE_ERRORS,
            404: {"model": Error, "description": "No such agent."},
        },
    )
    async def create_session(
        body: VoiceSessionRequest, key: Annotated[str, Depends(authorized)]
    ) -> VoiceSession:
        """Create the room, dispatch the agent into it and mint the caller's token."""
        session = await service.create(
            SessionRequest(
                agent_id=body.agent_id,
                user_id=body.user_id,
                context=body.context,
                max_duration=body.max_duration,
                recording=body.recording,
            ),
            owner=key,
        )
        logger.info("%s started session %s", key, session.session_id)
        return _voice_session(session)

    @app.delete(
        "/v1/voice-sessions/{room_name}",
        status_code=204,
        response_class=Response,
        responses={
            **ERRORS,
            400: {"model": Error, "description": "Not a session's room name."},
            404: {"model": Error, "description": "No such session, or not this key's."},
            503: {"model": Error, "description": "LiveKit unreachable."},
        },
    )
    async def end_session(
        room_name: Annotated[str, Path(pattern=ROOM_NAME_PATTERN)],
        key: Annotated[str, Depends(authorized)],
    ) -> Response:
        """End the call: the room is deleted, the agent and the caller are disconnected. Only
        the API key that created the session may end it (404 for any other)."""
        await service.end(room_name, owner=key)
        logger.info("%s ended the session in %s", key, room_name)
        return Response(status_code=204)

    @app.get("/v1/agents", responses=ERRORS)
    async def list_agents(_: Annotated[str, Depends(authorized)]) -> list[AgentInfo]:
        """The agents sessions can be started with (public fields only)."""
        return [_agent_info(agent) for agent in service.registry]

    @app.get("/healthz", responses={503: {"model": Error, "description": "LiveKit unreachable."}})
    async def healthz() -> Health:
        """Whether the API can reach LiveKit (no key needed)."""
        await service.check()
        return Health(status="ok")

    @app.exception_handler(SessionError)
    async def session_error(_: Request, exc: SessionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    _add_call_page(app, service)
    app.openapi_schema = _without_422(app)
    return app


def _add_call_page(app: FastAPI, service: SessionService) -> None:
    """`/`, the page's SDK and demo mode's `/demo/*` (`page.py`)."""
    page = CallPage.load(service.settings.public_url)
    demo = DemoPolicy(service.settings.demo)

    @app.get("/", include_in_schema=False)
    async def call_page() -> Response:
        return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)

    @app.get(f"/{SDK_FILE}", include_in_schema=False)
    async def call_page_sdk() -> Response:
        if page.sdk is None:
            return JSONResponse({"detail": "the page's SDK is not installed (setup.sh)"}, 503)
        return FileResponse(
            page.sdk,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/demo/agents", responses=DEMO_ERRORS)
    async def demo_agents() -> list[AgentInfo]:
        """The agents the call page offers in demo mode (no key; 404 when demo mode is off)."""
        demo.check_enabled()
        return [_agent_info(service.agent(agent_id)) for agent_id in demo.settings.agents]

    @app.post(
        "/demo/sessions",
        status_code=201,
        responses={**DEMO_ERRORS, **CREATE_ERRORS},
    )
    async def demo_session(body: DemoSessionRequest, request: Request) -> VoiceSession:
        """A session for the call page in demo mode: no key, same-origin only, rate limited per
        client address and in all, `WORKER_DEMO_MAX_DURATION` long at most."""
        client = _client(request)
        demo.admit(body.agent_id, client, request.headers)
        agent = service.agent(body.agent_id)
        session = await service.create(
            SessionRequest(
                agent_id=agent.id,
                max_duration=min(demo.settings.max_duration, agent.limits.max_duration),
            ),
            owner=DEMO_OWNER,
        )
        logger.info("demo session %s for %s", session.session_id, client)
        return _voice_session(session)


def _voice_session(session: Session) -> VoiceSession:
    return VoiceSession(
        session_id=session.session_id,
        room_name=session.room_name,
        token=session.token,
        livekit_url=session.livekit_url,
        agent_id=session.agent.id,
        agent_name=session.agent.name,
        expires_at=session.expires_at,
    )


def _describe(exc: RequestValidationError) -> str:
    """The validation errors in one line, without echoing the values sent."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _without_422(app: FastAPI) -> dict[str, Any]:
    """The generated spec, validation errors documented as the 400 the API sends."""
    schema = app.openapi()
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": "An invalid request.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
    return schema


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
