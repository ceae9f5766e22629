"""A minimal livekit-agents worker for the e2e tests: joins the room it is sent to and stays.

Run as `python tests/e2e/agent_worker.py start` with LIVEKIT_URL, LIVEKIT_API_KEY and
LIVEKIT_API_SECRET set. E2E_AGENT_NAME is its agent name (explicit dispatch only);
E2E_ON_REQUEST chooses its answer to a job request: `accept` (default), `decline` (reject, let
the server offer it elsewhere) or `refuse` (reject for good: `JobRequest.reject()`'s default).
Importing it is cheap (livekit-agents loads in `main`), so tests can share `CONNECTED`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livekit.agents import JobContext, JobRequest

CONNECTED = "e2e.connected"
"""The attribute the agent sets once it is in the room."""


async def on_request(request: JobRequest) -> None:
    answer = os.environ.get("E2E_ON_REQUEST", "accept")
    if answer == "decline":
        await request.reject(terminate=False)
    elif answer == "refuse":
        await request.reject()
    else:
        await request.accept(identity=f"e2e-agent-{request.id}", name="e2e agent")


async def entrypoint(ctx: JobContext) -> None:
    """Join, say so, and stay: the job ends when the room goes or the server terminates it.

    The attribute tells the tests that `connect()` returned (WebRTC up), not just that the
    agent's signalling joined: deleting the room before that leaves the SDK retrying.
    """
    await ctx.connect()
    await ctx.room.local_participant.set_attributes({CONNECTED: "1"})


def main() -> None:
    from livekit.agents import AgentServer, cli

    server = AgentServer(
        num_idle_processes=1,  # one warm process: a job starts without a cold import
        load_fnc=lambda: 0.0,  # a busy 2-core CI machine must not make the worker decline
        port=0,  # health server: several workers run at once
        drain_timeout=5,  # SIGTERM drains first: keep the tests' teardown short
    )
    server.rtc_session(
        entrypoint, agent_name=os.environ.get("E2E_AGENT_NAME", ""), on_request=on_request
    )
    cli.run_app(server)


if __name__ == "__main__":
    main()
