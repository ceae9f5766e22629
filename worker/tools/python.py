"""`kind: python` tools: a function named `module:function`, imported and checked at start.

An `async def` runs on the call's event loop; a plain `def` runs in a thread, so a blocking
call never stalls the audio. Both get the tool's timeout; a thread cannot be stopped, so a
function past its timeout is abandoned (its result dropped) and the LLM told it failed.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from worker.tools.failure import ToolFailedError
from worker.tools.spec import PythonTool


class PythonToolError(Exception):
    """A `python` tool that cannot be used; the message names the field's problem."""


def load_function(spec: PythonTool) -> Callable[..., Any]:
    """The tool's function, once its signature takes exactly the declared parameters."""
    module_name, _, attribute = spec.function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config error
        raise PythonToolError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PythonToolError(f"{module_name} has no function {attribute!r}")
    signature = inspect.signature(function)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    named = {
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    required = {
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    }
    declared = spec.parameter_names()
    if missing := sorted(required - set(spec.parameters.get("required", []))):
        raise PythonToolError(
            f"{spec.function} requires {', '.join(missing)}, which parameters.required lacks"
        )
    if not accepts_any and (unknown := sorted(declared - named)):
        raise PythonToolError(f"{spec.function} takes no argument {', '.join(unknown)}")
    return function  # type: ignore[no-any-return]


class PythonCall:
    def __init__(self, spec: PythonTool, function: Callable[..., Any]) -> None:
        self.spec = spec
        self._function = function

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        if inspect.iscoroutinefunction(self._function):
            work = self._function(**arguments)
        else:
            work = asyncio.to_thread(self._function, **arguments)
        try:
            result = await asyncio.wait_for(work, self.spec.timeout)
        except TimeoutError:
            raise ToolFailedError(
                f"the tool did not finish within {self.spec.timeout:g} s"
            ) from None
        if result is None:
            return "done"
        return (
            result
            if isinstance(result, str)
            else json.dumps(result, ensure_ascii=False, default=str)
        )
