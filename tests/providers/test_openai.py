"""The real OpenAI LLM plugin, built by the worker's own `build_providers`, against the local
OpenAI stand-in: replies and usage, the agent's `end_call` tool, a bad key, the stand-in's
messages against OpenAI's documented samples, each fault as the plugin sees it, and a reply
the client stops reading (a barge-in)."""

from __future__ import annotations

import asyncio
import json
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, llm

from tests.harness import end_call_tools, make_agent
from tests.standins.openai import (
    LocalLLMResponder,
    OpenAIStandIn,
    Script,
    ToolCall,
    mask_key,
    split_tokens,
)
from worker.providers import AnyLLM, build_providers, connect_options

KEY = "sk-test-4f9a1c2e7b8d0f3a6c5e"
SAMPLES: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[1] / "standins" / "samples" / "openai.yaml").read_text("utf-8")
)
REPLY = "Hello there, how may I assist you today?"
GOODBYE = "Goodbye, have a nice day!"
LONG = " ".join(["This reply is long enough to be cut before its end."] * 6)
SCRIPT = Script(
    [
        (r"\bbye\b", [GOODBYE, ToolCall("end_call")]),
        (r"weather", [ToolCall("get_weather", {"location": "Paris, France"})]),
        (r"long", [LONG]),
    ],
    [REPLY],
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}

MakeLLM = Callable[..., tuple[AnyLLM, APIConnectOptions]]


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn(api_key=KEY, responder=SCRIPT) as server:
        yield server


@pytest.fixture
async def make_llm(standin: OpenAIStandIn) -> AsyncIterator[MakeLLM]:
    """The plugin as the worker builds it for an agent whose `llm[0]` has `entry`'s fields,
    with the connect options the worker would use for it; `url` is another stand-in's."""
    made: list[AnyLLM] = []

    def make(
        *, key: str = KEY, url: str | None = None, **entry: Any
    ) -> tuple[AnyLLM, APIConnectOptions]:
        agent = make_agent(llm=[{"provider": "openai", **entry}])
        env = {
            "OPENAI_API_KEY": key,
            "OPENAI_BASE_URL": url or standin.url,
            "DEEPGRAM_API_KEY": "x",
            "ELEVEN_API_KEY": "x",
        }
        made.append(build_providers(agent, env).llm)
        return made[-1], connect_options(agent.llm[0])

    yield make
    for model in made:
        await model.aclose()


@dataclass
class Heard:
    """What the plugin yielded."""

    text: str = ""
    calls: list[llm.FunctionToolCall] = field(default_factory=list)
    usage: llm.CompletionUsage | None = None
    first_text_at: float | None = None


async def converse(
    model: AnyLLM,
    options: APIConnectOptions,
    said: str = "Hello!",
    *,
    tools: list[llm.Tool] | None = None,
    heard: Heard | None = None,
) -> Heard:
    """One turn through `model.chat`; pass `heard` to keep what came before an exception."""
    heard = heard or Heard()
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are a test agent.")
    ctx.add_message(role="user", content=said)
    async with (
        asyncio.timeout(5),
        model.chat(chat_ctx=ctx, tools=tools, conn_options=options) as stream,
    ):
        async for chunk in stream:
            if chunk.delta is not None:
                if chunk.delta.content and heard.first_text_at is None:
                    heard.first_text_at = time.monotonic()
                heard.text += chunk.delta.content or ""
                heard.calls += chunk.delta.tool_calls
            heard.usage = chunk.usage or heard.usage
    return heard


async def settled(standin: OpenAIStandIn, count: int) -> list[str]:
    """The outcomes of the first `count` requests, once all have ended; and no other request."""
    async with asyncio.timeout(3):
        outcomes = await standin.ended(count)
    assert len(standin.received) == count
    return outcomes


# --- (a) replies and usage -------------------------------------------------------------------


