"""`console --text` on the local stack, in a pseudo-terminal as a user would run it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]")
COMMAND = [sys.executable, "-m", "worker", "console", "--agent", "5b710eca", "--text"]


@pytest.mark.timeout(120)
def test_console_text_mode_holds_a_conversation() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the worker's console with no keys (local stack)
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env["PYTHONPATH"] = str(ROOT)
        os.chdir(ROOT)
        os.execvpe(sys.executable, COMMAND, env)
    output = bytearray()

    def read_until(pattern: bytes, timeout: float) -> re.Match[bytes] | None:
        """Read the terminal until `pattern` (a regex) appears in its text."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if match := re.search(pattern, ANSI.sub(b"", bytes(output))):
                return match
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    output.extend(os.read(fd, 65536))
                except OSError:
                    return None
        return None

    try:
        assert read_until(b"How can I help you today", 60), bytes(output[-2000:])  # greeted
        assert read_until(b"Type to talk", 10), bytes(output[-2000:])
        os.write(fd, b"Where is my order?\r")
        reply = read_until("\u25cf Agent\\s+(\\S[^\\r\\n]*)".encode(), 60)
        assert reply is not None, bytes(output[-2000:])
        text = ANSI.sub(b"", bytes(output)).decode(errors="replace")
        assert "\u25cf You" in text
        assert "Where is my order?" in text
        assert reply.group(1).strip(), "the agent answered in text"
    finally:
        os.kill(pid, signal.SIGINT)
        time.sleep(1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
