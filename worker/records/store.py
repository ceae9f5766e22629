"""The durable outbox of webhook records: SQLite on local disk, shared by the processes.

A job process adds a call's record (committed, `synchronous=FULL`) before anything tries to send
it; the main process alone delivers. A record leaves the `pending` state only as `delivered` or,
past its time budget, `expired`. Expired records are never deleted by the worker, so nothing is
lost silently; delivered ones are pruned after a while (they hold transcripts).
Adding is idempotent by message id, so a record written twice (a retried write, the crash guard
after a job that had written it) is delivered once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

State = Literal["pending", "delivered", "expired"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    deadline REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT '',
    finished REAL
);
CREATE INDEX IF NOT EXISTS due ON records (state, next_attempt);
"""


@dataclass(frozen=True)
class Record:
    id: str
    """The message id: `webhook-id`, the receivers' idempotency key."""
    event: str
    url: str
    body: bytes
    created: float
    deadline: float
    """Epoch seconds after which the record is no longer attempted (`expired`)."""
    attempts: int = 0
    state: State = "pending"
    last_error: str = ""


class RecordStore:
    """One process's handle on the outbox file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)  # call transcripts
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def add(self, record: Record) -> bool:
        """Keep `record` durably; False if one with its id is already kept."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO records (id, event, url, body, created, deadline,"
                " next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.event,
                    record.url,
                    record.body,
                    record.created,
                    record.deadline,
                    record.created,
                ),
            )
            return cursor.rowcount == 1

    def due(self, now: float, limit: int) -> list[Record]:
        """Pending records whose next attempt is due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, event, url, body, created, deadline, attempts, state, last_error"
                " FROM records WHERE state = 'pending' AND next_attempt <= ?"
                " ORDER BY next_attempt LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Record(*row) for row in rows]

    def delivered(self, record_id: str) -> None:
        self._finish(record_id, "delivered", "")

    def expired(self, record_id: str, error: str) -> None:
        self._finish(record_id, "expired", error)

    def retry_at(self, record_id: str, when: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE records SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                " WHERE id = ?",
                (when, error, record_id),
            )

    def get(self, record_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, event, url, body, created, deadline, attempts, state, last_error"
                " FROM records WHERE id = ?",
                (record_id,),
            ).fetchone()
        return Record(*row) if row else None

    def counts(self) -> dict[State, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM records GROUP BY state")
            found = dict(rows.fetchall())
        return {state: found.get(state, 0) for state in ("pending", "delivered", "expired")}

    def prune_delivered(self, before: float) -> int:
        """Forget records delivered before `before` (epoch seconds); how many."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM records WHERE state = 'delivered' AND finished < ?", (before,)
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _finish(self, record_id: str, state: State, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE records SET state = ?, attempts = attempts + 1, last_error = ?,"
                " finished = ? WHERE id = ?",
                (state, error, time.time(), record_id),
            )
