"""Soak: calls cycling through one worker for minutes; prints JSON.

    python -m tests.lkserver.netns python -m bench.soak --seconds 600 --concurrency 2

The same driver as `tests/load/test_soak.py` (`tests/load/soak.py`), run longer: a real
`python -m worker start` against `tests/lkserver` (inside the e2e network namespace) with the
stand-ins as providers, `concurrency` callers placing call after call. It reports the calls (all
must end once, normally), the jobs as the server saw them, and the worker's main process at rest
after warm-up and at the end (RSS, file descriptors, threads, asyncio tasks, children), with its
RSS over time. Each call's job process is fresh, so the main process is what a long-lived
worker could leak from. The worker's log and the driver's output go to `--log-dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.conftest import running_server
from tests.lkserver.netns import RUNNER, in_test_namespace
from tests.load.soak import SoakReport, soak


def minutes(report: SoakReport) -> list[dict[str, Any]]:
    """The last probe of each minute of the timed phase."""
    last: dict[int, dict[str, float]] = {}
    for sample in report.timeline:
        last[int(sample["elapsed"] // 60)] = sample
    return [
        {"minute": m + 1, "rss_mb": round(s["rss_mb"], 1), "fds": s["fds"], "tasks": s["tasks"]}
        for m, s in sorted(last.items())
    ]


async def run(seconds: float, concurrency: int, log_dir: Path) -> dict[str, Any]:
    with (log_dir / "driver.out").open("w") as out, contextlib.redirect_stdout(out):
        async with running_server() as lk:
            report = await soak(lk, log_dir, {}, seconds=seconds, concurrency=concurrency)
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        **report.as_json(),
        "calls_per_minute": round(len(report.timeline) / (seconds / 60), 1),  # after warm-up
        "by_minute": minutes(report),
        "log_dir": str(log_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    if not in_test_namespace():
        sys.exit(f"bench.soak needs the e2e network namespace: {RUNNER} python -m bench.soak")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args.seconds, args.concurrency, log_dir))
    print(json.dumps(result, indent=2))
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
