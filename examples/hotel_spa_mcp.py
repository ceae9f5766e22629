"""A stand-in for the Harbor Hotel's spa booking system as an MCP server, for trying the concierge
agent's `mcp` tool (prompts/concierge.md):

    python examples/hotel_spa_mcp.py        # streamable HTTP on http://127.0.0.1:8098/mcp

Built on the `mcp` package's own server. The agent's allow-list lets it see `spa_slots` and
`book_spa`, never `guest_folio`. Without this server running, the concierge's calls go on
without the spa tools (one warning per call). Not part of the worker.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

SLOTS = ["10:00", "11:30", "14:00", "16:30"]
server: MCPServer[Any] = MCPServer("harbor-spa")
booked: set[tuple[str, str]] = set()


@server.tool()
def spa_slots(day: str) -> str:
    """The free massage slots on a day (YYYY-MM-DD)."""
    free = [time for time in SLOTS if (day, time) not in booked]
    return f"free on {day}: {', '.join(free)}" if free else f"no free slots on {day}"


@server.tool()
def book_spa(day: str, time: str, guest_name: str) -> str:
    """Book a massage slot for a guest."""
    if time not in SLOTS or (day, time) in booked:
        return f"{time} on {day} is not free"
    booked.add((day, time))
    return f"booked {time} on {day} for {guest_name}"


@server.tool()
def guest_folio(room_number: str) -> str:
    """A guest's bill, card on file included: never for a voice agent."""
    return f"room {room_number}: card ending 4242"


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=8098, log_level="warning")
