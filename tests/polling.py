"""Waiting on state that signals nothing (a stand-in's plain lists, a file, a process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy (returned), failing after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if result := predicate():
                    break
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")
    return result
