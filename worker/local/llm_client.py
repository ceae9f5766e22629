"""The calls' side of the local LLM: llama.cpp's server through the OpenAI plugin, with the one
repair a small model needs.

A small model sometimes answers with a call to a tool the agent does not have. llama.cpp then
cannot parse its answer into OpenAI `tool_calls` and fails the request ("does not match the
expected peg-native format": HTTP 500, or an error event with code 500 when streamed); LiveKit
would retry the same request, get the same failure and end the call on an LLM error. Here the
request is asked once more without tools, so the caller hears an answer in words instead; when
the model had already said something before the malformed call, what it said is the answer.

Each call also holds one of the server's slots for its whole length (`claim_slot`) and sends
every request to it: llama.cpp keeps a slot's prompt cached, and without the pin a request that
follows a barge-in lands in another slot while the cancelled one winds down, and reads the whole
conversation again (3.5 s instead of 0.6 s for the 1.5B on 2 cores).

And a call's slot starts from its agent's prompt snapshot: the server's saved cache of the
agent's instructions, tools and greeting with the default placeholder values, made by `setup` or
at the worker's start (`prompt_snapshots.py`; kept on disk by the server, see `LocalLLMServer`),
never from a call, so no caller's words are ever kept. Reading that prompt is the slowest part of
a local answer (300 tokens: 14 s for the 1.5B on a slow 2-core machine, longer than a greeting);
restoring it takes milliseconds, and llama.cpp reuses it up to the first token this call's
prompt differs in (its placeholders), so a stale or foreign snapshot only costs a longer read,
never a wrong answer.

A small model also writes for a screen: the 1.5B follows a short answer with a blank line and a
list, a "Status Update:" or an "[Insert Order Number]". `SpokenReply` keeps what is said to the
first `max_sentences` sentences and the first line; the rest of the answer is still read for its
tool calls, but never spoken, and the history holds what was said (so the model sees itself
answer briefly).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    APIError,
    APIStatusError,
    NotGivenOr,
    llm,
)
from livekit.agents.llm import ChatContext, Tool, ToolChoice
from livekit.agents.utils import is_given

logger = logging.getLogger("worker.local.llm")

UNPARSED_TOOL_CALL = 500
"""llama.cpp's status for a model answer its tool-call parser rejects."""
RESTORE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
"""A restore waits for the slot to be idle: a cancelled request of the last call may hold it."""
SAVE_TIMEOUT = aiohttp.ClientTimeout(total=30.0)


@dataclass
class Slot:
    """One llama.cpp slot, held by this call (an exclusive lock the OS drops if the process
    dies, so a crashed call never keeps its slot)."""

    number: int
    _lock: IO[str]

    def release(self) -> None:
        self._lock.close()


