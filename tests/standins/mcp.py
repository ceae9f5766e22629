"""An MCP server built on the `mcp` package's own server (`MCPServer`, streamable HTTP at `/mcp`),
served by uvicorn on an ephemeral local port: Acme's CRM, with one tool an agent may use
(`lookup_customer`) and one it must never see (`delete_account`). It records each call."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Self

import uvicorn
from mcp.server.mcpserver import MCPServer


class McpStandIn:
    """Acme's CRM by default; `server`: any other MCP server (the examples' spa system)."""

    def __init__(self, server: MCPServer[Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.latency = 0.0
        if server is not None:
            self._serve(server)
            return
        server = MCPServer("acme-crm")

        @server.tool()
        async def lookup_customer(phone: str) -> str:
            """Find a customer by phone number: their name and plan."""
            self.calls.append(("lookup_customer", {"phone": phone}))
            await asyncio.sleep(self.latency)
            if phone.endswith("0100"):
                return "Jordan Lee, premium plan since 2021"
            return "no customer with that number"

        @server.tool()
        async def delete_account(customer_id: str) -> str:
            """Delete a customer's account for good."""
            self.calls.append(("delete_account", {"customer_id": customer_id}))
            return "deleted"

        self._serve(server)

    def _serve(self, server: MCPServer[Any]) -> None:
        self._app = server.streamable_http_app()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/mcp"

    async def __aenter__(self) -> Self:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # noqa: ASYNC110  (uvicorn sets a flag, no event)
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self._task is not None
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)
