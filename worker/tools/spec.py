"""`tools:` in an agent file: what each kind declares, checked when the file is loaded.

What can be checked from the file alone is checked here (names, JSON Schemas, URL templates whose
host is fixed, placeholders that name parameters); what needs the environment or the Python path
(`${VAR}` secrets, a `python` tool's function) is checked at start by `worker.tools.check`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TOOL_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
"""OpenAI's function names allow `-` too; Qwen's tool template and Python identifiers do not."""
BUILT_IN = ("end_call", "transfer_call", "send_dtmf")
SECRET = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""`${VAR}`: a value from the worker's environment, never written in the file."""
MAX_TOOLS = 32
MAX_SCHEMA_DEPTH = 8

Seconds = Annotated[float, Field(gt=0, le=60)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Declared(_Strict):
    """A tool the file describes to the LLM itself."""

    name: str = Field(pattern=TOOL_NAME)
    description: str = Field(min_length=1, max_length=1000)
    """What the LLM reads to decide when to call it: say when, not only what."""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """The arguments as a JSON Schema object; the LLM's arguments are checked against it before
    anything runs."""
    timeout: Seconds = 5.0

    @field_validator("name")
    @classmethod
    def _not_built_in(cls, value: str) -> str:
        if value in BUILT_IN:
            raise ValueError(f"{value!r} is a built-in tool: declare it as `kind: {value}`")
        return value

    @field_validator("parameters")
    @classmethod
    def _json_schema_object(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            where = "/".join(map(str, exc.path)) or "the schema"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError("must be a JSON Schema with `type: object` (the named arguments)")
        if _depth(value) > MAX_SCHEMA_DEPTH:
            raise ValueError(f"nested more than {MAX_SCHEMA_DEPTH} levels deep")
        for name in value.get("properties", {}):
            if not str(name).isidentifier():
                raise ValueError(f"parameter name {name!r} must be an identifier")
        for name in value.get("required", []):
            if name not in value.get("properties", {}):
                raise ValueError(f"required parameter {name!r} is not in properties")
        return value

    def parameter_names(self) -> set[str]:
        return set(self.parameters.get("properties", {}))


class HttpTool(_Declared):
    """A request to an HTTP API the file names: the LLM fills the parameters, never the host."""

    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=1, max_length=2000)
    """`https://api.example.com/orders/{order_number}`: parameters are URL-encoded into the
    path and query; the scheme, host and port are fixed by the file."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Values may hold `${VAR}` secrets and `{parameter}` placeholders."""
    body: dict[str, Any] | None = None
    """A JSON body: a string that is exactly `{parameter}` becomes the argument's value (number,
    list...), other strings are templates like the headers."""
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    """Attempts after a timeout, a connection failure or a 5xx (0: a POST is never repeated)."""
    max_response_bytes: Annotated[int, Field(ge=64, le=1_000_000)] = 65_536
    result: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
    """What the LLM sees of a JSON response: a dotted path (`order.status`, `items.0.name`);
    default the whole body."""

    @model_validator(mode="after")
    def _templates(self) -> HttpTool:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url: must be an http:// or https:// URL with a host")
        if "{" in parts.netloc or "$" in parts.netloc:
            raise ValueError("url: the host is fixed by the file: no placeholder or secret in it")
        if parts.username or parts.password:
            raise ValueError("url: no credentials in the URL: send them in headers as ${VAR}")
        names = self.parameter_names()
        for where, text in self.templates():
            for name in placeholders(text, where, secrets=True):
                if name not in names:
                    raise ValueError(f"{where}: {{{name}}} is not one of the parameters")
        if self.body is not None and self.method == "GET":
            raise ValueError("body: a GET request has no body")
        return self

    def templates(self) -> list[tuple[str, str]]:
        """Every text that holds placeholders or secrets, with its field."""
        found = [("url", self.url)]
        found += [(f"headers.{key}", value) for key, value in self.headers.items()]
        found += _strings(self.body, "body")
        return found


class PythonTool(_Declared):
    """A Python function for what a file cannot express; imported and checked at start."""

    kind: Literal["python"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`package.module:function`, importable from the worker's Python path. An `async def` runs
    on the event loop; a plain `def` runs in a thread (it may block)."""


class McpServer(_Strict):
    """An MCP server over HTTP, through LiveKit Agents' MCP client; only `allow`ed tools."""

    kind: Literal["mcp"]
    url: str = Field(pattern=r"^https?://\S+$", max_length=2000)
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    allow: list[Annotated[str, Field(pattern=TOOL_NAME)]] = Field(min_length=1, max_length=64)
    """The server's tools this agent may call; any other it offers is never shown to the LLM."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Values may hold `${VAR}` secrets."""
    timeout: Seconds = 5.0

    @model_validator(mode="after")
    def _fixed_host(self) -> McpServer:
        if "$" in urlsplit(self.url).netloc:
            raise ValueError("url: the host is fixed by the file: no secret in it")
        return self

    def templates(self) -> list[tuple[str, str]]:
        return [("url", self.url)] + [(f"headers.{k}", v) for k, v in self.headers.items()]


class EndCall(_Strict):
    """The agent hangs up after its goodbye (`agent_ended`)."""

    kind: Literal["end_call"]


class TransferCall(_Strict):
    """A SIP caller is handed to a person: LiveKit's `TransferSIPParticipant`, after `line`."""

    kind: Literal["transfer_call"]
    to: str = Field(max_length=300)
    """A number (`tel:+15551234567`) or a SIP URI (`sip:support@pbx.example.com`)."""
    line: str | None = Field(default="Let me connect you with a colleague. One moment.")
    """Spoken before the transfer (null: none)."""
    description: str = Field(
        default="Transfer the caller to a human colleague. Call this when the caller asks for a "
        "person, or when you cannot help them.",
        min_length=1,
        max_length=1000,
    )

    @field_validator("to")
    @classmethod
    def _number_or_sip_uri(cls, value: str) -> str:
        if not _TRANSFER_TARGET.fullmatch(value):
            raise ValueError(
                f"{value!r} is neither a number (tel:+15551234567) nor a SIP URI "
                "(sip:support@pbx.example.com)"
            )
        return value


_TRANSFER_TARGET = re.compile(r"tel:\+?[0-9]{3,15}|sips?:[^\s@]+@[^\s@]+")


class SendDtmf(_Strict):
    """Key presses into the call, for the agent that calls an IVR."""

    kind: Literal["send_dtmf"]


ToolSpec = Annotated[
    HttpTool | PythonTool | McpServer | EndCall | TransferCall | SendDtmf,
    Field(discriminator="kind"),
]
DEFAULT_TOOLS: tuple[ToolSpec, ...] = (EndCall(kind="end_call"),)
"""An agent file without `tools:` keeps the one tool agents always had."""


class ToolCalls(_Strict):
    """How tool calls sound in a call (the lines are in `messages`)."""

    filler_delay: Annotated[float, Field(ge=0, le=10)] = 1.5
    """Seconds a tool may take before the agent says `messages.tool_filler`, once."""
    max_result_chars: Annotated[int, Field(ge=100, le=20_000)] = 2000
    """What of a tool's result the LLM reads (longer results are cut, and say so)."""


def check_tools(tools: list[ToolSpec]) -> list[ToolSpec]:
    """Names are unique, built-ins given once (`tools[i]` in the message)."""
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        names = tool.allow if isinstance(tool, McpServer) else [tool_name(tool)]
        for name in names:
            if name in seen:
                raise ValueError(f"tools[{i}]: {name!r} is also tools[{seen[name]}]")
            seen[name] = i
    return tools


def tool_name(tool: ToolSpec) -> str:
    return (
        tool.kind if isinstance(tool, EndCall | TransferCall | SendDtmf | McpServer) else tool.name
    )


def placeholders(text: str, where: str = "text", *, secrets: bool = False) -> list[str]:
    """The `{name}` placeholders of a template, the agent file's and the tools' (`{{`/`}}` are
    literal braces; with `secrets`, `${VAR}` is a secret): plain names only, so an untrusted
    value can never reach an attribute or index lookup."""
    names = []
    try:
        parsed = list(string.Formatter().parse(SECRET.sub("", text) if secrets else text))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write literal braces as '{{{{' and '}}}}')") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{where}: placeholder {{{name}}} must be a plain {{name}}")
        names.append(name)
    return names


def secrets(templates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(field, variable) of every `${VAR}` in `templates`."""
    return [(where, var) for where, text in templates for var in SECRET.findall(text)]


def fill_secrets(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${VAR}` replaced by its value (checked present at start)."""
    return SECRET.sub(lambda match: env.get(match.group(1), ""), text)


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string in a JSON template, with its path."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return []


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
