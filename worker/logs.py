"""Logging guards: secret values never reach a log line, whoever logs them.

The worker itself never logs keys, but plugins and libraries format errors (URLs, headers,
reprs) that could. A filter on every handler masks the values of secret-looking environment
variables in the message, the arguments and the rendered traceback.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD)", re.IGNORECASE)
MIN_SECRET_LEN = 6  # shorter values ("dev", "1") would mask ordinary words
MASK = "[redacted]"


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)  # longest first: no partial masking


class SecretRedactor(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def redact(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for key, value in list(vars(record).items()):
            if (
                isinstance(value, str)
                and key not in ("msg", "exc_text")
                and self._pattern.search(value)
            ):
                setattr(record, key, self.redact(value))
        return True


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds fixed context (ids) to every record, keeping each call's own `extra` too (the
    standard adapter replaces it before Python 3.13)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def install_redaction(env: Mapping[str, str] | None = None, extra: list[str] | None = None) -> None:
    """Add the redactor to every handler of the root logger (idempotent); `extra` are further
    secrets that are not environment values of their own (API keys read from a file)."""
    secrets = secret_values(env) + [s for s in extra or [] if len(s) >= MIN_SECRET_LEN]
    redactor = SecretRedactor(sorted(set(secrets), key=len, reverse=True))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretRedactor) for f in handler.filters):
            handler.addFilter(redactor)