async def test_streams_the_scripted_reply_with_usage(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    model, options = make_llm(temperature=0.2, max_tokens=64)
    heard = await converse(model, options)

    assert heard.text == REPLY
    completion = standin.completions[-1]
    assert completion.outcome == "completed"
    assert completion.tokens == completion.tokens_sent == len(split_tokens(REPLY))
    assert heard.usage is not None
    assert heard.usage.completion_tokens == completion.tokens
    assert heard.usage.total_tokens == heard.usage.prompt_tokens + completion.tokens
    assert heard.usage.prompt_tokens > 0
    request = completion.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "gpt-4.1-mini"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["temperature"] == 0.2
    assert request.body["max_completion_tokens"] == 64
    assert request.body["messages"][-1] == {"role": "user", "content": "Hello!"}


async def test_max_completion_tokens_cuts_the_reply_as_openai_does(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    model, options = make_llm(max_tokens=3)
    heard = await converse(model, options)
    assert heard.text == "".join(split_tokens(REPLY)[:3])
    assert heard.usage is not None
    assert heard.usage.completion_tokens == 3


# --- (b) tool calls ---------------------------------------------------------------------------


async def test_the_agents_end_call_tool_comes_back_as_a_function_call(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    model, options = make_llm()
    heard = await converse(model, options, "OK, bye now.", tools=await end_call_tools())

    assert heard.text == GOODBYE
    assert [(c.name, json.loads(c.arguments)) for c in heard.calls] == [("end_call", {})]
    offered = standin.completions[-1].request.body["tools"]
    assert [t["function"]["name"] for t in offered] == ["end_call"]
    assert standin.completions[-1].outcome == "completed"


async def test_a_tool_the_request_does_not_offer_is_never_called(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    model, options = make_llm()
    heard = await converse(model, options, "Bye!")
    assert heard.text == GOODBYE
    assert heard.calls == []


async def test_script_rules() -> None:
    script = Script([("hello", ["Hi."])], ["Default."], after_tool=["Done."])
    assert await script({"messages": [{"role": "user", "content": "HELLO there"}]}) == ["Hi."]
    parts = [{"type": "text", "text": "well, hello"}]
    assert await script({"messages": [{"role": "user", "content": parts}]}) == ["Hi."]
    assert await script({"messages": [{"role": "user", "content": "what?"}]}) == ["Default."]
    assert await script({"messages": [{"role": "system", "content": "hello"}]}) == ["Default."]
    after = [{"role": "user", "content": "hello"}, {"role": "tool", "content": "ok"}]
    assert await script({"messages": after}) == ["Done."]
    assert await Script([], ["x"])({"messages": after}) == []


# --- (c) a bad key ----------------------------------------------------------------------------


async def test_a_wrong_key_is_a_401_at_once(standin: OpenAIStandIn, make_llm: MakeLLM) -> None:
    wrong = "sk-proj-" + "Q7f" * 14 + "wxyz"
    model, options = make_llm(key=wrong)
    started = time.monotonic()

    with pytest.raises(APIStatusError) as raised:
        await converse(model, options)

    assert time.monotonic() - started < 1.0
    assert raised.value.status_code == 401
    assert not raised.value.retryable
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_api_key"
    assert body["message"].startswith(f"Incorrect API key provided: {mask_key(wrong)}.")
    assert mask_key(wrong) == "sk-proj-" + "*" * (len(wrong) - 12) + "wxyz"
    assert wrong not in str(raised.value)
    assert [r.outcome for r in standin.received] == ["rejected"]


@given(st.text(string.ascii_letters + string.digits + "-_", min_size=1))
def test_a_masked_key_never_shows_the_whole_key(key: str) -> None:
    masked = mask_key(key)
    assert len(masked) == len(key)
    assert "*" in masked
    assert sum(a == b for a, b in zip(masked, key, strict=True)) <= 12


# --- (d) the messages' structure against OpenAI's documented samples -------------------------


def shape(value: Any) -> Any:
    """Keys and value types, recursively; a list's distinct element shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            if (s := shape(item)) not in shapes:
                shapes.append(s)
        return shapes
    return type(value).__name__


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


async def post(
    standin: OpenAIStandIn, body: dict[str, Any], key: str = KEY
) -> tuple[int, str, list[str]]:
    """A raw request as OpenAI's reference shows it: status, content type, SSE data lines (or
    the whole body as one line)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        asyncio.timeout(5),
        aiohttp.ClientSession() as session,
        session.post(f"{standin.url}/chat/completions", json=body, headers=headers) as response,
    ):
        text = await response.text()
        lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
        return response.status, response.content_type, lines


HELLO = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ],
}


