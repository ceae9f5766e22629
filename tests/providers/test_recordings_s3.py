"""Recordings uploaded to S3-compatible storage: boto3 against moto in server mode (a real HTTP
S3 endpoint on a local port, not a mock of the client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from livekit.agents import AgentSession
from moto.server import ThreadedMotoServer

from worker.records.recording import CallRecording
from worker.settings import RecordingSettings

pytestmark = pytest.mark.providers

BUCKET = "acme-call-recordings"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The endpoint's client; credentials as boto3 reads them, from the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


async def finished(tmp_path: Path, settings: RecordingSettings) -> tuple[dict[str, Any], Path]:
    """A recording file written as a call leaves it, then finished: what the record says."""
    recording = CallRecording(settings, "CA_s3test", AgentSession())
    recording.path.parent.mkdir(parents=True, exist_ok=True)
    recording.path.write_bytes(b"OggS" + bytes(range(256)) * 40)
    return await recording.finish(12.5), recording.path


async def test_a_recording_is_uploaded_and_its_local_copy_removed(s3: Any, tmp_path: Path) -> None:
    endpoint = s3.meta.endpoint_url
    settings = RecordingSettings(tmp_path, bucket=BUCKET, prefix="calls/", endpoint_url=endpoint)
    described, path = await finished(tmp_path, settings)
    assert described["location"] == f"s3://{BUCKET}/calls/CA_s3test.ogg"
    stored = s3.get_object(Bucket=BUCKET, Key="calls/CA_s3test.ogg")
    assert stored["Body"].read() == b"OggS" + bytes(range(256)) * 40
    assert stored["ContentType"] == "audio/ogg"
    assert not path.exists()


async def test_a_failed_upload_keeps_the_file_and_says_where(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = s3.meta.endpoint_url
    settings = RecordingSettings(tmp_path, bucket="no-such-bucket", endpoint_url=endpoint)
    described, path = await finished(tmp_path, settings)
    assert described["location"] == path.resolve().as_uri()
    assert described["upload_error"]
    assert path.exists()
    assert "could not be uploaded to bucket no-such-bucket" in caplog.text
    assert "testing-secret-key" not in caplog.text
