"""`python -m worker api` against clients that trickle bytes: each request has a deadline."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.api.conftest import API_KEY, api_process, livekit_in_thread

pytestmark = pytest.mark.timeout(120)


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def closed_by_server(sock: socket.socket, trickle: bytes, within: float) -> bytes:
    """Send `trickle` a byte every 0.2 s until the server answers or closes; what it said."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    for byte in trickle:
        if time.monotonic() > deadline:
            break
        try:
            sock.sendall(bytes([byte]))
            if answer := sock.recv(4096):
                return answer
            return b"closed"
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return b"closed"
    return b""


def test_trickled_headers_and_bodies_are_cut_off(tmp_path: Path) -> None:
    """Was: 180 sockets trickling bytes held for 80 s, no timeout."""
    headers = f"GET /v1/agents HTTP/1.1\r\nHost: api\r\nX-API-Key: {API_KEY}\r\n" * 20
    body_start = (
        f"POST /v1/voice-sessions HTTP/1.1\r\nHost: api\r\nX-API-Key: {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    ).encode()
    with (
        livekit_in_thread() as livekit,
        api_process(livekit, tmp_path / "api.log", WORKER_API_REQUEST_TIMEOUT="1") as url,
    ):
        slow_headers = [connect(url) for _ in range(5)]
        for sock in slow_headers:
            assert closed_by_server(sock, headers.encode(), within=30) == b"closed"
        slow_body = connect(url)
        slow_body.sendall(body_start)
        answer = closed_by_server(slow_body, b" " * 500, within=30)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        for sock in [*slow_headers, slow_body]:
            sock.close()
    assert "no request within 1s" in (tmp_path / "api.log").read_text()
