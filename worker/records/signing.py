"""Webhook signatures in the Standard Webhooks format (standardwebhooks.com), so receivers can
verify them with a maintained library in any language, or ten lines of their own.

Each request carries `webhook-id` (the idempotency key), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The secret is
`whsec_` followed by base64 of at least 24 random bytes (`WORKER_WEBHOOK_SECRET`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
MIN_SECRET_BYTES = 24


class SecretError(ValueError):
    """A webhook secret that cannot sign; the message never holds the secret."""


def secret_key(raw: str) -> bytes:
    """The HMAC key of a `whsec_...` secret."""
    if not raw.startswith(SECRET_PREFIX):
        raise SecretError(f"must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(raw.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"is not {SECRET_PREFIX} followed by base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(f"holds {len(key)} bytes, at least {MIN_SECRET_BYTES} are needed")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }
