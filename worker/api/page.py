"""The call page at `/`: a browser client for the agents, on the official JavaScript SDK.

The page holds no secret. It joins a call in one of two ways:
- a link `/#url=<LiveKit URL>&token=<caller token>&agent=<name>`, built by the operator's backend
  from `POST /v1/voice-sessions` (the fragment never leaves the browser; the token is signed,
  short-lived and for that one room);
- demo mode, off unless `WORKER_DEMO_AGENTS` lists agents: the page asks `POST /demo/sessions`
  without a key, same-origin only, limited per client address and overall (`DemoPolicy`).

The SDK (`livekit-client`, pinned in `web/package.json`) is copied next to the page by
`setup.sh` (and the Dockerfile), and served from here: never a CDN at run time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from worker.api.auth import RateLimiter
from worker.api.sessions import SessionError
from worker.config import AgentRegistry
from worker.routing import RoutingError
from worker.settings import DemoSettings, SettingsError

logger = logging.getLogger("worker.api")

WEB_DIR = Path(__file__).parent / "web"
SDK_FILE = "livekit-client.umd.js"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class CallPage:
    """The page's HTML with the headers it is served with, and the SDK's path (None: missing)."""

    html: bytes
    headers: Mapping[str, str]
    sdk: Path | None

    @classmethod
    def load(cls, livekit_url: str, directory: Path = WEB_DIR) -> CallPage:
        html = (directory / "index.html").read_text("utf-8")
        hashes: dict[str, list[str]] = {"script": [], "style": []}
        for kind, body in _INLINE.findall(html):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            hashes[kind].append(f"'sha256-{digest}'")
        policy = "; ".join(
            (
                "default-src 'none'",
                f"script-src 'self' {' '.join(hashes['script'])}",
                f"style-src {' '.join(hashes['style'])}",
                f"connect-src 'self' {' '.join(livekit_origins(livekit_url))}",
                "media-src 'self' blob: mediastream:",
                "img-src 'self' data:",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            )
        )
        sdk = directory / SDK_FILE
        if not sdk.is_file():
            logger.warning(
                "the call page's SDK %s is missing: run setup.sh (it needs npm); "
                "/ answers with that until it is there",
                sdk,
            )
        return cls(
            html=html.encode(),
            headers={
                "Content-Security-Policy": policy,
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Permissions-Policy": "microphone=(self), camera=()",
                "Cache-Control": "no-store",
            },
            sdk=sdk if sdk.is_file() else None,
        )


def livekit_origins(url: str) -> list[str]:
    """What the page's SDK connects to for `url`: its WebSocket and HTTP origins (it checks a
    refused connection over HTTP), and for LiveKit Cloud the regional hosts it may pick."""
    parts = urlsplit(url)
    if not parts.netloc:
        return []
    secure = parts.scheme in ("wss", "https")
    origins = [f"{'wss' if secure else 'ws'}://{parts.netloc}"]
    origins.append(f"{'https' if secure else 'http'}://{parts.netloc}")
    if (parts.hostname or "").endswith(".livekit.cloud"):
        origins += ["wss://*.livekit.cloud", "https://*.livekit.cloud"]
    return origins


class DemoRefusedError(SessionError):
    """A demo request the API refuses, with its own status (answered like every `SessionError`)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class DemoPolicy:
    """Who may start a demo call: a same-origin page, for an allowed agent, within the per-client
    and overall rate limits. Off (every demo path 404) without `settings.agents`."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self._per_client = RateLimiter(settings.rate_limit)
        self._overall = RateLimiter(settings.total_limit)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.agents)

    def check_enabled(self) -> None:
        if not self.enabled:
            raise DemoRefusedError(404, "demo mode is off (WORKER_DEMO_AGENTS is not set)")

    def admit(self, agent_id: str, client: str, headers: Mapping[str, str]) -> None:
        """Raise `DemoRefusedError` unless this request may start a call with `agent_id`."""
        self.check_enabled()
        if not same_origin(headers):
            logger.warning("refused a demo session from %s: not from the call page", client)
            raise DemoRefusedError(403, "demo sessions are only for the call page on this site")
        if agent_id not in self.settings.agents:
            raise DemoRefusedError(404, f"agent {agent_id[:64]!r} is not offered in demo mode")
        if wait := self._per_client.allow(client):
            logger.warning("rate limited demo sessions from %s", client)
            raise DemoRefusedError(429, f"too many demo calls from here: retry in {wait:.0f} s")
        if wait := self._overall.allow("*"):
            logger.warning("rate limited demo sessions overall")
            raise DemoRefusedError(429, f"too many demo calls: retry in {wait:.0f} s")


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a browser sent this from a page of this site. Browsers set `Sec-Fetch-Site`
    (and `Origin` on every POST); a script outside one can forge both, which is why demo mode
    is rate limited too: this only keeps other sites' pages from spending it."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = headers.get("origin")
    return origin is not None and urlsplit(origin).netloc == headers.get("host")


def resolve_demo_agents(settings: DemoSettings, registry: AgentRegistry) -> DemoSettings:
    """`settings` with its agents as full ids; `SettingsError` for one the registry lacks, so a
    typo stops the API at start rather than offering nothing."""
    try:
        agents = tuple(registry.get(agent_id).id for agent_id in settings.agents)
    except RoutingError as exc:
        raise SettingsError(f"WORKER_DEMO_AGENTS: {exc}") from None
    return replace(settings, agents=tuple(dict.fromkeys(agents)))
