"""Access-token checks: the same rules livekit-server applies, so a wrong token fails here too.

Signature, issuer (the API key) and expiry are checked by `livekit.api.TokenVerifier`; the grants
each endpoint needs are checked here. Failures raise `AuthError` with the HTTP status (401: the
token is not valid, 403: it is valid but lacks a grant) and a short reason for the response body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import jwt
from aiohttp import web
from livekit import api
from livekit.api.access_token import Claims

Grant = Literal["room_join", "room_create", "room_admin", "room_list", "room_record", "agent"]


class AuthError(Exception):
    def __init__(self, status: Literal[401, 403], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.reason)


def token_from_request(request: web.BaseRequest) -> str:
    """The JWT from `Authorization: Bearer` or, for browsers' WebSockets, `?access_token=`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    token = request.query.get("access_token", "")
    if not token:
        raise AuthError(401, "missing access token")
    return token


@dataclass(frozen=True)
class TokenAuth:
    """Verifies tokens against one API key/secret pair."""

    api_key: str
    api_secret: str

    def verify(
        self, token: str, *, require: Iterable[Grant] = (), room: str | None = None
    ) -> Claims:
        """The token's claims if it is valid and holds every grant in `require`.

        `room` restricts room-scoped grants (`room_join`, `room_admin`) to that room; without it,
        `room_join` still needs the token to name a room, as the server takes the room from there.
        """
        verifier = api.TokenVerifier(self.api_key, self.api_secret)
        try:
            claims = verifier.verify(token)
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "unknown API key") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "invalid token signature") from None
        except jwt.PyJWTError as e:
            raise AuthError(401, f"invalid token: {e}") from None
        required = tuple(require)
        grants = claims.video or api.VideoGrants()
        for grant in required:
            if not getattr(grants, grant):
                raise AuthError(403, f"token lacks the {grant} grant")
            if grant in ("room_join", "room_admin"):
                if room is not None and grants.room != room:
                    raise AuthError(403, f"token's {grant} grant is not for room {room!r}")
                if not grants.room:
                    raise AuthError(403, f"token's {grant} grant names no room")
        if "room_join" in required and not claims.identity:
            raise AuthError(403, "token has no identity")
        return claims

    def verify_request(
        self, request: web.BaseRequest, *, require: Iterable[Grant] = (), room: str | None = None
    ) -> Claims:
        """`verify` on the request's token."""
        return self.verify(token_from_request(request), require=require, room=room)
