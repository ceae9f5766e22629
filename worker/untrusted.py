"""JSON from outside (data packets, dispatch metadata, API bodies), bounded before it is parsed.

`json.loads` recurses once per level of nesting: about a kilobyte of `[` raises `RecursionError`
(not `ValueError`), which escaped every caller's error path. Size and depth are checked first,
on the raw text, in one linear pass.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
"""Nesting no message of this project needs more than a few levels of."""
MAX_METADATA_BYTES = 64 * 1024
"""Dispatch metadata (the session API itself sends at most 4 KB of context)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class UntrustedJSONError(ValueError):
    """Not acceptable JSON: too big, too deep, not UTF-8 or not JSON; the message says which."""


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, strings excluded."""
    deepest = level = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        level += 1 if bracket in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def loads_bounded(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(data)` once `data` is at most `max_bytes` and `max_depth` levels deep."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise UntrustedJSONError(f"{size} bytes, more than {max_bytes}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise UntrustedJSONError("not UTF-8") from None
    if (levels := depth(text)) > max_depth:
        raise UntrustedJSONError(f"nested {levels} levels deep, more than {max_depth}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UntrustedJSONError(f"not JSON ({exc})") from None
