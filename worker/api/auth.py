"""The session API's keys and per-key rate limit.

Keys come from `WORKER_API_KEYS` (comma-separated) and/or `WORKER_API_KEYS_FILE` (one per line,
`#` comments). They are compared in constant time and never logged: a key is known in logs and
limits by its fingerprint, the first 8 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from pathlib import Path

MIN_KEY_LEN = 16


class ApiKeyError(ValueError):
    """No usable keys; the message names the variable or file (never a key)."""


def fingerprint(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ApiKeyError(
                "the session API needs at least one key: set WORKER_API_KEYS (comma-separated) "
                "or WORKER_API_KEYS_FILE (one per line)"
            )
        if short := [fingerprint(k) for k in keys if len(k) < MIN_KEY_LEN]:
            raise ApiKeyError(
                f"API keys must be at least {MIN_KEY_LEN} characters: {', '.join(short)} "
                "(fingerprints) are shorter"
            )
        self._keys = [k.encode() for k in keys]

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiKeys:
        keys = [k.strip() for k in env.get("WORKER_API_KEYS", "").split(",") if k.strip()]
        if path := env.get("WORKER_API_KEYS_FILE"):
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ApiKeyError(
                    f"WORKER_API_KEYS_FILE={path}: cannot read it ({exc.strerror})"
                ) from None
            except UnicodeDecodeError:
                raise ApiKeyError(
                    f"WORKER_API_KEYS_FILE={path}: cannot read it (not UTF-8 text)"
                ) from None
            keys += [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]
        return cls(keys)

    def secrets(self) -> list[str]:
        """The keys themselves, for the log redactor only."""
        return [k.decode() for k in self._keys]

    def identify(self, presented: str) -> str | None:
        """The fingerprint of the key `presented` is, or None; constant time per stored key."""
        candidate = presented.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(key, candidate):
                found = key
        return fingerprint(found.decode()) if found is not None else None


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """0 if a request by `key` may go ahead now, else the seconds to wait."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) * 60 / self.per_minute
