"""A call's tools as LiveKit function tools, every kind wrapped the same way.

The wrapper is where a tool call meets the voice call: the arguments are checked against the
tool's JSON Schema before anything runs; a tool still running after `tool_calls.filler_delay`
gets the agent's filler line, once (LiveKit's `RunContext.with_filler`, which waits until the
agent is not speaking); a failure reaches the LLM as a short error result, never a stack trace;
the result is cut to `tool_calls.max_result_chars` and stays a tool message (data for the LLM,
never instructions); and each call is reported (`started`, then `succeeded` or `failed` with its
duration) without its arguments or result, which can hold personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from livekit.agents import RunContext, StopResponse, ToolError, function_tool, llm
from livekit.agents.voice.speech_handle import SpeechHandle

from worker.config import AgentConfig
from worker.tools.failure import ToolFailedError
from worker.tools.http import HttpCall
from worker.tools.python import PythonCall, load_function
from worker.tools.spec import (
    EndCall,
    HttpTool,
    McpServer,
    PythonTool,
    SendDtmf,
    TransferCall,
    fill_secrets,
)

logger = logging.getLogger("worker.tools")

ToolStatus = Literal["started", "succeeded", "failed"]
Arguments = Mapping[str, Any]
Run = Callable[[Arguments, RunContext[Any]], Awaitable[str]]
MAX_MCP_ERROR_CHARS = 200
MCP_CONNECT_TIMEOUT = 10.0


@dataclass
class CallHooks:
    """What the tools need from their call."""

    end_call: Callable[[], None]
    """End the call once the current reply has played (`agent_ended`)."""
    check_transfer: Callable[[], None]
    """Raises `ToolFailedError` when the call cannot be transferred (no phone line)."""
    transfer: Callable[[str], Awaitable[None]]
    """Hand the caller to `to`; raises `ToolFailedError` when the transfer fails."""
    send_dtmf: Callable[[str], Awaitable[None]]
    report: Callable[[str, ToolStatus, float | None], None]
    """A tool call's name, status and (once over) seconds, for the client event."""
    say_aside: Callable[[str], SpeechHandle]
    """Say a line the caller hears (and the client sees) but the LLM's history does not hold."""
    filler: str


async def prompt_tools(agent: AgentConfig) -> list[llm.Tool]:
    """The tools as a call shows them to the LLM (for reading its prompt ahead of calls)."""
    return await CallTools(agent, {}).build(connect=False)


