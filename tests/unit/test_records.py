"""Call records' parts without a network: signatures as the reference library makes them, the
outbox's states, backoff, whether a call is recorded, and the settings, agent fields and start
checks that configure them."""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.harness import make_agent
from tests.standins.webhooks import SECRET
from worker.config import AgentRegistry, ConfigError
from worker.dispatch import recording_wanted
from worker.records.report import record_target, summarize_usage
from worker.records.signing import SecretError, secret_key, signature
from worker.records.store import Record, RecordStore
from worker.records.webhook import backoff, host
from worker.server import VoiceWorker, check_recordings, webhook_sender
from worker.settings import SettingsError, WebhookSettings, WorkerSettings

pytestmark = pytest.mark.unit


def test_the_signature_is_the_reference_librarys() -> None:
    body = '{"type":"call.ended","call_id":"c1","text":"café"}'.encode()
    at = 1_765_000_000
    expected = Webhook(SECRET).sign("c1.ended", dt.datetime.fromtimestamp(at, dt.UTC), body)
    assert signature(secret_key(SECRET), "c1.ended", at, body) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "must start with 'whsec_'"),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_c2hvcnQ=", "holds 5 bytes, at least 24"),
    ],
)
def test_a_secret_that_cannot_sign_says_why_without_itself(raw: str, problem: str) -> None:
    with pytest.raises(SecretError, match=problem) as caught:
        secret_key(raw)
    assert not raw or raw not in str(caught.value)


def record(record_id: str = "c1.ended", *, created: float = 100.0) -> Record:
    return Record(
        id=record_id, event="call.ended", url="http://h/x", body=b"{}", created=created,
        deadline=created + 60,
    )  # fmt: skip


def test_the_outbox_keeps_a_record_once_and_moves_it_only_forward(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "deep" / "outbox.sqlite3")
    assert store.add(record())
    assert not store.add(record())  # the same id again: kept once
    assert [r.id for r in store.due(100.0, 8)] == ["c1.ended"]
    store.retry_at("c1.ended", 130.0, "HTTP 503")
    assert store.due(129.0, 8) == []
    (due,) = store.due(130.0, 8)
    assert (due.attempts, due.last_error) == (1, "HTTP 503")
    store.delivered("c1.ended")
    assert store.due(1e12, 8) == []
    assert store.counts() == {"pending": 0, "delivered": 1, "expired": 0}
    store.add(record("c2.ended"))
    store.expired("c2.ended", "ClientConnectorError")
    assert store.counts() == {"pending": 0, "delivered": 1, "expired": 1}
    expired = store.get("c2.ended")
    assert expired is not None
    assert (expired.state, expired.last_error) == ("expired", "ClientConnectorError")
    assert (tmp_path / "deep" / "outbox.sqlite3").stat().st_mode & 0o077 == 0  # transcripts
    assert store.prune_delivered(before=0.0) == 0
    assert store.prune_delivered(before=time.time() + 1) == 1  # the delivered one, not the expired
    assert store.counts() == {"pending": 0, "delivered": 0, "expired": 1}


def test_a_second_process_sees_the_records_of_the_first(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    writer, reader = RecordStore(path), RecordStore(path)
    writer.add(record())
    writer.close()
    assert [r.id for r in reader.due(1e12, 8)] == ["c1.ended"]


def test_backoff_grows_with_jitter_under_its_cap() -> None:
    rng = random.Random(7).random
    delays = [backoff(n, base=1.0, cap=300.0, rng=rng) for n in range(12)]
    assert all(0.5 * min(300, 2**n) <= d <= min(300, 2**n) for n, d in enumerate(delays))
    assert max(delays) <= 300.0
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule


def test_logs_name_a_webhook_by_its_host_only() -> None:
    assert host("https://user:pw@hooks.acme.example:8443/calls?token=abc") == (
        "hooks.acme.example:8443"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_WEBHOOK_URL": "hooks.acme.example/calls"}, "WORKER_WEBHOOK_URL must be an http"),
        ({"WORKER_WEBHOOK_URL": "https://u:p@h.example/"}, "WORKER_WEBHOOK_URL must not hold"),
        (
            {"WORKER_WEBHOOK_EVENTS": "call.ended,call.missed"},
            "WORKER_WEBHOOK_EVENTS has call.missed",
        ),
        ({"WORKER_WEBHOOK_TIMEOUT": "0"}, "WORKER_WEBHOOK_TIMEOUT"),
        ({"WORKER_WEBHOOK_RETRY_FOR": "soon"}, "WORKER_WEBHOOK_RETRY_FOR='soon' is not a number"),
    ],
)
def test_bad_webhook_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_env(env)


