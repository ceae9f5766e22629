"""A LiveKit-compatible server for the end-to-end tests (a fixture only; see README.md)."""

from tests.lkserver.auth import AuthError, TokenAuth
from tests.lkserver.config import ServerConfig, load_config
from tests.lkserver.server import LiveKitTestServer, Participant, Room

__all__ = [
    "AuthError",
    "LiveKitTestServer",
    "Participant",
    "Room",
    "ServerConfig",
    "TokenAuth",
    "load_config",
]