class CallTools:
    """The LiveKit tools of one call; `aclose` disconnects its MCP servers."""

    def __init__(self, agent: AgentConfig, env: Mapping[str, str]) -> None:
        self._agent = agent
        self._env = env
        self.hooks: CallHooks | None = None
        """Set once the call exists: the tools are built (MCP servers connected) while the
        caller is still joining, and only run later."""
        self._servers: list[Any] = []
        self.running = 0
        """Tool calls in progress (the idle timer waits while any is)."""

    async def build(self, *, connect: bool = True) -> list[llm.Tool]:
        """The tools, in the file's order; `connect=False`: without the MCP servers' (a prompt
        read ahead of calls, which must not need them)."""
        tools: list[llm.Tool] = []
        for spec in self._agent.tools:
            if isinstance(spec, HttpTool):
                tools.append(self._declared(spec, HttpCall(spec, self._env)))
            elif isinstance(spec, PythonTool):
                tools.append(self._declared(spec, PythonCall(spec, load_function(spec))))
            elif isinstance(spec, McpServer):
                tools += await self._mcp(spec) if connect else []
            elif isinstance(spec, EndCall):
                tools.append(self._end_call())
            elif isinstance(spec, TransferCall):
                tools.append(self._transfer(spec))
            elif isinstance(spec, SendDtmf):
                tools.append(self._send_dtmf())
        return tools

    async def aclose(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.aclose()

    @property
    def _hooks(self) -> CallHooks:
        assert self.hooks is not None, "a tool ran before its call was set up"
        return self.hooks

    # --- the wrapper ----------------------------------------------------------------------------

    def _declared(
        self, spec: HttpTool | PythonTool, run: Callable[[Arguments], Awaitable[str]]
    ) -> llm.Tool:
        schema = {"name": spec.name, "description": spec.description, "parameters": spec.parameters}
        return self.wrap(schema, lambda arguments, _: run(arguments))

    def wrap(self, schema: dict[str, Any], run: Run, *, filler: bool = True) -> llm.Tool:
        """`run` as a LiveKit tool described by `schema` (name, description, parameters);
        `filler`: the filler line may be said while it runs."""
        name = schema["name"]
        validator = Draft202012Validator(schema.get("parameters") or {"type": "object"})
        max_chars = self._agent.tool_calls.max_result_chars
        delay = self._agent.tool_calls.filler_delay

        async def invoke(raw_arguments: dict[str, Any], context: RunContext[Any]) -> str:
            started = time.monotonic()
            self.running += 1
            self._hooks.report(name, "started", None)
            status: ToolStatus = "failed"
            try:
                if error := next(iter(validator.iter_errors(raw_arguments)), None):
                    where = "/".join(map(str, error.absolute_path)) or "the arguments"
                    logger.warning(
                        "tool %s: invalid arguments at %s (%s)", name, where, error.validator
                    )
                    raise ToolFailedError(f"invalid arguments: {where}: {error.message}"[:300])
                # the filler is kept out of the history: between a tool's call and its result
                # it would read to the LLM as the answer already given
                line = functools.partial(_aside, self._hooks.say_aside, self._hooks.filler)
                waiting = (
                    context.with_filler(line, delay=delay) if filler else contextlib.nullcontext()
                )
                async with waiting:
                    result = await run(raw_arguments, context)
                status = "succeeded"
                if len(result) > max_chars:
                    result = result[:max_chars] + f" [cut: the result was {len(result)} characters]"
                return result
            except ToolFailedError as exc:
                logger.warning("tool %s failed: %s", name, exc)
                raise ToolError(f"{name} failed: {exc}") from None
            except StopResponse:  # done, and nothing more to say (a transfer)
                status = "succeeded"
                raise
            except ToolError:
                raise
            # user code or a library: the type only (its text may hold secrets)
            except Exception as exc:
                logger.warning("tool %s raised %s", name, type(exc).__name__)
                logger.debug("tool %s traceback", name, exc_info=True)
                raise ToolError(f"{name} failed") from None
            finally:
                self.running -= 1
                self._hooks.report(name, status, time.monotonic() - started)

        return function_tool(invoke, raw_schema=schema)

    # --- MCP ------------------------------------------------------------------------------------

    async def _mcp(self, spec: McpServer) -> list[llm.Tool]:
        """The allowed tools of an MCP server; a server that cannot be reached costs the call
        its tools, never the call (logged)."""
        from livekit.agents.llm.mcp import MCPServerHTTP

        server = MCPServerHTTP(
            fill_secrets(spec.url, self._env),
            transport_type=spec.transport,
            allowed_tools=spec.allow,
            headers={k: fill_secrets(v, self._env) for k, v in spec.headers.items()},
            timeout=spec.timeout,
            client_session_timeout_seconds=spec.timeout,
            tool_result_resolver=_mcp_text,
        )
        self._servers.append(server)
        try:
            await asyncio.wait_for(server.initialize(), MCP_CONNECT_TIMEOUT)
            offered = await asyncio.wait_for(server.list_tools(), MCP_CONNECT_TIMEOUT)
        except Exception as exc:
            logger.warning(
                "MCP server %s: not reachable (%s): the call goes on without its tools",
                _host(spec.url),
                type(exc).__name__,
            )
            return []
        found = {tool.info.name: tool for tool in offered}
        if missing := sorted(set(spec.allow) - set(found)):
            logger.warning("MCP server %s offers no tool %s", _host(spec.url), ", ".join(missing))
        return [
            self.wrap(dict(found[name].info.raw_schema), _mcp_call(found[name]))
            for name in spec.allow
            if name in found
        ]

    # --- built-ins ------------------------------------------------------------------------------

    def _end_call(self) -> llm.Tool:
        @function_tool
        async def end_call(context: RunContext[Any]) -> None:
            """End the phone call. Call this only after you said goodbye: when the caller says
            goodbye, asks to hang up, or the conversation is clearly over."""
            await context.wait_for_playout()  # the goodbye that came with this call plays out
            # end once this turn is complete, so its transcript reaches the client first
            context.speech_handle.add_done_callback(lambda _: self._hooks.end_call())
            raise StopResponse()  # no further reply after hanging up

        return end_call

    def _transfer(self, spec: TransferCall) -> llm.Tool:
        async def transfer(_: Arguments, context: RunContext[Any]) -> str:
            hooks = self._hooks
            hooks.check_transfer()  # before the line: a call without a phone line says nothing
            await context.wait_for_playout()  # what the LLM said with the call plays first
            if spec.line:
                await hooks.say_aside(spec.line)
            await hooks.transfer(spec.to)
            raise StopResponse()  # the caller is with a person now: nothing more to say

        schema = {
            "name": "transfer_call",
            "description": spec.description,
            "parameters": _NO_ARGUMENTS,
        }
        return self.wrap(schema, transfer, filler=False)

    def _send_dtmf(self) -> llm.Tool:
        async def send_dtmf(arguments: Arguments, _: RunContext[Any]) -> str:
            await self._hooks.send_dtmf(str(arguments["digits"]))
            return "sent"

        schema = {
            "name": "send_dtmf",
            "description": "Press keys on the phone keypad, to answer an automated phone menu.",
            "parameters": {
                "type": "object",
                "properties": {"digits": {"type": "string", "pattern": "^[0-9*#]{1,32}$"}},
                "required": ["digits"],
            },
        }
        return self.wrap(schema, send_dtmf, filler=False)


_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def _aside(say: Callable[[str], SpeechHandle], line: str, _step: int) -> SpeechHandle:
    return say(line)


def _mcp_text(context: Any) -> str:
    """An MCP result as the LLM reads it: its text parts (LiveKit's default is their JSON)."""
    texts = [
        part.text for part in context.result.content if isinstance(getattr(part, "text", None), str)
    ]
    return "\n".join(texts) or "done"


def _mcp_call(tool: Any) -> Run:
    async def run(arguments: Arguments, _: RunContext[Any]) -> str:
        try:
            result = await tool(raw_arguments=dict(arguments))
        except ToolError as exc:  # the server's own error text: untrusted, kept short
            raise ToolFailedError(str(exc)[:MAX_MCP_ERROR_CHARS]) from None
        return str(result)

    return run


def _host(url: str) -> str:
    return urlsplit(url).netloc
