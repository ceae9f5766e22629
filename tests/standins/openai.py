"""A local stand-in for OpenAI's Chat Completions API, for the real `livekit-plugins-openai` LLM
(through the `openai` SDK) pointed at it with `base_url=standin.url`.

The wire format follows OpenAI's API reference; samples/openai.yaml quotes the documented
examples, and tests/providers/test_openai.py checks the stand-in's messages against them:

- https://platform.openai.com/docs/api-reference/chat/create (request, `stream_options`)
- https://platform.openai.com/docs/api-reference/chat/streaming (the chunk object)
- https://platform.openai.com/docs/api-reference/chat/object (the completion, `usage`)
- https://platform.openai.com/docs/guides/function-calling#streaming (streamed tool calls)
- https://platform.openai.com/docs/api-reference/models/list
- https://platform.openai.com/docs/guides/error-codes and
  https://help.openai.com/en/articles/6891839-api-error-code-guidance (error statuses, messages)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeAlias

import aiohttp
from aiohttp import web

from .base import Received, StandIn

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "fp_standin01"
"""OpenAI names the backend configuration in every chunk; a fixed one here."""
DEFAULT_REPLY = "Hello! How can I help you today?"
_POLL = 0.02
"""Seconds between checks that the client is still there while the stand-in waits."""


@dataclass(frozen=True)
class ToolCall:
    """A function call in a reply; `arguments` go out as the JSON string OpenAI streams."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


Part: TypeAlias = str | ToolCall
Reply: TypeAlias = list[Part]
Responder: TypeAlias = Callable[[dict[str, Any]], Awaitable[Reply]]
"""Given the request body (messages, tools, ...), the reply's parts in order."""


@dataclass
class Completion:
    """One chat-completions request and what went back: `tokens_sent` below `tokens` shows
    where the client (a barge-in) or a fault cut the reply."""

    request: Received
    reply: Reply = field(default_factory=list)
    tokens: int = 0
    """Content tokens in the reply (after `max_completion_tokens`)."""
    tokens_sent: int = 0
    """Content tokens written before the response ended."""
    text_sent: str = ""
    """Those tokens' text: what the client can have heard of the reply."""

    @property
    def outcome(self) -> str:
        return self.request.outcome


def split_tokens(text: str) -> list[str]:
    """Word-sized pieces with their leading spaces, as OpenAI streams them ("Hello", "!",
    " today"); they join back to `text`."""
    return re.findall(r"\s*(?:\w+|[^\w\s]+)|\s+", text)


def _json(value: Any) -> str:
    """Compact JSON, as OpenAI's chunks are."""
    return json.dumps(value, separators=(",", ":"))