async def test_streamed_chunks_have_the_documented_structure(standin: OpenAIStandIn) -> None:
    status, content_type, lines = await post(standin, {**HELLO, "stream": True})
    assert (status, content_type) == (200, "text/event-stream")
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert shape(chunks[0]) == shape(SAMPLES["chunk_first"]["message"])
    assert all(shape(c) == shape(SAMPLES["chunk_content"]["message"]) for c in chunks[1:-1])
    assert shape(chunks[-1]) == shape(SAMPLES["chunk_last"]["message"])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == REPLY
    assert len({(c["id"], c["created"]) for c in chunks}) == 1


async def test_the_usage_chunk_has_the_documented_structure(standin: OpenAIStandIn) -> None:
    body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    _, _, lines = await post(standin, body)
    chunks = [json.loads(line) for line in lines[:-1]]
    *others, usage_chunk = chunks
    usage_sample = {
        **SAMPLES["chunk_last"]["message"],
        "choices": [],
        "usage": SAMPLES["completion"]["message"]["usage"],
    }
    assert shape(usage_chunk) == shape(usage_sample)
    assert all(c.pop("usage") is None for c in others)  # "but with a null value"
    assert shape(others[-1]) == shape(SAMPLES["chunk_last"]["message"])
    assert usage_chunk["usage"]["completion_tokens"] == len(split_tokens(REPLY))


async def test_streamed_tool_calls_have_the_documented_structure(standin: OpenAIStandIn) -> None:
    body = {**HELLO, "stream": True, "tools": [WEATHER_TOOL]}
    body["messages"] = [{"role": "user", "content": "What's the weather like in Paris today?"}]
    _, _, lines = await post(standin, body)
    chunks = [json.loads(line) for line in lines[:-1]]
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-1]]
    samples = SAMPLES["tool_call_deltas"]["messages"]
    assert shape(deltas[0]) == shape(samples[0])
    assert all(shape(d) == shape(without_nulls(samples[1])) for d in deltas[1:])
    fragments = [d[0]["function"]["arguments"] for d in deltas]
    assert fragments == [s[0]["function"]["arguments"] for s in samples]  # the same splitting
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_whole_completion_models_and_errors_have_the_documented_structure(
    standin: OpenAIStandIn,
) -> None:
    status, content_type, lines = await post(standin, HELLO)
    assert (status, content_type) == (200, "application/json")
    completion = json.loads(lines[0])
    assert shape(completion) == shape(SAMPLES["completion"]["message"])
    assert completion["choices"][0]["message"]["content"] == REPLY

    status, _, lines = await post(standin, HELLO, key="sk-not-" + "the-right-key" * 3)
    assert status == 401
    assert shape(json.loads(lines[0])) == shape(SAMPLES["error_401"]["message"])

    async with (
        asyncio.timeout(5),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
    ):
        async with session.get(f"{standin.url}/models") as response:
            assert shape(await response.json()) == shape(SAMPLES["models"]["message"])
        async with session.get(f"{standin.url}/nothing") as response:
            assert response.status == 404
            error_keys = SAMPLES["error_401"]["message"]["error"].keys()
            assert (await response.json())["error"].keys() == error_keys  # `code` is null

    status, _, lines = await post(standin, {"model": "gpt-4o-mini"})
    assert status == 400
    assert json.loads(lines[0])["error"]["param"] == "messages"
    outcomes = ["completed", "rejected", "completed", "rejected", "rejected"]
    assert [r.outcome for r in standin.received] == outcomes


@given(st.text())
def test_tokens_join_back_to_the_text(text: str) -> None:
    assert "".join(split_tokens(text)) == text


def test_tokens_split_as_in_openais_example() -> None:
    assert split_tokens("Hello! How are you today?") == [
        "Hello",
        "!",
        " How",
        " are",
        " you",
        " today",
        "?",
    ]


# --- (e) each fault as the plugin sees it, with the worker's connect options -----------------


