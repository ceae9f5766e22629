"""Worker settings from the environment (`.env.example` lists every variable).

Secrets (API keys) are not kept here: providers read them from the environment when a call
builds them, so no settings object can leak one into a log line or a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_AGENT_NAME = "voice-agent"
MAX_PORT = 65535
DRAIN_MARGIN = 60
"""Seconds the drain timeout must exceed the longest call limit by (goodbye, teardown)."""


@dataclass(frozen=True)
class VADSettings:
    """Process-wide Silero settings: the model is loaded once per process, not per call."""

    min_silence: float = 0.3
    """Seconds of silence before Silero reports the end of speech. Turn ends are gated on it, so
    it is the floor of the answer latency; agents can wait longer with `endpointing.min_delay`."""
    min_speech: float = 0.05
    activation_threshold: float = 0.5
    prefix_padding: float = 0.3


class SettingsError(ValueError):
    """An environment variable with an unusable value; the message names it."""


WEBHOOK_EVENTS = ("call.started", "call.ended")
DEFAULT_DATA_DIR = Path("~/.local/share/voice-worker").expanduser()


@dataclass(frozen=True)
class WebhookSettings:
    """Where call records go (`worker/records`). The signing secret is not kept here: the main
    process reads `WORKER_WEBHOOK_SECRET` when it starts delivering."""

    url: str | None = None
    """`WORKER_WEBHOOK_URL`; agents may set their own (`webhook.url`)."""
    events: tuple[str, ...] = ("call.ended",)
    timeout: float = 10.0
    """Seconds per delivery attempt."""
    retry_for: float = 86400.0
    """Seconds a record is retried for before it is kept as expired."""
    keep_delivered: float = 7 * 86400.0
    """Seconds a delivered record stays in the outbox (it holds a transcript)."""
    data_dir: Path = DEFAULT_DATA_DIR
    """The outbox (`webhooks.sqlite3`) and, by default, the recordings."""

    @property
    def outbox(self) -> Path:
        return self.data_dir / "webhooks.sqlite3"


@dataclass(frozen=True)
class RecordingSettings:
    """Where call recordings go (`worker/records/recording.py`); S3 credentials are boto3's own
    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, a profile or a role), never kept here."""

    directory: Path = DEFAULT_DATA_DIR / "recordings"
    """`WORKER_RECORDINGS_DIR`: every recording is written here first."""
    bucket: str | None = None
    """`WORKER_RECORDINGS_S3_BUCKET`: uploaded there, and the local file removed."""
    prefix: str = ""
    endpoint_url: str | None = None
    """`WORKER_RECORDINGS_S3_ENDPOINT`: an S3-compatible service (MinIO, R2, ...)."""


def check_service_url(url: str) -> str | None:
    """What is wrong with the URL of a service the worker sends to (webhooks, S3), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username or parts.password:
        return "must not hold credentials"
    return None


