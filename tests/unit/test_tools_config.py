"""`tools:` in agent files: every malformed declaration stops the worker naming the file, the
tool and the field; secrets and Python functions are checked at start, not during a call."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import agent_fields, make_agent
from worker.config import AgentRegistry, ConfigError, load_agent_file
from worker.providers import check_registry, resolve
from worker.tools.check import secret_values
from worker.tools.failure import ToolFailedError
from worker.tools.python import PythonCall, load_function
from worker.tools.spec import PythonTool

pytestmark = pytest.mark.unit

HTTP = {
    "kind": "http",
    "name": "order_status",
    "description": "Look up an order.",
    "url": "https://api.acme.example/orders/{order_number}",
    "parameters": {
        "type": "object",
        "properties": {"order_number": {"type": "string"}},
        "required": ["order_number"],
    },
}


def agent_file(tmp_path: Path, tools: Any) -> Path:
    fields = agent_fields(tools=tools)
    body = fields.pop("instructions")
    path = tmp_path / "agent.md"
    path.write_text(f"---\n{yaml.safe_dump(fields)}---\n{body}\n", encoding="utf-8")
    return path


def problems(tmp_path: Path, tools: Any) -> list[str]:
    path = agent_file(tmp_path, tools)
    with pytest.raises(ConfigError) as error:
        load_agent_file(path)
    assert all(p.startswith(f"{path}: ") for p in error.value.problems)
    return [p.removeprefix(f"{path}: ") for p in error.value.problems]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"url": "https://{host}/orders/{order_number}"}, "tools[0]: url: the host is fixed"),
        ({"url": "ftp://api.acme.example/x"}, "tools[0]: url: must be an http:// or https://"),
        ({"url": "https://me:pw@api.acme.example/"}, "tools[0]: url: no credentials in the URL"),
        ({"url": "https://api.acme.example/{nope}"}, "tools[0]: url: {nope} is not one of"),
        ({"url": "https://api.acme.example/{a.b}"}, "must be a plain {name}"),
        ({"headers": {"X-Key": "{secret}"}}, "tools[0]: headers.X-Key: {secret} is not one of"),
        ({"method": "GET", "body": {"a": 1}}, "tools[0]: body: a GET request has no body"),
        ({"name": "end_call"}, "tools[0].name: 'end_call' is a built-in tool"),
        ({"name": "order status"}, "tools[0].name: String should match pattern"),
        ({"parameters": {"type": "string"}}, "tools[0].parameters: must be a JSON Schema with"),
        (
            {"parameters": {"type": "object", "properties": {"n": {"type": "strin"}}}},
            "tools[0].parameters: not a valid JSON Schema at properties/n/type",
        ),
        (
            {"parameters": {"type": "object", "properties": {}, "required": ["n"]}},
            "required parameter 'n' is not in properties",
        ),
        ({"timeout": 0}, "tools[0].timeout: Input should be greater than 0"),
        ({"retries": 9}, "tools[0].retries: Input should be less than or equal to 3"),
        ({"result": "order..status"}, "tools[0].result: String should match pattern"),
        ({"surprise": True}, "tools[0].surprise: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_http_tool_names_its_field(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    found = problems(tmp_path, [{**HTTP, **change}])
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ([{"kind": "teleport"}], "tools[0]: Input tag 'teleport' found using 'kind'"),
        ([{"kind": "mcp", "url": "http://localhost/mcp", "allow": []}], "tools[0].allow: List"),
        ([{"kind": "mcp", "url": "localhost/mcp", "allow": ["a"]}], "tools[0].url: String"),
        ([{"kind": "transfer_call", "to": "555"}], "tools[0].to: '555' is neither a number"),
        (
            [{"kind": "python", "name": "x", "description": "x", "function": "no colon"}],
            "tools[0].function: String should match pattern",
        ),
        ([HTTP, HTTP], "tools: tools[1]: 'order_status' is also tools[0]"),
        ([{"kind": "end_call"}, {"kind": "end_call"}], "'end_call' is also tools[0]"),
        ("order_status", "tools: Input should be a valid list"),
    ],
)
def test_a_malformed_tool_list_names_its_entry(tmp_path: Path, tools: Any, expected: str) -> None:
    found = problems(tmp_path, tools)
    assert any(expected in p for p in found), found


def test_without_tools_an_agent_keeps_end_call_and_with_them_only_those(tmp_path: Path) -> None:
    assert [t.kind for t in make_agent().tools] == ["end_call"]
    agent = load_agent_file(
        agent_file(tmp_path, [HTTP, {"kind": "transfer_call", "to": "tel:+15551234567"}])
    )
    assert [t.kind for t in agent.tools] == ["http", "transfer_call"]


def test_a_missing_secret_stops_start_naming_the_variable(tmp_path: Path) -> None:
    tool = {**HTTP, "headers": {"Authorization": "Bearer ${ACME_API_KEY}"}}
    registry = AgentRegistry([load_agent_file(agent_file(tmp_path, [tool]))])
    keys = {"DEEPGRAM_API_KEY": "d", "OPENAI_API_KEY": "o", "ELEVEN_API_KEY": "e"}
    for allow_local in (False, True):
        found = resolve(registry, keys, allow_local=allow_local).problems
        assert found == [
            f"{tmp_path / 'agent.md'}: tools[0] (order_status): headers.Authorization: needs "
            "ACME_API_KEY in the environment"
        ]
    assert resolve(registry, {**keys, "ACME_API_KEY": "k"}, allow_local=False).problems == []


# --- python tools -------------------------------------------------------------------------------


def lookup(order_number: str, verbose: bool = False) -> dict[str, str]:
    return {"order": order_number, "status": "shipped", "verbose": str(verbose)}


async def slow_lookup(order_number: str) -> str:
    await asyncio.sleep(5)
    return order_number


LOOP_RAN = threading.Event()


def blocking_lookup(order_number: str) -> str:
    """Blocks until the event loop has run something: on the loop itself it never would."""
    if not LOOP_RAN.wait(10):
        return "the event loop was blocked"
    return f"order {order_number}: shipped"


def python_tool(function: str, **fields: Any) -> PythonTool:
    return PythonTool.model_validate(
        {
            "kind": "python",
            "name": "lookup",
            "description": "Look up an order.",
            "function": function,
            "parameters": HTTP["parameters"],
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("function", "parameters", "expected"),
    [
        ("tests.unit.no_such_module:f", None, "cannot import tests.unit.no_such_module"),
        (f"{__name__}:nothing", None, "has no function 'nothing'"),
        (f"{__name__}:lookup", {"type": "object", "properties": {}}, "requires order_number"),
        (
            f"{__name__}:lookup",
            {
                "type": "object",
                "properties": {"order_number": {"type": "string"}, "colour": {"type": "string"}},
                "required": ["order_number"],
            },
            "takes no argument colour",
        ),
    ],
)
def test_a_python_tool_that_cannot_run_stops_start(
    tmp_path: Path, function: str, parameters: dict[str, Any] | None, expected: str
) -> None:
    tool: dict[str, Any] = {"kind": "python", "name": "lookup", "description": "x"}
    tool |= {"function": function, "parameters": parameters or HTTP["parameters"]}
    registry = AgentRegistry([load_agent_file(agent_file(tmp_path, [tool]))])
    found = check_registry(registry)
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'agent.md'}: tools[0] (lookup): function: ")
    assert expected in found[0]


async def test_python_tools_run_with_their_timeout_and_off_the_event_loop() -> None:
    spec = python_tool(f"{__name__}:lookup")
    result = await PythonCall(spec, load_function(spec))({"order_number": "427"})
    assert result == '{"order": "427", "status": "shipped", "verbose": "False"}'

    spec = python_tool(f"{__name__}:blocking_lookup", timeout=15)

    async def loop_runs() -> None:
        await asyncio.sleep(0)
        LOOP_RAN.set()

    result, _ = await asyncio.gather(
        PythonCall(spec, load_function(spec))({"order_number": "1"}), loop_runs()
    )
    assert result == "order 1: shipped", "the function ran in a thread while the loop went on"

    spec = python_tool(f"{__name__}:slow_lookup", timeout=0.1)
    with pytest.raises(ToolFailedError, match=r"did not finish within 0\.1 s"):
        await PythonCall(spec, load_function(spec))({"order_number": "1"})


def test_a_tools_secret_is_redacted_whatever_its_name(tmp_path: Path) -> None:
    """The log redactor knows secrets by their names (`*_KEY`...); a tool's `${VAR}` is one
    whatever it is called."""
    tool = {**HTTP, "headers": {"X-Crm": "${CRM_CREDENTIAL}"}}
    registry = AgentRegistry([load_agent_file(agent_file(tmp_path, [tool]))])
    env = {"CRM_CREDENTIAL": "crm-7d1f0a9e3b5c", "UNRELATED": "value-not-secret"}
    assert secret_values(registry, env) == ["crm-7d1f0a9e3b5c"]