@pytest.mark.parametrize(
    ("status", "raised", "attempts"),
    [(400, APIStatusError, 1), (429, APIConnectionError, 2), (500, APIConnectionError, 2)],
)
async def test_an_error_status(
    standin: OpenAIStandIn,
    make_llm: MakeLLM,
    status: int,
    raised: type[Exception],
    attempts: int,
) -> None:
    """A client error fails at once; 429 and 5xx are retried (`retries`), then fail."""
    standin.faults.status = status
    model, options = make_llm()
    started = time.monotonic()
    with pytest.raises(raised) as error:
        await converse(model, options)
    assert time.monotonic() - started < 1.0
    cause = error.value if attempts == 1 else error.value.__cause__
    assert isinstance(cause, APIStatusError)
    assert cause.status_code == status
    assert [r.outcome for r in standin.received] == ["rejected"] * attempts


async def test_a_drop_before_the_answer_is_retried(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    standin.faults.drop_after = 0.0
    model, options = make_llm()
    heard = await converse(model, options)
    assert heard.text == REPLY
    assert await settled(standin, 2) == ["dropped", "completed"]


async def test_a_drop_mid_reply_fails_the_stream(standin: OpenAIStandIn, make_llm: MakeLLM) -> None:
    """Once text reached the caller the plugin does not retry: the reply would repeat."""
    standin.token_interval = 0.03
    standin.faults.drop_after = 0.15
    model, options = make_llm()
    heard = Heard()
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        await converse(model, options, "Say something long.", heard=heard)
    assert time.monotonic() - started < 1.0
    completion = standin.completions[0]
    assert 0 < completion.tokens_sent < completion.tokens
    assert heard.text == completion.text_sent
    assert await settled(standin, 1) == ["dropped"]


async def test_a_malformed_message_is_retried(standin: OpenAIStandIn, make_llm: MakeLLM) -> None:
    standin.faults.malformed = True
    model, options = make_llm()
    heard = await converse(model, options)
    assert heard.text == REPLY
    assert await settled(standin, 2) == ["dropped", "completed"]


async def test_no_answer_times_out_each_attempt(standin: OpenAIStandIn, make_llm: MakeLLM) -> None:
    standin.faults.no_answer = True
    model, options = make_llm(timeout=0.4)
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        await converse(model, options)
    assert 0.8 <= time.monotonic() - started < 2.0  # two attempts of `timeout` each
    assert await settled(standin, 2) == ["dropped", "dropped"]


async def test_latency_delays_the_first_token(standin: OpenAIStandIn, make_llm: MakeLLM) -> None:
    standin.first_token = 0.1
    standin.faults.latency = 0.2
    model, options = make_llm()
    started = time.monotonic()
    heard = await converse(model, options)
    assert heard.first_text_at is not None
    assert 0.3 <= heard.first_text_at - started < 1.0
    assert heard.text == REPLY


# --- (f) a reply the client stops reading ----------------------------------------------------


async def test_closing_the_stream_early_cancels_the_request(
    standin: OpenAIStandIn, make_llm: MakeLLM
) -> None:
    standin.token_interval = 0.02
    model, options = make_llm()
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="Say something long.")
    read = 0
    async with asyncio.timeout(5), model.chat(chat_ctx=ctx, conn_options=options) as stream:
        async for chunk in stream:
            read += bool(chunk.delta and chunk.delta.content)
            if read == 3:
                break

    assert await settled(standin, 1) == ["cancelled"]
    completion = standin.completions[0]
    assert read <= completion.tokens_sent < completion.tokens
    assert LONG.startswith(completion.text_sent)


# --- LocalLLMResponder: another OpenAI-compatible server writes the replies ------------------


async def test_local_llm_responder_relays_another_servers_answer(make_llm: MakeLLM) -> None:
    inner_script = Script([], ["From the other model.", ToolCall("end_call")])
    async with (
        OpenAIStandIn(api_key="local", responder=inner_script) as inner,
        OpenAIStandIn(api_key=KEY, responder=LocalLLMResponder(inner.url)) as outer,
    ):
        model, options = make_llm(url=outer.url)
        heard = await converse(model, options, tools=await end_call_tools())

    assert heard.text == "From the other model."
    assert [c.name for c in heard.calls] == ["end_call"]
    relayed = inner.received[-1].body
    assert "stream" not in relayed
    assert relayed["messages"] == outer.received[-1].body["messages"]
    assert inner.completions[-1].outcome == "completed"