def test_webhook_settings_from_the_environment(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env(
        {
            "WORKER_WEBHOOK_URL": "https://hooks.acme.example/calls",
            "WORKER_WEBHOOK_EVENTS": "call.started, call.ended",
            "WORKER_DATA_DIR": str(tmp_path),
        }
    ).webhook
    assert settings.events == ("call.started", "call.ended")
    assert settings.outbox == tmp_path / "webhooks.sqlite3"


def test_an_agent_names_its_own_webhook_or_none() -> None:
    env_url = WebhookSettings(url="https://hooks.acme.example/calls")
    assert record_target(make_agent(), WebhookSettings()) is None
    target = record_target(make_agent(), env_url)
    assert target is not None
    assert (target.url, target.events) == ("https://hooks.acme.example/calls", ("call.ended",))
    own = make_agent(
        webhook={"url": "https://crm.example/hook", "events": ["call.started", "call.ended"]}
    )
    target = record_target(own, env_url)
    assert target is not None
    assert (target.url, target.events) == (
        "https://crm.example/hook",
        ("call.started", "call.ended"),
    )
    assert record_target(make_agent(webhook={"enabled": False}), env_url) is None


def test_a_bad_agent_webhook_names_the_field() -> None:
    with pytest.raises((ConfigError, ValueError), match=r"webhook\.url"):
        make_agent(webhook={"url": "ftp://crm.example/hook"})


def test_usage_totals_what_a_backend_bills_by() -> None:
    models = [
        {"type": "llm_usage", "provider": "openai", "input_tokens": 900, "output_tokens": 40},
        {"type": "llm_usage", "provider": "openai", "input_tokens": 100, "output_tokens": 10},
        {"type": "tts_usage", "provider": "elevenlabs", "characters_count": 321},
        {"type": "stt_usage", "provider": "deepgram", "audio_duration": 12.3456},
    ]
    totals = summarize_usage(models)
    assert {k: v for k, v in totals.items() if k != "models"} == {
        "llm_input_tokens": 1000,
        "llm_output_tokens": 50,
        "tts_characters": 321,
        "stt_audio_seconds": 12.346,
    }


@pytest.mark.parametrize(
    ("recording", "metadata", "wanted"),
    [
        ({}, "", False),
        ({"enabled": True}, "", True),
        ({}, '{"voice_agent.recording": true}', True),
        ({"enabled": True}, '{"voice_agent.recording": false}', False),
        ({"per_session": False}, '{"voice_agent.recording": true}', False),  # logged, ignored
        ({"enabled": True}, '{"voice_agent.recording": "yes"}', True),  # not a bool: ignored
        ({}, "not json", False),
        (True, "", True),  # the shorthand: recording: true
    ],
)
def test_a_call_is_recorded_as_its_agent_and_its_dispatch_say(
    recording: dict[str, bool] | bool, metadata: str, wanted: bool
) -> None:
    assert recording_wanted(make_agent(recording=recording), metadata) is wanted


def test_recordings_settings_from_the_environment(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env(
        {"WORKER_DATA_DIR": str(tmp_path), "WORKER_RECORDINGS_S3_BUCKET": "calls"}
    ).recordings
    assert (settings.directory, settings.bucket) == (tmp_path / "recordings", "calls")
    with pytest.raises(SettingsError, match="WORKER_RECORDINGS_S3_ENDPOINT must be an http"):
        WorkerSettings.from_env({"WORKER_RECORDINGS_S3_ENDPOINT": "minio:9000"})


def worker_with(tmp_path: Path, env: dict[str, str], **agent: object) -> VoiceWorker:
    settings = WorkerSettings.from_env({"WORKER_DATA_DIR": str(tmp_path), **env})
    return VoiceWorker(settings, AgentRegistry([make_agent(**agent)]))


def test_a_webhook_without_a_usable_secret_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_with(tmp_path, {"WORKER_WEBHOOK_URL": "https://hooks.acme.example/calls"})
    monkeypatch.delenv("WORKER_WEBHOOK_SECRET", raising=False)
    with pytest.raises(SettingsError, match="WORKER_WEBHOOK_SECRET must start with 'whsec_'"):
        webhook_sender(worker)
    monkeypatch.setenv("WORKER_WEBHOOK_SECRET", SECRET)
    assert webhook_sender(worker) is not None
    assert webhook_sender(worker_with(tmp_path, {})) is None  # no URL: nothing to sign


def test_an_outbox_or_recordings_directory_that_cannot_be_written_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    monkeypatch.setenv("WORKER_WEBHOOK_SECRET", SECRET)
    worker = worker_with(blocked, {"WORKER_WEBHOOK_URL": "https://hooks.acme.example/calls"})
    with pytest.raises(SettingsError, match="WORKER_DATA_DIR: the webhook outbox"):
        webhook_sender(worker)
    with pytest.raises(SettingsError, match=r"WORKER_RECORDINGS_DIR: .* cannot be written"):
        check_recordings(worker)
    check_recordings(worker_with(tmp_path, {}))  # a writable one is fine
    # an agent that never records needs no directory
    check_recordings(worker_with(blocked, {}, recording={"per_session": False}))