CALLS_PER_CPU = 5
"""A cloud-path call costs about 0.12 of a core (bench.capacity: README, Capacity); five a core
is 0.6 of it, leaving the rest for the greetings and answers that come at once, and for the
CPU limit to act before latency does."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings:
    agent_name: str = DEFAULT_AGENT_NAME
    """LiveKit agent name for explicit dispatch (`LIVEKIT_AGENT_NAME`)."""
    prompts_dir: Path = Path(__file__).resolve().parent.parent / "prompts"
    max_calls: int = field(default_factory=lambda: CALLS_PER_CPU * usable_cpus())
    """Concurrent calls per worker; further dispatches are declined. Default: `CALLS_PER_CPU`
    for each CPU the worker may run on."""
    cpu_limit: float | None = 0.9
    """Fraction of CPU above which dispatches are declined; None disables the check."""
    idle_processes: int = 2
    initialize_timeout: float = 20.0
    drain_timeout: int | None = None
    """Seconds a SIGTERM'd worker waits for calls to end; default: longest max_duration + margin."""
    health_port: int = 8081
    prometheus_port: int | None = None
    vad: VADSettings = field(default_factory=VADSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    recordings: RecordingSettings = field(default_factory=RecordingSettings)
    greetings: Path | None = DEFAULT_DATA_DIR / "greetings"
    """`WORKER_GREETING_CACHE`: where each agent's rendered greeting is kept (`call/greetings.py`);
    None (`off`): every call renders its own."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        defaults = cls()
        return cls(
            agent_name=env.get("LIVEKIT_AGENT_NAME") or defaults.agent_name,
            prompts_dir=Path(env.get("WORKER_PROMPTS_DIR") or defaults.prompts_dir),
            max_calls=reader.integer("WORKER_MAX_CALLS", defaults.max_calls, minimum=1),
            cpu_limit=reader.fraction_or_off("WORKER_CPU_LIMIT", defaults.cpu_limit),
            idle_processes=reader.integer(
                "WORKER_IDLE_PROCESSES", defaults.idle_processes, minimum=0
            ),
            initialize_timeout=reader.number("WORKER_INIT_TIMEOUT", defaults.initialize_timeout),
            drain_timeout=reader.optional_integer("WORKER_DRAIN_TIMEOUT"),
            health_port=reader.port("WORKER_HEALTH_PORT", defaults.health_port),
            prometheus_port=reader.optional_integer("WORKER_PROMETHEUS_PORT"),
            vad=VADSettings(
                min_silence=reader.number("WORKER_VAD_MIN_SILENCE", defaults.vad.min_silence),
                min_speech=reader.number("WORKER_VAD_MIN_SPEECH", defaults.vad.min_speech),
                activation_threshold=reader.number(
                    "WORKER_VAD_THRESHOLD", defaults.vad.activation_threshold
                ),
                prefix_padding=reader.number(
                    "WORKER_VAD_PREFIX_PADDING", defaults.vad.prefix_padding
                ),
            ),
            webhook=(webhook := _webhook(env, reader)),
            recordings=_recordings(env, webhook.data_dir),
            greetings=_greetings(env, webhook.data_dir),
        )

    def resolved_drain_timeout(self, longest_call: int) -> int:
        """The drain timeout to use: explicit values must cover the longest call plus a margin."""
        minimum = longest_call + DRAIN_MARGIN
        if self.drain_timeout is None:
            return minimum
        if self.drain_timeout < minimum:
            raise SettingsError(
                f"WORKER_DRAIN_TIMEOUT / --drain-timeout is {self.drain_timeout}s but must be at "
                f"least {minimum}s (the longest agent max_duration, {longest_call}s, plus "
                f"{DRAIN_MARGIN}s), or a draining worker could cut calls off"
            )
        return self.drain_timeout


@dataclass(frozen=True)
class DemoSettings:
    """Demo mode of the call page (`api/page.py`): the agents anyone who can reach the page may
    call without a key (`WORKER_DEMO_AGENTS`, ids). Off when empty, the default."""

    agents: tuple[str, ...] = ()
    rate_limit: int = 3
    """Demo calls per minute per client address (`WORKER_DEMO_RATE_LIMIT`)."""
    total_limit: int = 20
    """Demo calls per minute in all (`WORKER_DEMO_TOTAL_LIMIT`): many addresses cannot add up."""
    max_duration: int = 300
    """Seconds a demo call may last, at most the agent's own limit (`WORKER_DEMO_MAX_DURATION`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DemoSettings:
        reader = _Reader(env)
        defaults = cls()
        agents = env.get("WORKER_DEMO_AGENTS", "")
        return cls(
            agents=tuple(a.strip() for a in agents.split(",") if a.strip()),
            rate_limit=reader.integer("WORKER_DEMO_RATE_LIMIT", defaults.rate_limit, minimum=1),
            total_limit=reader.integer("WORKER_DEMO_TOTAL_LIMIT", defaults.total_limit, minimum=1),
            max_duration=reader.integer(
                "WORKER_DEMO_MAX_DURATION", defaults.max_duration, minimum=10
            ),
        )


@dataclass(frozen=True)
class ApiSettings:
    """`python -m worker api`: the session API (`session_api.py`). Its keys are not kept here
    (`api_auth.ApiKeys` reads them), nor is the LiveKit secret."""

    host: str = "0.0.0.0"  # noqa: S104 - a service, usually behind a load balancer
    port: int = 8000
    livekit_url: str = ""
    """Where the API reaches LiveKit's server APIs (`LIVEKIT_URL`)."""
    public_url: str = ""
    """The URL clients connect to (`LIVEKIT_PUBLIC_URL`, default `LIVEKIT_URL`)."""
    agent_name: str = DEFAULT_AGENT_NAME
    """The worker's agent name to dispatch (`LIVEKIT_AGENT_NAME`)."""
    token_ttl: int = 600
    """Seconds a caller's token stays valid for joining (a joined caller stays connected)."""
    empty_timeout: int = 120
    """Seconds LiveKit keeps a session's room with nobody in it."""
    max_participants: int = 3
    """The caller, the agent and one rejoin of the caller's."""
    rate_limit: int = 60
    """Session requests per minute per API key."""
    failed_auth_limit: int = 30
    """Requests with a missing or unknown key one client address may send a minute."""
    request_timeout: float = 10.0
    """Seconds a client has for a request's headers, and again for its body."""
    max_connections: int = 200
    """Connections served at once; more are answered 503."""
    cors_origins: tuple[str, ...] = ()
    dispatch_wait: float = 5.0
    """Seconds to wait for a worker to accept the dispatch before answering 503."""
    demo: DemoSettings = field(default_factory=DemoSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        defaults = cls()
        livekit_url = env.get("LIVEKIT_URL", "")
        origins = env.get("WORKER_API_CORS_ORIGINS", "")
        return cls(
            host=env.get("WORKER_API_HOST") or defaults.host,
            port=reader.port("WORKER_API_PORT", defaults.port),
            livekit_url=livekit_url,
            public_url=env.get("LIVEKIT_PUBLIC_URL") or _websocket_url(livekit_url),
            agent_name=env.get("LIVEKIT_AGENT_NAME") or defaults.agent_name,
            token_ttl=reader.integer("WORKER_API_TOKEN_TTL", defaults.token_ttl, minimum=10),
            empty_timeout=reader.integer(
                "WORKER_API_EMPTY_TIMEOUT", defaults.empty_timeout, minimum=1
            ),
            max_participants=reader.integer(
                "WORKER_API_MAX_PARTICIPANTS", defaults.max_participants, minimum=2
            ),
            rate_limit=reader.integer("WORKER_API_RATE_LIMIT", defaults.rate_limit, minimum=1),
            failed_auth_limit=reader.integer(
                "WORKER_API_FAILED_AUTH_LIMIT", defaults.failed_auth_limit, minimum=1
            ),
            request_timeout=reader.number("WORKER_API_REQUEST_TIMEOUT", defaults.request_timeout),
            max_connections=reader.integer(
                "WORKER_API_MAX_CONNECTIONS", defaults.max_connections, minimum=1
            ),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            dispatch_wait=reader.number("WORKER_API_DISPATCH_WAIT", defaults.dispatch_wait),
            demo=DemoSettings.from_env(env),
        )


def _webhook(env: Mapping[str, str], reader: _Reader) -> WebhookSettings:
    defaults = WebhookSettings()
    url = env.get("WORKER_WEBHOOK_URL") or None
    if url is not None and (problem := check_service_url(url)):
        raise SettingsError(f"WORKER_WEBHOOK_URL {problem}")
    events = tuple(e.strip() for e in env.get("WORKER_WEBHOOK_EVENTS", "").split(",") if e.strip())
    if unknown := [e for e in events if e not in WEBHOOK_EVENTS]:
        raise SettingsError(
            f"WORKER_WEBHOOK_EVENTS has {', '.join(unknown)}: the events are "
            + ", ".join(WEBHOOK_EVENTS)
        )
    retry_for = reader.number("WORKER_WEBHOOK_RETRY_FOR", defaults.retry_for)
    timeout = reader.number("WORKER_WEBHOOK_TIMEOUT", defaults.timeout)
    keep = reader.number("WORKER_WEBHOOK_KEEP_DELIVERED", defaults.keep_delivered)
    if timeout <= 0 or retry_for <= 0:
        raise SettingsError("WORKER_WEBHOOK_TIMEOUT and WORKER_WEBHOOK_RETRY_FOR must be positive")
    data_dir = env.get("WORKER_DATA_DIR")
    return WebhookSettings(
        url=url,
        events=events or defaults.events,
        timeout=timeout,
        retry_for=retry_for,
        keep_delivered=keep,
        data_dir=Path(data_dir).expanduser() if data_dir else defaults.data_dir,
    )


def _recordings(env: Mapping[str, str], data_dir: Path) -> RecordingSettings:
    directory = env.get("WORKER_RECORDINGS_DIR")
    endpoint = env.get("WORKER_RECORDINGS_S3_ENDPOINT") or None
    if endpoint is not None and (problem := check_service_url(endpoint)):
        raise SettingsError(f"WORKER_RECORDINGS_S3_ENDPOINT {problem}")
    return RecordingSettings(
        directory=Path(directory).expanduser() if directory else data_dir / "recordings",
        bucket=env.get("WORKER_RECORDINGS_S3_BUCKET") or None,
        prefix=env.get("WORKER_RECORDINGS_S3_PREFIX", ""),
        endpoint_url=endpoint,
    )


def _greetings(env: Mapping[str, str], data_dir: Path) -> Path | None:
    value = env.get("WORKER_GREETING_CACHE", "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else data_dir / "greetings"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def number(self, name: str, default: float) -> float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value < 0:
            raise SettingsError(f"{name}={raw!r} must not be negative")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default, minimum=0)
        if value > MAX_PORT:
            raise SettingsError(f"{name}={value} is not a port (0-{MAX_PORT})")
        return value

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name, 0, minimum=1) if self._env.get(name) else None

    def fraction_or_off(self, name: str, default: float | None) -> float | None:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        if raw.lower() == "off":
            return None
        value = self.number(name, 0.0)
        if not 0 < value <= 1:
            raise SettingsError(f"{name}={raw!r} must be a fraction in (0, 1] or 'off'")
        return value


def _websocket_url(url: str) -> str:
    """`url` as clients connect to it: LiveKit's server APIs take http(s), clients ws(s)."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            return ws + url.removeprefix(http)
    return url
