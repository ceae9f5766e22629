"""Secrets never reach a log line, whoever logs them."""

from __future__ import annotations

import io
import logging

from worker.logs import ContextLogger, SecretRedactor, install_redaction, secret_values

ENV = {
    "OPENAI_API_KEY": "sk-live-abcdef123456",
    "LIVEKIT_API_SECRET": "super-secret-value-0123456789",
    "SHORT_KEY": "abc",
    "WORKER_MAX_CALLS": "25",
}


def capture(redactor: SecretRedactor) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(detail)s"))
    handler.addFilter(redactor)
    log = logging.getLogger("test.redaction")
    log.handlers = [handler]
    log.propagate = False
    return log, stream


def test_only_secret_looking_values_are_collected() -> None:
    assert set(secret_values(ENV)) == {ENV["OPENAI_API_KEY"], ENV["LIVEKIT_API_SECRET"]}


def test_secrets_are_masked_in_messages_arguments_extras_and_tracebacks() -> None:
    log, stream = capture(SecretRedactor(secret_values(ENV)))
    key = ENV["OPENAI_API_KEY"]
    log.warning("calling with key %s", key, extra={"detail": f"url?k={key}"})
    try:
        raise RuntimeError(f"bad secret {ENV['LIVEKIT_API_SECRET']}")
    except RuntimeError:
        log.exception("failed", extra={"detail": "-"})
    output = stream.getvalue()
    assert ENV["OPENAI_API_KEY"] not in output
    assert ENV["LIVEKIT_API_SECRET"] not in output
    assert output.count("[redacted]") == 3
    assert "calling with key [redacted]" in output


def test_installation_is_idempotent() -> None:
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        install_redaction(ENV)
        install_redaction(ENV)
        assert sum(isinstance(f, SecretRedactor) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


def test_context_logger_keeps_both_its_context_and_each_call_extra() -> None:
    log, stream = capture(SecretRedactor([]))
    log.handlers[0].setFormatter(logging.Formatter("%(message)s %(call_id)s %(detail)s"))
    log.setLevel(logging.INFO)
    ContextLogger(log, {"call_id": "CA_1"}).info("ended", extra={"detail": "caller_left"})
    assert stream.getvalue() == "ended CA_1 caller_left\n"
