"""A call's recording: one stereo Ogg/Opus file, the caller on the left channel and the agent
on the right, on one timeline, the agent's channel as played (cut where the caller interrupted).

The recording is LiveKit's own `RecorderIO`, wrapped around the session's audio input and output
by the call (the framework does this itself only inside a job, for its Cloud upload). The file is
written to the recordings directory; with a bucket configured it is then uploaded to S3-compatible
storage (boto3; credentials from the environment as boto3 reads them) and the local copy removed,
unless the upload failed: then it stays, and the record says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.recorder_io import RecorderIO

from worker.settings import RecordingSettings

logger = logging.getLogger("worker.recordings")

UPLOAD_TIMEOUT = 60.0
FORMAT = {"container": "ogg", "codec": "opus", "channels": ["caller", "agent"]}


class CallRecording:
    """Records one call's session from `start` until `finish`."""

    def __init__(self, target: RecordingSettings, call_id: str, session: AgentSession[Any]) -> None:
        self._target = target
        self._call_id = call_id
        self._session = session
        self._io = RecorderIO(agent_session=session)
        self.path = target.directory / f"{call_id}.ogg"
        self.started_at = 0.0
        """When the recording's timeline begins (epoch seconds)."""

    async def start(self) -> None:
        """Once the transport has set the session's audio input and output."""
        session = self._session
        if session.input.audio is None or session.output.audio is None:
            raise RuntimeError("the session has no audio to record")
        session.input.audio = self._io.record_input(session.input.audio)
        session.output.audio = self._io.record_output(session.output.audio)
        self.started_at = time.time()
        await self._io.start(output_path=self.path)

    async def finish(self, duration: float) -> dict[str, Any]:
        """Close the file (and upload it): what the call's record says of the recording."""
        await self._io.aclose()
        if self.path.exists():
            self.path.chmod(0o600)  # people's voices
        described: dict[str, Any] = {
            **FORMAT,
            "started_at": dt.datetime.fromtimestamp(self.started_at, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "duration": round(duration, 3),
        }
        if self._target.bucket is None:
            return {**described, "location": self.path.resolve().as_uri()}
        key = f"{self._target.prefix}{self.path.name}"
        try:
            await asyncio.wait_for(asyncio.to_thread(self._upload, key), UPLOAD_TIMEOUT)
        except Exception as exc:  # the recording is kept; the backend learns where
            logger.error(
                "recording %s could not be uploaded to bucket %s (%s): kept at %s",
                self.path.name,
                self._target.bucket,
                type(exc).__name__,
                self.path,
            )
            return {
                **described,
                "location": self.path.resolve().as_uri(),
                "upload_error": type(exc).__name__,
            }
        self.path.unlink(missing_ok=True)
        return {**described, "location": f"s3://{self._target.bucket}/{key}"}

    def _upload(self, key: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self._target.endpoint_url)
        client.upload_file(
            str(self.path), self._target.bucket, key, ExtraArgs={"ContentType": "audio/ogg"}
        )
