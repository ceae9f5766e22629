"""What the agent files' tools need from the worker, checked at start: every `${VAR}` they name
is in the environment, and every `python` tool's function imports with the declared signature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from worker.tools.python import PythonToolError, load_function
from worker.tools.spec import HttpTool, McpServer, PythonTool, secrets, tool_name

if TYPE_CHECKING:
    from worker.config import AgentRegistry


def missing_secrets(registry: AgentRegistry, env: Mapping[str, str]) -> list[str]:
    """`file: tools[i] (name): field: needs VAR in the environment`, for each one missing."""
    problems = []
    for agent in registry:
        for i, tool in enumerate(agent.tools):
            if not isinstance(tool, HttpTool | McpServer):
                continue
            for where, var in secrets(tool.templates()):
                if not env.get(var):
                    problems.append(
                        f"{agent.source}: tools[{i}] ({tool_name(tool)}): {where}: needs {var} "
                        "in the environment"
                    )
    return problems


def secret_values(registry: AgentRegistry, env: Mapping[str, str]) -> list[str]:
    """The values of every `${VAR}` the tools use, whatever its name: for the log redactor,
    which otherwise knows secrets by their names (`*_KEY`, `*_TOKEN`...)."""
    return [
        env[var]
        for agent in registry
        for tool in agent.tools
        if isinstance(tool, HttpTool | McpServer)
        for _, var in secrets(tool.templates())
        if env.get(var)
    ]


def unusable_functions(registry: AgentRegistry) -> list[str]:
    """`file: tools[i] (name): function: why`, for each `python` tool that cannot run."""
    problems = []
    for agent in registry:
        for i, tool in enumerate(agent.tools):
            if isinstance(tool, PythonTool):
                try:
                    load_function(tool)
                except PythonToolError as exc:
                    problems.append(f"{agent.source}: tools[{i}] ({tool.name}): function: {exc}")
    return problems