def mask_key(key: str) -> str:
    """The key as OpenAI echoes it in a 401: first 8 and last 4 characters, the rest starred
    (`sk-VKMIs***...***wjh3`); shorter keys keep only their first quarter, never the whole key."""
    head, tail = (8, 4) if len(key) >= 20 else (len(key) // 4, 0)
    return key[:head] + "*" * (len(key) - head - tail) + key[len(key) - tail :]


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object (`openai.types.shared.ErrorObject`): all four keys, always."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def status_error(status: int) -> dict[str, Any]:
    """The body OpenAI sends with `status` (error-code guide), or a generic one of its kind."""
    message, type_, code = _STATUS_ERRORS.get(
        status,
        (
            HTTPStatus(status).phrase,
            "invalid_request_error" if status < 500 else "server_error",
            None,
        ),
    )
    return error_body(message, type_, code)


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _offered_tools(body: dict[str, Any]) -> set[str]:
    return {
        t["function"]["name"]
        for t in body.get("tools") or []
        if t.get("type") == "function" and "function" in t
    }


class Script:
    """Deterministic replies: the first rule whose regex matches the caller's last message
    (case-insensitive) gives the reply, else `default`. After a tool result the model says
    `after_tool` (nothing by default), where `{result}` is the tool's result as it was sent. A
    tool call goes out only when the request offers that tool, as a real model cannot call a
    tool it was not given."""

    def __init__(
        self,
        rules: Sequence[tuple[str, Reply]],
        default: Reply,
        *,
        after_tool: Sequence[Part] = (),
    ) -> None:
        self.rules = [(re.compile(pattern, re.IGNORECASE), reply) for pattern, reply in rules]
        self.default = default
        self.after_tool = list(after_tool)

    async def __call__(self, body: dict[str, Any]) -> Reply:
        messages: list[dict[str, Any]] = body.get("messages") or []
        if messages and messages[-1].get("role") == "tool":
            result = _text_of(messages[-1].get("content"))
            reply = [
                p.replace("{result}", result) if isinstance(p, str) else p for p in self.after_tool
            ]
        else:
            said = next(
                (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
                "",
            )
            reply = next((r for pattern, r in self.rules if pattern.search(said)), self.default)
        tools = _offered_tools(body)
        return [p for p in reply if not isinstance(p, ToolCall) or p.name in tools]


class LocalLLMResponder:
    """Real model output: each request goes on, non-streaming, to an OpenAI-compatible server
    (the worker's llama.cpp server: `LocalLLMServer.base_url`), and its answer is streamed
    back as if from OpenAI."""

    def __init__(self, base_url: str, *, api_key: str = "local", timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    async def __call__(self, body: dict[str, Any]) -> Reply:
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
            session.post(
                f"{self.base_url}/chat/completions",
                json=request,
                headers={"Authorization": f"Bearer {self.api_key}"},
            ) as response,
        ):
            response.raise_for_status()
            answer = await response.json()
        message = answer["choices"][0]["message"]
        reply: Reply = [message["content"]] if message.get("content") else []
        reply += [
            ToolCall(c["function"]["name"], json.loads(c["function"]["arguments"] or "{}"))
            for c in message.get("tool_calls") or []
        ]
        return reply


def _deltas(reply: Reply) -> list[dict[str, Any]]:
    """The reply as OpenAI streams it: one delta per content token; per tool call, one delta
    with its id, name and empty arguments, then one per fragment of the arguments."""
    deltas: list[dict[str, Any]] = []
    calls = 0
    for part in reply:
        if isinstance(part, str):
            deltas += [{"content": token} for token in split_tokens(part)]
            continue
        arguments = _json(part.arguments)
        head = {"name": part.name, "arguments": ""}
        call = {"index": calls, "id": _new_id("call_", 24), "type": "function", "function": head}
        deltas.append({"tool_calls": [call]})
        deltas += [
            {"tool_calls": [{"index": calls, "function": {"arguments": fragment}}]}
            for fragment in split_tokens(arguments)
        ]
        calls += 1
    return deltas


def _message(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the deltas add up to (a non-streamed completion's)."""
    content = "".join(d.get("content", "") for d in deltas)
    calls: list[dict[str, Any]] = []
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            if "id" in call:
                calls.append({k: v for k, v in call.items() if k != "index"})
                calls[-1]["function"] = dict(call["function"])
            else:
                calls[-1]["function"]["arguments"] += call["function"]["arguments"]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
    """Token counts in OpenAI's shape, counted with `split_tokens` plus 3 tokens per message and
    3 for the reply's priming, as https://cookbook.openai.com/examples/how_to_count_tokens_with_tiktoken
    counts them."""
    messages = body.get("messages") or []
    prompt = 3 + sum(3 + len(split_tokens(_text_of(m.get("content")))) for m in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _new_id(prefix: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pause(request: web.Request, seconds: float) -> None:
    """Sleep (yielding at least once, so a `drop_after` deadline can land), but notice the
    client going away: aiohttp cancels no handler on disconnect, so a plain sleep would not end
    with the connection (and a barge-in would go unseen)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        await asyncio.sleep(min(max(end - loop.time(), 0.0), _POLL))
        if _gone(request):
            raise ConnectionResetError("the client went away")
        if loop.time() >= end:
            return


def _invalid(body: Any) -> tuple[int, dict[str, Any]] | None:
    """The 400 OpenAI answers a body it cannot use with, if it is one."""
    if not isinstance(body, dict):
        message = "We could not parse the JSON body of your request."
        return 400, error_body(message, "invalid_request_error")
    if not body.get("messages"):
        message = "Missing required parameter: 'messages'."
        return 400, error_body(
            message, "invalid_request_error", "missing_required_parameter", "messages"
        )
    return None


def _json_response(status: int, payload: dict[str, Any], request_id: str) -> web.Response:
    """JSON with the `x-request-id` OpenAI tags every response with (the SDK's `request_id`)."""
    return web.json_response(payload, status=status, headers={"x-request-id": request_id})


class OpenAIStandIn(StandIn):
    """`GET /v1/models` and `POST /v1/chat/completions`, streamed (SSE) or not.

    `responder` writes the replies (a `Script` by default); `first_token` is the seconds before
    the first token (plus `faults.latency`), `token_interval` the seconds between tokens: a
    barge-in can only cut a reply that is still streaming, so tests of it set one. Every request
    is in `received` (kind `request`, the parsed JSON body); each chat completion also in
    `completions`, with how much of its reply went out.
    """

    def __init__(
        self,
        *,
        api_key: str,
        responder: Responder | None = None,
        first_token: float = 0.0,
        token_interval: float = 0.0,
        models: Sequence[str] = ("gpt-4.1-mini",),
    ) -> None:
        super().__init__(api_key=api_key)
        self.responder: Responder = responder or Script([], [DEFAULT_REPLY])
        self.first_token = first_token
        self.token_interval = token_interval
        self.models = list(models)
        self.completions: list[Completion] = []
        self._created = int(time.time())
        self._an_end = asyncio.Event()

    @property
    def url(self) -> str:
        """The `base_url` to give the OpenAI client."""
        return f"{self.origin}/v1"

    async def ended(self, count: int) -> list[str]:
        """Wait until the first `count` requests have ended (the stand-in sees a client leave
        at its next write or check, a moment after it left); their outcomes."""
        while len(self.received) < count or any(r.outcome == "open" for r in self.received[:count]):
            self._an_end.clear()
            await self._an_end.wait()
        return [r.outcome for r in self.received[:count]]

    def _end(self, entry: Received, outcome: str) -> None:
        entry.outcome = outcome
        self._an_end.set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self._models),
            web.post("/v1/chat/completions", self._chat),
            web.route("*", "/{path:.*}", self._unknown),
        ]

    def _refusal(self, request: web.Request) -> tuple[int, dict[str, Any]] | None:
        """401 for a missing or wrong key (checked first, as OpenAI does), then `faults.status`."""
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            return 401, error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
            )
        if not secrets.compare_digest(key, self.api_key):
            return 401, error_body(
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.faults.status is not None:
            return self.faults.status, status_error(self.faults.status)
        return None

    async def _models(self, request: web.Request) -> web.Response:
        entry = self.record("request", request)
        request_id = _new_id("req_", 32)
        if (refusal := self._refusal(request)) is not None:
            self._end(entry, "rejected")
            return _json_response(*refusal, request_id)
        self._end(entry, "completed")
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "system"}
            for m in self.models
        ]
        return _json_response(200, {"object": "list", "data": data}, request_id)

    async def _unknown(self, request: web.Request) -> web.Response:
        entry = self.record("request", request)
        self._end(entry, "rejected")
        message = f"Invalid URL ({request.method} {request.path})"
        return _json_response(
            404, error_body(message, "invalid_request_error"), _new_id("req_", 32)
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        entry = self.record("request", request, raw if body is None else body)
        request_id = _new_id("req_", 32)
        if (refusal := self._refusal(request) or _invalid(body)) is not None:
            self._end(entry, "rejected")
            return _json_response(*refusal, request_id)
        assert isinstance(body, dict)
        completion = Completion(entry)
        self.completions.append(completion)
        try:
            completion.reply = await self.responder(body)
        except Exception:  # a broken responder: the client sees OpenAI's 500, the log the cause
            logger.exception("the OpenAI stand-in's responder failed")
            self._end(entry, "rejected")
            return _json_response(500, status_error(500), request_id)
        return await self._answer(request, body, completion, request_id)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], completion: Completion, request_id: str
    ) -> web.StreamResponse:
        """The reply, streamed or not, under the faults: `drop_after` cuts the connection that
        many seconds in, `malformed` sends one invalid message instead, `no_answer` sends
        nothing (the client's timeout ends it)."""
        entry = completion.request
        response: web.StreamResponse = web.Response()  # replaced once headers are sent
        hung = self.faults.no_answer
        try:
            async with asyncio.timeout(self.faults.take_drop()):
                if hung:
                    await _pause(request, math.inf)
                malformed = self.faults.take_malformed()
                if body.get("stream"):
                    response = await self._stream(request, body, completion, request_id, malformed)
                else:
                    response = await self._whole(request, body, completion, request_id, malformed)
        except TimeoutError:  # `drop_after`: cut without a word, as a broken connection does
            if request.transport is not None:
                request.transport.close()
            self._end(entry, "dropped")
        except ConnectionResetError:
            self._end(entry, "dropped" if hung else "cancelled")
        return response  # aiohttp ignores a response it cannot send to a closed connection

    def _plan(
        self, body: dict[str, Any], completion: Completion
    ) -> tuple[list[dict[str, Any]], str]:
        """The deltas to send and the finish reason, `max_completion_tokens` applied."""
        deltas = _deltas(completion.reply)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "tool_calls" if any("tool_calls" in d for d in deltas) else "stop"
        if limit is not None and len(deltas) > limit:
            deltas, finish = deltas[:limit], "length"
        completion.tokens = sum("content" in d for d in deltas)
        return deltas, finish

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion: Completion,
        request_id: str,
        malformed: bool,
    ) -> web.StreamResponse:
        """Server-sent events: a role chunk, one chunk per delta, the finish chunk, the usage
        chunk when `stream_options.include_usage` (every other chunk then has `usage: null`),
        `data: [DONE]`."""
        deltas, finish = self._plan(body, completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {
            "id": _new_id("chatcmpl-", 29),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            extra = {"usage": None} if include_usage else {}
            return {**head, "choices": [choice], **extra}

        await _pause(request, self.first_token + self.faults.latency)  # headers come with it
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "x-request-id": request_id}
        )
        await response.prepare(request)

        async def send(data: str) -> None:
            await response.write(f"data: {data}\n\n".encode())

        if malformed:
            await send(_json(head)[:-1] + ',"choices":[{"delta":')
            self._end(completion.request, "dropped")
            return response
        starts_with_call = bool(deltas) and "tool_calls" in deltas[0]
        await send(_json(chunk({"role": "assistant", "content": None if starts_with_call else ""})))
        for i, delta in enumerate(deltas):
            if i:
                await _pause(request, self.token_interval)
            await send(_json(chunk(delta)))
            if "content" in delta:
                completion.tokens_sent += 1
                completion.text_sent += delta["content"]
        await send(_json(chunk({}, finish)))
        if include_usage:
            await send(_json({**head, "choices": [], "usage": _usage(body, len(deltas))}))
        await send("[DONE]")
        self._end(completion.request, "completed")
        return response  # aiohttp ends the body

    async def _whole(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion: Completion,
        request_id: str,
        malformed: bool,
    ) -> web.StreamResponse:
        """A non-streamed `chat.completion` object, after the reply's generation time."""
        deltas, finish = self._plan(body, completion)
        await _pause(
            request,
            self.first_token + self.faults.latency + self.token_interval * max(len(deltas) - 1, 0),
        )
        if malformed:
            self._end(completion.request, "dropped")
            return web.Response(
                text='{"id": "chatcmpl-',
                content_type="application/json",
                headers={"x-request-id": request_id},
            )
        completion.tokens_sent = completion.tokens
        completion.text_sent = "".join(d.get("content", "") for d in deltas)
        self._end(completion.request, "completed")
        payload = {
            "id": _new_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": _message(deltas), "logprobs": None, "finish_reason": finish}
            ],
            "usage": _usage(body, len(deltas)),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return _json_response(200, payload, request_id)
