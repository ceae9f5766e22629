"""Run a command inside a private network namespace that has a non-loopback interface.

libwebrtc and aioice drop loopback ICE candidates, so the SDK and the test server need a real
interface to meet on. `unshare -rn` (an unprivileged user + network namespace) gives one with no way
out of the machine: a veth pair with `ADDRESS` on `veth0`. Usage (from the repository root):

    python -m tests.lkserver.netns pytest -m e2e ...

Inside a namespace that already has the interface, the command just runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from typing import NoReturn

ADDRESS = "10.99.0.1"
"""Where the test server listens; only the namespace has it."""
PREFIX_LENGTH = 24
_INSIDE = "--inside"
"""Marks the re-executed runner: it sets up the fresh namespace instead of unsharing again."""
_SETUP_TIMEOUT = 10.0
_SIOCGIFADDR = 0x8915
"""The ioctl that reads an interface's IPv4 address (linux/sockios.h)."""

RUNNER = "python -m tests.lkserver.netns"
"""How to run a command in the namespace, for error messages."""


def in_test_namespace() -> bool:
    """Whether an interface here has `ADDRESS`, i.e. this process runs where the server listens.

    Asks the interfaces rather than trying to bind: a fresh namespace lets any address be bound.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(reply[20:24]) == ADDRESS:
                return True
    return False


def unshare_problem() -> str | None:
    """Why `unshare -rn` cannot make a namespace here, or None if it can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "`unshare` is missing (Debian/Ubuntu: apt-get install util-linux)"
    result = subprocess.run(
        [unshare, "-rn", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=_SETUP_TIMEOUT,
    )
    if result.returncode != 0:
        return (
            f"`unshare -rn` failed ({result.stderr.strip()}): unprivileged user namespaces are "
            "disabled (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces, or a "
            "container without them)"
        )
    return None


def _ip() -> str:
    """`ip` from iproute2; /usr/sbin is often missing from a user's PATH."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    ip = shutil.which("ip", path=path)
    if ip is None:
        raise SystemExit("netns: `ip` is missing (Debian/Ubuntu: apt-get install iproute2)")
    return ip


def _set_up_interface() -> None:
    ip = _ip()
    for args in (
        ["link", "set", "lo", "up"],
        ["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
        ["addr", "add", f"{ADDRESS}/{PREFIX_LENGTH}", "dev", "veth0"],
        ["link", "set", "veth0", "up"],
        ["link", "set", "veth1", "up"],
    ):
        result = subprocess.run(
            [ip, *args], check=False, capture_output=True, text=True, timeout=_SETUP_TIMEOUT
        )
        if result.returncode != 0:
            raise SystemExit(f"netns: `ip {' '.join(args)}` failed: {result.stderr.strip()}")


def main(argv: list[str]) -> NoReturn:
    """Exec `argv` inside the namespace (re-executing through `unshare -rn` if needed)."""
    inside = bool(argv) and argv[0] == _INSIDE
    command = argv[1:] if inside else argv
    if not command:
        raise SystemExit(f"usage: {RUNNER} COMMAND [ARG...]")
    if inside and not in_test_namespace():
        _set_up_interface()
    if inside or in_test_namespace():
        os.execvp(command[0], command)
    problem = unshare_problem()
    if problem is not None:
        raise SystemExit(f"netns: cannot create the test network namespace: {problem}")
    unshare = shutil.which("unshare") or "unshare"
    runner = [sys.executable, "-m", "tests.lkserver.netns", _INSIDE]
    os.execv(unshare, [unshare, "-rn", *runner, *command])


if __name__ == "__main__":
    main(sys.argv[1:])
