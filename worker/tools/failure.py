"""The one way a tool reports that it gave no result."""

from __future__ import annotations


class ToolFailedError(Exception):
    """A tool that did not give a result; the message is what the LLM reads: a short, fixed
    sentence, never a URL, header or exception text (any of which could hold a secret)."""
