"""`http` tools against a real local backend (tests/standins/tools.py): what the request carries,
how each kind of bad answer is refused, and that no failure says a secret or a URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import ToolError
from livekit.agents.llm import RawFunctionTool
from livekit.agents.utils import http_context
from livekit.agents.voice.speech_handle import SpeechHandle

from tests.harness import make_agent
from tests.standins.tools import API_KEY_HEADER, ToolServerStandIn
from worker.tools.calls import CallHooks, CallTools
from worker.tools.failure import ToolFailedError
from worker.tools.http import HttpCall
from worker.tools.spec import HttpTool

pytestmark = pytest.mark.providers

SECRET = "acme-secret-key-7781"
ENV = {"ACME_API_KEY": SECRET}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_number": {"type": "string", "pattern": "^[0-9A-Za-z./ ]{1,12}$"}},
    "required": ["order_number"],
}


@pytest.fixture
async def backend() -> AsyncIterator[ToolServerStandIn]:
    """The order API, and the HTTP session a call's job gives its tools."""
    async with ToolServerStandIn(api_key=SECRET) as server, http_context.open():
        yield server


def order_tool(backend: ToolServerStandIn, **fields: Any) -> HttpTool:
    spec: dict[str, Any] = {
        "kind": "http",
        "name": "order_status",
        "description": "Look up an order's delivery status by its number.",
        "parameters": ORDER_SCHEMA,
        "url": f"{backend.url}/orders/{{order_number}}?source=voice",
        "headers": {API_KEY_HEADER: "${ACME_API_KEY}"},
        "result": "order",
        "timeout": 1,
        **fields,
    }
    return HttpTool.model_validate(spec)


async def test_the_request_carries_the_arguments_and_the_secret_and_the_result_is_its_part(
    backend: ToolServerStandIn,
) -> None:
    result = await HttpCall(order_tool(backend), ENV)({"order_number": "427"})
    assert result == '{"number": "427", "status": "shipped", "arrives": "Friday"}'
    (request,) = backend.of_kind("request")
    assert request.path == "/orders/427"
    assert request.query == {"source": "voice"}
    assert request.headers[API_KEY_HEADER] == SECRET


async def test_an_argument_cannot_reach_another_path(backend: ToolServerStandIn) -> None:
    with pytest.raises(ToolFailedError, match="HTTP 404"):
        await HttpCall(order_tool(backend), ENV)({"order_number": "../tickets"})
    (request,) = backend.of_kind("request")
    # one encoded segment ("..%2Ftickets"): the order route got it, as the server decoded it
    assert request.path == "/orders/../tickets"


async def test_a_json_body_gets_the_arguments_as_values(backend: ToolServerStandIn) -> None:
    tool = HttpTool.model_validate(
        {
            "kind": "http",
            "name": "open_ticket",
            "description": "Open a support ticket.",
            "method": "POST",
            "url": f"{backend.url}/tickets",
            "headers": {API_KEY_HEADER: "${ACME_API_KEY}"},
            "parameters": {
                "type": "object",
                "properties": {"summary": {"type": "string"}, "priority": {"type": "integer"}},
                "required": ["summary"],
            },
            "body": {"summary": "{summary}", "priority": "{priority}", "channel": "voice"},
        }
    )
    result = await HttpCall(tool, ENV)({"summary": "Broken mug", "priority": 2})
    assert '"ticket": "T-1001"' in result
    assert backend.of_kind("request")[0].body == {
        "summary": "Broken mug",
        "priority": 2,
        "channel": "voice",
    }
    await HttpCall(tool, ENV)({"summary": "No priority"})
    assert backend.of_kind("request")[1].body == {"summary": "No priority", "channel": "voice"}


@pytest.mark.parametrize(
    ("fault", "message", "requests"),
    [
        ("slow", "did not answer within 1 s", 2),
        ("status", "the service failed (HTTP 503)", 2),
        ("refused", "refused the request (HTTP 401)", 1),
        ("huge", "larger than 65536 bytes", 1),
        ("malformed", "not usable JSON", 1),
        ("redirect", "redirect (HTTP 302), which is not followed", 1),
    ],
)
async def test_a_bad_answer_is_a_short_failure_without_secrets(
    backend: ToolServerStandIn, fault: str, message: str, requests: int
) -> None:
    """Timeouts and 5xx are tried again (`retries: 1`), other failures are not; no failure
    holds the key, the URL or the host."""
    env = dict(ENV)
    if fault == "slow":
        backend.faults.latency = 1.5
    elif fault == "status":
        backend.faults.status = 503
    elif fault == "refused":
        env["ACME_API_KEY"] = "wrong"
    elif fault == "malformed":
        backend.faults.malformed = True
    else:
        setattr(backend, fault, True)
    with pytest.raises(ToolFailedError) as failure:
        await HttpCall(order_tool(backend, retries=1), env)({"order_number": "427"})
    assert message in str(failure.value)
    for secret in (SECRET, backend.url, "127.0.0.1", "169.254"):
        assert secret not in str(failure.value)
    assert len(backend.of_kind("request")) == requests


async def test_arguments_are_checked_before_any_request(backend: ToolServerStandIn) -> None:
    agent = make_agent(
        tools=[order_tool(backend).model_dump(mode="json", exclude_none=True)],
    )
    events: list[tuple[str, str]] = []
    hooks = CallHooks(
        end_call=lambda: None,
        check_transfer=lambda: None,
        transfer=_never,
        send_dtmf=_never,
        report=lambda name, status, _: events.append((name, status)),
        say_aside=_never_said,
        filler="One moment.",
    )
    tools = CallTools(agent, ENV)
    tools.hooks = hooks
    (tool,) = await tools.build()
    assert isinstance(tool, RawFunctionTool)
    with pytest.raises(ToolError, match="invalid arguments: order_number"):
        await tool(raw_arguments={"order_number": "4; DROP TABLE"}, context=None)
    with pytest.raises(ToolError, match="invalid arguments: the arguments"):
        await tool(raw_arguments={}, context=None)
    assert backend.of_kind("request") == []
    assert events == [("order_status", "started"), ("order_status", "failed")] * 2


async def _never(_: str) -> None:
    raise AssertionError("not called")


def _never_said(_: str) -> SpeechHandle:
    raise AssertionError("not said")
