"""The shipped agents' tools as a call builds them: the concierge's python function (from
examples/) and its MCP server (the examples' spa system, on the `mcp` package's server), the
support agent's order lookup; what each offers the LLM, and what the function answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.hotel_spa_mcp import server as spa_server
from tests.standins.mcp import McpStandIn
from worker.config import load_agent_file
from worker.tools.calls import CallTools
from worker.tools.python import PythonCall, load_function
from worker.tools.spec import McpServer, PythonTool

pytestmark = pytest.mark.providers

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


async def concierge_tools(spa_url: str) -> list[str]:
    """The names a concierge call offers the LLM, its spa server at `spa_url`."""
    concierge = load_agent_file(PROMPTS / "concierge.md")
    tools = [
        spec.model_copy(update={"url": spa_url}) if isinstance(spec, McpServer) else spec
        for spec in concierge.tools
    ]
    call_tools = CallTools(concierge.model_copy(update={"tools": tools}), {})
    try:
        return [tool.id for tool in await call_tools.build()]
    finally:
        await call_tools.aclose()


async def test_the_concierge_offers_its_function_and_only_the_allowed_spa_tools() -> None:
    async with McpStandIn(spa_server) as spa:
        offered = await concierge_tools(spa.url)
    assert offered == ["rooms_available", "spa_slots", "book_spa", "transfer_call", "end_call"]
    assert "guest_folio" not in offered  # on the server, not in the allow-list


async def test_the_concierge_function_answers_by_the_stay() -> None:
    (spec,) = [
        t for t in load_agent_file(PROMPTS / "concierge.md").tools if isinstance(t, PythonTool)
    ]
    call = PythonCall(spec, load_function(spec))
    weekday = json.loads(await call({"check_in": "2026-12-14", "nights": 2}))  # Mon, Tue nights
    weekend = json.loads(await call({"check_in": "2026-12-17", "nights": 2}))  # Thu, Fri nights
    assert [r["room"] for r in weekday["available"]] == ["queen room", "king room", "harbor suite"]
    assert [r["room"] for r in weekend["available"]] == ["harbor suite"]
    assert "error" in json.loads(await call({"check_in": "next friday", "nights": 1}))


async def test_the_concierge_without_its_spa_server_keeps_its_other_tools() -> None:
    offered = await concierge_tools("http://127.0.0.1:9/mcp")  # nothing listens there
    assert offered == ["rooms_available", "transfer_call", "end_call"]
