"""`python -m worker`, unchanged, plus a probe of its main process for the soak tests.

Once the server has started, the main process's loop rewrites `SOAK_PROBE_FILE` (JSON) every
`INTERVAL` seconds: RSS, open file descriptors, threads (executor pool threads apart), asyncio
tasks, child processes and active jobs. Test-only: the product never imports it. Import-safe,
like `worker/__main__.py` (LiveKit's job processes re-import the main module).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import psutil

INTERVAL = 0.5


POOL_PREFIXES = ("asyncio_", "ThreadPoolExecutor")
"""Executor threads: a pool starts them on demand (the loop's own for `getaddrinfo`) and keeps
them idle, up to its limit; a count that grows by one is the pool, not a leak."""


def snapshot(active_jobs: int) -> dict[str, float]:
    me = psutil.Process()
    pool = sum(t.name.startswith(POOL_PREFIXES) for t in threading.enumerate())
    return {
        "time": asyncio.get_running_loop().time(),
        "rss_mb": me.memory_info().rss / 2**20,
        "fds": me.num_fds(),
        "threads": me.num_threads() - pool,
        "pool_threads": pool,
        "tasks": len(asyncio.all_tasks()),
        "children": len(me.children(recursive=True)),
        "active_jobs": active_jobs,
    }


async def probe(server: object, path: Path) -> None:
    partial = path.with_suffix(".tmp")
    while True:
        active = len(getattr(server, "active_jobs", []))
        partial.write_text(json.dumps(snapshot(active)))
        partial.replace(path)
        await asyncio.sleep(INTERVAL)


def main() -> None:
    import worker.server as server_module
    from worker.cli import main as worker_main

    path = Path(os.environ["SOAK_PROBE_FILE"])
    create_server = server_module.create_server
    probes: set[asyncio.Task[None]] = set()

    def probed(worker: server_module.VoiceWorker) -> server_module.VoiceAgentServer:
        server = create_server(worker)

        def start_probe() -> None:
            probes.add(asyncio.get_running_loop().create_task(probe(server, path)))

        server.on("worker_started", start_probe)
        return server

    server_module.create_server = probed  # the CLI imports it when it runs
    worker_main()


if __name__ == "__main__":
    main()
