"""`python -m worker`: LiveKit's worker commands, plus `agents` and `route`.

`start`, `dev`, `console`, `connect` and `download-files` are LiveKit Agents' own commands (same
options, same semantics); they are built only when invoked, after the agent configs load and
validate, so `--help`, `agents` and `route` stay fast and need no keys.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from dotenv import load_dotenv

from .config import AgentRegistry, ConfigError, load_registry
from .routing import RoutingError, parse_room
from .settings import SettingsError, WorkerSettings

PROG = "python -m worker"

app = typer.Typer(
    name=PROG,
    help="A LiveKit voice-agent worker: routes rooms named agent_{agent_id}_{user_id}_{timestamp} "
    "to the agents configured in prompts/.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
AGENT_HELP = "Agent id (or unique 8+ character prefix) to run: these rooms have no routable name."
AgentOption = Annotated[
    str | None, typer.Option("--agent", envvar="WORKER_AGENT_ID", help=AGENT_HELP)
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> WorkerSettings:
    try:
        return WorkerSettings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def _registry(settings: WorkerSettings) -> AgentRegistry:
    try:
        return load_registry(settings.prompts_dir)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def agents(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the configured agents and the providers each stage will use."""
    from .providers import SPECS, check_registry, stage_entries

    registry = _registry(_settings())
    if problems := check_registry(registry, os.environ, need_keys=False):
        fail(str(ConfigError(problems)))
    rows = []
    for agent in registry:
        stages: dict[str, list[str]] = {"stt": [], "llm": [], "tts": []}
        for where, entry in stage_entries(agent):
            label = f"{entry.provider}:{entry.model or 'default'}"
            if not os.environ.get(SPECS[entry.provider].key_env):
                label += f" (needs {SPECS[entry.provider].key_env})"
            stages[where.split("[")[0]].append(label)
        rows.append({"id": agent.id, "name": agent.name, "file": agent.source, **stages})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['id']}  {row['name']}  ({row['file']})")
        for stage in ("stt", "llm", "tts"):
            typer.echo(f"    {stage}: {' -> '.join(row[stage])}")


@app.command()
def route(room_name: Annotated[str, typer.Argument(help="The LiveKit room name.")]) -> None:
    """Show which agent a room name routes to (JSON), or why it does not (exit code 2)."""
    registry = _registry(_settings())
    try:
        room = parse_room(room_name)
        agent = registry.get(room.agent_id)
    except RoutingError as exc:
        fail(str(exc), code=2)
    result = {
        "agent_id": agent.id,
        "agent_name": agent.name,
        "user_id": room.user_id,
        "timestamp": room.timestamp_ms,
    }
    typer.echo(json.dumps(result))


def _livekit_command(name: str, summary: str, *, takes_agent: bool) -> None:
    if takes_agent:

        def command(ctx: typer.Context, agent: AgentOption = None) -> None:
            run_livekit(name, ctx.args, agent=agent)

    else:

        def command(ctx: typer.Context) -> None:  # type: ignore[misc]
            run_livekit(name, ctx.args)

    command.__doc__ = summary
    app.command(name, context_settings=_PASS_THROUGH)(command)


_livekit_command(
    "start", "Run the worker in production mode (LiveKit Agents `start`).", takes_agent=False
)
_livekit_command(
    "dev", "Run the worker in development mode (LiveKit Agents `dev`).", takes_agent=False
)
_livekit_command(
    "console", "Talk to one agent from this terminal (LiveKit Agents `console`).", takes_agent=True
)
_livekit_command(
    "connect", "Join one existing room as an agent (LiveKit Agents `connect`).", takes_agent=True
)
_livekit_command(
    "download-files",
    "Download plugin model files (LiveKit Agents `download-files`).",
    takes_agent=False,
)


def run_livekit(name: str, args: list[str], *, agent: str | None = None) -> None:
    """Load and check everything a worker needs, then hand over to LiveKit's command."""
    from livekit.agents.cli._legacy import _build_cli

    from .providers import check_registry, import_plugins
    from .server import VoiceWorker, create_server

    settings = _settings()
    if name == "dev":
        settings = replace(settings, cpu_limit=None)  # a laptop's CPU is no reason to decline
    help_only = "--help" in args
    if name == "start":
        args, drain = _pop_option(args, "--drain-timeout")
        if drain is not None:
            if not drain.isdigit():
                fail(f"--drain-timeout {drain!r} is not a whole number of seconds")
            settings = replace(settings, drain_timeout=int(drain))
    if help_only:
        if name in ("console", "connect"):
            typer.echo(f"{PROG} {name} also takes --agent ID (env WORKER_AGENT_ID): {AGENT_HELP}\n")
        registry = AgentRegistry([])
    else:
        registry = _registry(settings)
        if problems := check_registry(registry, os.environ, need_keys=name != "download-files"):
            fail(str(ConfigError(problems)))
    pinned: str | None = None
    if name in ("console", "connect") and not help_only:
        if not agent:
            fail(f"{name} needs --agent ID (or WORKER_AGENT_ID): its room name cannot be routed")
        try:
            pinned = registry.get(agent).id
        except RoutingError as exc:
            fail(str(exc))
    import_plugins(registry)
    # LiveKit's forkserver would otherwise load its local turn-detector weights (~244 MB) into
    # every worker; no agent here uses them (turn detection is pinned to vad or stt)
    os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
    try:
        server = create_server(VoiceWorker(settings, registry, pinned_agent=pinned))
    except SettingsError as exc:
        fail(str(exc))
    _build_cli(server)(args=[name, *args], prog_name=PROG)


def _pop_option(args: list[str], option: str) -> tuple[list[str], str | None]:
    """Remove `option VALUE` or `option=VALUE` from `args`."""
    rest: list[str] = []
    value: str | None = None
    items = iter(args)
    for arg in items:
        if arg == option:
            value = next(items, "")
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def main(argv: list[str] | None = None) -> None:
    # a .env in the working directory, for development; the real environment wins
    load_dotenv(Path.cwd() / ".env", override=False)
    app(args=argv if argv is not None else sys.argv[1:], prog_name=PROG)