def claim_slot(llm_url: str, slots: int) -> Slot | None:
    """A free slot of the server at `llm_url` for this call, shared across the worker's job
    processes by lock files; None when every slot is busy (llama.cpp then picks one)."""
    folder = Path(tempfile.gettempdir()) / f"voice-worker-llm-{urlsplit(llm_url).port}"
    folder.mkdir(exist_ok=True)
    for number in range(slots):
        lock = (folder / f"slot-{number}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return Slot(number, lock)
    logger.warning("all %d local LLM slots are in use: this call shares one", slots)
    return None


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*$")
_SCREEN_MARKUP = str.maketrans("", "", "*#`_")


class SpokenReply:
    """What of a streamed answer is spoken: its first `max_sentences` sentences (None: all) of
    its first line, without markdown emphasis."""

    def __init__(self, max_sentences: int | None) -> None:
        self._left = max_sentences
        self._said = ""
        self.over = False

    def feed(self, text: str) -> str:
        """The part of the next piece of the answer that is spoken ("" once it is over)."""
        kept: list[str] = []
        for char in text.translate(_SCREEN_MARKUP):
            if self.over:
                break
            if char.isspace() and not self._said:
                continue  # nothing said yet: a leading line break is not the answer's end
            if char in "\r\n":
                self.over = True
            elif char.isspace() and self._left is not None and self._sentence_ended():
                self._left -= 1
                self.over = self._left == 0
            if not self.over:
                self._said += char
                kept.append(char)
        return "".join(kept)

    def _sentence_ended(self) -> bool:
        return _SENTENCE_END.search(self._said[-8:]) is not None


class ToolSafeLLM(llm.LLM[None]):
    """Wraps the OpenAI plugin's LLM pointed at the local server (see the module doc)."""

    def __init__(
        self,
        inner: llm.LLM[Any],
        *,
        max_tokens: int,
        body: dict[str, Any],
        slot: Slot | None,
        snapshot: tuple[str, str] | None = None,
        max_sentences: int | None = None,
    ) -> None:
        """`snapshot`: the server's URL (…/v1) and the file name of the agent's prompt snapshot,
        which the slot starts from; `max_sentences`: what `SpokenReply` keeps (see the module
        doc)."""
        super().__init__()
        self._inner = inner
        self.max_sentences = max_sentences
        self._snapshot = (
            None
            if snapshot is None or slot is None
            else (f"{snapshot[0].removesuffix('/v1')}/slots/{slot.number}", snapshot[1])
        )
        self._restored: asyncio.Task[bool] | None = None
        # the limit and llama.cpp's own fields travel with each request rather than in the
        # plugin's options, which would override a request's own (the warm-up's one token)
        self._max_tokens = max_tokens
        self._body = body if slot is None else {**body, "id_slot": slot.number}
        self._slot = slot
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def provider(self) -> str:
        return self._inner.provider

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _ToolSafeStream(
            self,
            inner=self._inner,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
            request={
                "parallel_tool_calls": parallel_tool_calls,
                "tool_choice": tool_choice,
                "extra_kwargs": {
                    "max_completion_tokens": self._max_tokens,
                    "extra_body": self._body,
                    **(extra_kwargs if is_given(extra_kwargs) else {}),
                },
            },
        )

    def prewarm(self, *, loop: Any = None) -> None:
        self._inner.prewarm(loop=loop)

    async def before_request(self) -> None:
        """Before the call's first request (and any made meanwhile): the slot starts from the
        agent's snapshot, if there is one."""
        if self._snapshot is None:
            return
        if self._restored is None:
            self._restored = asyncio.create_task(self._slot_action("restore", RESTORE_TIMEOUT))
        await asyncio.shield(self._restored)

    async def keep_snapshot(self) -> bool:
        """After the agent's prompt was read with its default placeholder values (`setup`, a
        worker's start: never a call, whose slot may already hold the caller's words): save
        it as the agent's snapshot, unless the slot started from one."""
        if self._restored is not None and self._restored.done() and self._restored.result():
            return False
        return await self._slot_action("save", SAVE_TIMEOUT)

    async def _slot_action(self, action: str, timeout: aiohttp.ClientTimeout) -> bool:
        """Restore or save the slot's cache as the agent's snapshot; False if the server did
        not (no snapshot yet, a busy slot, an older server: the request reads the prompt)."""
        if self._snapshot is None:
            return False
        url, name = self._snapshot
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, params={"action": action}, json={"filename": name}) as response,
            ):
                if response.status == 200:
                    logger.debug("%s the prompt snapshot %s", action, name)
                    return True
                logger.debug("no prompt snapshot %s (%s): %s", name, action, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("no prompt snapshot %s (%s): %s", name, action, exc)
        return False

    async def aclose(self) -> None:
        self._inner.off("metrics_collected", self._forward_metrics)
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        await self._inner.aclose()

    def _forward_metrics(self, *args: Any, **kwargs: Any) -> None:
        self.emit("metrics_collected", *args, **kwargs)


class _ToolSafeStream(llm.LLMStream):
    def __init__(
        self,
        outer: ToolSafeLLM,
        *,
        inner: llm.LLM[Any],
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        request: dict[str, Any],
    ) -> None:
        super().__init__(outer, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._outer = outer
        self._inner = inner
        self._request = request
        self._answered = False
        self._spoken = SpokenReply(outer.max_sentences)

    async def _run(self) -> None:
        await self._outer.before_request()
        try:
            await self._attempt(self._tools)
        except APIError as exc:
            if not (self._tools and _unparsed_tool_call(exc)):
                raise
            if self._answered:
                # words, then a malformed call: the words are the answer (already spoken)
                logger.warning(
                    "the local model ended its answer with a tool call the server could not "
                    "parse (%s): keeping the words",
                    exc,
                )
                return
            logger.warning(
                "the local model answered with a tool call the server could not parse (%s): "
                "asking again without tools",
                exc,
            )
            await self._attempt([])

    async def _attempt(self, tools: list[Tool]) -> None:
        """One request to the local server; its retries are this stream's, not the plugin's."""
        request = dict(self._request)
        if not tools:
            request["tool_choice"] = NOT_GIVEN
        async with self._inner.chat(
            chat_ctx=self._chat_ctx,
            tools=tools,
            conn_options=dataclasses.replace(self._conn_options, max_retry=0),
            **request,
        ) as stream:
            async for chunk in stream:
                if chunk.delta is not None and chunk.delta.content:
                    said = self._spoken.feed(chunk.delta.content)
                    self._answered = self._answered or bool(said)
                    delta = chunk.delta.model_copy(update={"content": said or None})
                    chunk = chunk.model_copy(update={"delta": delta})  # noqa: PLW2901
                self._event_ch.send_nowait(chunk)

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        """The inner stream reports the request's metrics (forwarded by `ToolSafeLLM`)."""
        async for _ in event_aiter:
            pass


def _unparsed_tool_call(exc: APIError) -> bool:
    """llama.cpp's refusal of the answer: HTTP 500 before a non-streamed reply, or, streamed,
    an error event with code 500 (the OpenAI SDK's APIError, its body kept as the cause)."""
    if isinstance(exc, APIStatusError):
        return exc.status_code == UNPARSED_TOOL_CALL
    body = getattr(exc.__cause__, "body", None)
    return isinstance(body, dict) and body.get("code") == UNPARSED_TOOL_CALL
