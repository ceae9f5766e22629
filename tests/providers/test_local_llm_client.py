"""The local LLM as calls reach it (`ToolSafeLLM` around the real OpenAI plugin, built by the
worker's own `build_providers`), against a stand-in of llama.cpp's server that refuses an answer
naming a tool the request did not offer, as llama.cpp does: HTTP 500 before a non-streamed
reply, an error event with code 500 in a streamed one. The request is asked once more without
tools, the caller gets the words, and the session sees no error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import APIConnectOptions, APIError, llm

from tests.harness import end_call_tools, make_agent
from worker.call.pipeline import load_vad
from worker.config import AgentRegistry
from worker.local.prompt_snapshots import snapshot_in_background, snapshot_prompts
from worker.local.runtime import LocalRuntime
from worker.providers import LOCAL_REPEAT_PENALTY, AnyLLM, build_providers, snapshot_name
from worker.settings import VADSettings

REFUSAL = {
    "code": 500,
    "message": "The model produced output that does not match the expected peg-native format",
    "type": "server_error",
}
ANSWER = "Sure, what is your order number?"
SCREEN_ANSWER = f"**Sure!** Let me help. {ANSWER}\n\n1. Your name\n2. [Insert Order Number]"
"""What the 1.5B writes for a screen: a short answer, then a list of form fields."""


class LlamaCppStandIn:
    """`/v1/chat/completions`: with tools, the model "names an unknown tool" and the request
    fails (`refuse`: "status", "event", or "after_words": an event after some words); without
    tools, it answers in words."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.broken = False
        """Every request fails, with tools or without."""
        self.requests: list[dict[str, Any]] = []
        self.snapshots: set[str] = set()
        self.slot_actions: list[tuple[str, str, str]] = []
        """(slot, action, file name) of each `/slots/{id}` request, in order."""

    async def slots(self, request: web.Request) -> web.Response:
        """llama.cpp's slot save and restore: a restore of a file never saved is a 400."""
        action, name = request.query["action"], (await request.json())["filename"]
        self.slot_actions.append((request.match_info["slot"], action, name))
        if action == "save":
            self.snapshots.add(name)
        elif name not in self.snapshots:
            return web.json_response({"error": {"code": 400}}, status=400)
        return web.json_response({"id_slot": int(request.match_info["slot"]), "filename": name})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.refuse == "screen":
            return await self.screen_answer(request)
        if self.broken or (body.get("tools") and self.refuse == "status"):
            return web.json_response({"error": REFUSAL}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if not body.get("tools") or self.refuse == "after_words":
            for piece in (ANSWER[:5], ANSWER[5:]):
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "local",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if body.get("tools"):
            await response.write(f"data: {json.dumps({'error': REFUSAL})}\n\n".encode())
        else:
            await response.write(b"data: [DONE]\n\n")
        return response

    async def screen_answer(self, request: web.Request) -> web.StreamResponse:
        """`SCREEN_ANSWER` a few characters at a time, then a parsed call of `end_call`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        call = {"index": 0, "id": "call_1", "type": "function"}
        call["function"] = {"name": "end_call", "arguments": "{}"}
        pieces = [{"content": SCREEN_ANSWER[i : i + 4]} for i in range(0, len(SCREEN_ANSWER), 4)]
        ends = [None] * len(pieces) + ["tool_calls"]
        for delta, end in zip([*pieces, {"tool_calls": [call]}], ends, strict=True):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "local",
                "choices": [{"index": 0, "delta": delta, "finish_reason": end}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture(params=["status", "event"])
async def llama_cpp(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LlamaCppStandIn, str]]:
    stand_in = LlamaCppStandIn(request.param)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stand_in.chat)
    app.router.add_post("/slots/{slot}", stand_in.slots)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield stand_in, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def local_llm(url: str) -> AnyLLM:
    agent = make_agent(llm=[{"provider": "local"}])
    runtime = LocalRuntime(vad=load_vad(VADSettings()), llm_url=url)
    env = {"DEEPGRAM_API_KEY": "dg", "ELEVEN_API_KEY": "el"}
    return build_providers(agent, env, runtime).llm


def chat_context() -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are a support agent.")
    ctx.add_message(role="user", content="Hi, I'd like to check on my order.")
    return ctx


async def test_an_unparsable_tool_call_is_asked_again_without_tools(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    stand_in, url = llama_cpp
    model = local_llm(url)
    errors: list[Any] = []
    model.on("error", errors.append)
    text = ""
    async with model.chat(
        chat_ctx=chat_context(),
        tools=await end_call_tools(),
        conn_options=APIConnectOptions(max_retry=1, retry_interval=0, timeout=5),
    ) as stream:
        async for chunk in stream:
            if chunk.delta is not None:
                text += chunk.delta.content or ""
    assert text == ANSWER
    assert [bool(r.get("tools")) for r in stand_in.requests] == [True, False], (
        "one refused request with the tools, then one without: no blind retry of the refusal"
    )
    assert "tool_choice" not in stand_in.requests[1]
    assert errors == [], "the session never hears of the refusal"


async def test_words_before_an_unparsable_tool_call_are_the_answer(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    stand_in, url = llama_cpp
    stand_in.refuse = "after_words"
    model = local_llm(url)
    errors: list[Any] = []
    model.on("error", errors.append)
    stream = model.chat(
        chat_ctx=chat_context(),
        tools=await end_call_tools(),
        conn_options=APIConnectOptions(max_retry=1, retry_interval=0, timeout=5),
    )
    answer = await stream.collect()
    await stream.aclose()
    assert answer.text == ANSWER, "what the caller already heard stays the answer"
    assert len(stand_in.requests) == 1, "not asked again: the words were spoken"
    assert errors == []


async def test_only_the_first_sentences_are_spoken_and_a_later_tool_call_still_counts(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    """The shipped agent's local answers are capped at two sentences of their first line, and
    the answer is still read to its end, so the tool call after the words is made."""
    stand_in, url = llama_cpp
    stand_in.refuse = "screen"
    model = local_llm(url)
    stream = model.chat(
        chat_ctx=chat_context(),
        tools=await end_call_tools(),
        conn_options=APIConnectOptions(max_retry=0, timeout=5),
    )
    answer = await stream.collect()
    await stream.aclose()
    assert answer.text == "Sure! Let me help."
    assert [call.name for call in answer.tool_calls] == ["end_call"]


async def test_a_failure_without_tools_is_reported_as_before(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    stand_in, url = llama_cpp
    stand_in.broken = True
    model = local_llm(url)
    errors: list[Any] = []
    model.on("error", errors.append)
    stream = model.chat(
        chat_ctx=chat_context(),
        conn_options=APIConnectOptions(max_retry=1, retry_interval=0, timeout=5),
    )
    with pytest.raises(APIError):
        await stream.collect()
    await stream.aclose()
    assert [e.recoverable for e in errors] == [True, False], "retried once, then given up"
    assert [bool(r.get("tools")) for r in stand_in.requests] == [False, False]


async def test_answers_are_capped_and_the_prompt_warm_up_asks_for_one_token(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    """The agent's `max_tokens` caps each answer, and a request's own limit wins: the plugin
    would otherwise send its option over it, and the warm-up would generate a whole answer
    that holds the server while the caller asks."""
    stand_in, url = llama_cpp
    model = local_llm(url)
    for extra in ({}, {"max_completion_tokens": 1}):
        async with model.chat(
            chat_ctx=chat_context(),
            conn_options=APIConnectOptions(max_retry=0, timeout=5),
            extra_kwargs=extra,
        ) as stream:
            async for _ in stream:
                pass
    assert [r["max_completion_tokens"] for r in stand_in.requests] == [80, 1]


async def test_each_call_keeps_its_own_slot_of_the_server(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    """Every request of a call goes to the call's slot (its cached prompt), a second call gets
    another, and a closed call's slot is free again."""
    stand_in, url = llama_cpp
    first, second = local_llm(url), local_llm(url)
    for model in (first, first, second):
        async with model.chat(
            chat_ctx=chat_context(), conn_options=APIConnectOptions(max_retry=0, timeout=5)
        ) as stream:
            async for _ in stream:
                pass
    slots = [r["id_slot"] for r in stand_in.requests]
    assert slots[0] == slots[1] != slots[2]
    assert all(r["repeat_penalty"] == LOCAL_REPEAT_PENALTY for r in stand_in.requests)
    await first.aclose()
    third = local_llm(url)
    async with third.chat(chat_ctx=chat_context()) as stream:
        async for _ in stream:
            pass
    assert stand_in.requests[-1]["id_slot"] == slots[0]
    await second.aclose()
    await third.aclose()


async def test_a_call_starts_from_its_agents_prompt_snapshot(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    """Each call restores the agent's snapshot into its own slot once, before its first request
    (none yet: it reads the prompt itself), and never saves one: its slot may already hold the
    caller's words."""
    stand_in, url = llama_cpp
    first = local_llm(url)
    for _ in range(2):
        async with first.chat(
            chat_ctx=chat_context(), conn_options=APIConnectOptions(max_retry=0, timeout=5)
        ) as stream:
            async for _ in stream:
                pass
    stand_in.snapshots.add(name := next(n for _, _, n in stand_in.slot_actions))
    second = local_llm(url)
    async with second.chat(
        chat_ctx=chat_context(), conn_options=APIConnectOptions(max_retry=0, timeout=5)
    ) as stream:
        async for _ in stream:
            pass
    one, two = (str(r["id_slot"]) for r in stand_in.requests[::2])
    assert stand_in.slot_actions == [(one, "restore", name), (two, "restore", name)]
    assert one != two
    await first.aclose()
    await second.aclose()


def test_an_edited_agent_gets_another_snapshot() -> None:
    """A snapshot is of one agent as configured: another prompt never restores it (it would
    only be reused as far as it matches, but would never be replaced)."""

    def name(instructions: str) -> str:
        agent = make_agent(llm=[{"provider": "local"}], instructions=instructions)
        return snapshot_name(agent)

    assert name("You are Ava.") == name("You are Ava.") != name("You are Bob.")


async def test_setup_leaves_each_local_agents_prompt_snapshot(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    """`setup` reads each local agent's prompt as its calls will (instructions with the default
    placeholder values, the greeting after them, the end_call tool, one token out) and saves its
    snapshot; run again, it only restores it."""
    stand_in, url = llama_cpp
    agent = make_agent(
        llm=[{"provider": "local"}],
        instructions="You help {name}.",
        greeting="Hi {name}!",
        placeholders={"name": "there"},
    )
    registry = AgentRegistry([agent])
    assert list(await snapshot_prompts(registry, url)) == [agent.id]
    first = stand_in.requests[0]
    assert [(m["role"], m["content"]) for m in first["messages"]] == [
        ("system", "You help there."),
        ("assistant", "Hi there!"),
    ]
    assert [t["function"]["name"] for t in first["tools"]] == ["end_call"]
    assert first["max_completion_tokens"] == 1
    await snapshot_prompts(registry, url)
    name = snapshot_name(agent)
    assert [(action, file) for _, action, file in stand_in.slot_actions] == [
        ("restore", name),
        ("save", name),
        ("restore", name),
    ]


async def test_a_worker_start_makes_missing_snapshots_in_the_background(
    llama_cpp: tuple[LlamaCppStandIn, str],
) -> None:
    stand_in, url = llama_cpp
    agent = make_agent(llm=[{"provider": "local"}])
    thread = snapshot_in_background(AgentRegistry([agent]), url)
    await asyncio.to_thread(thread.join, 30)
    assert stand_in.snapshots == {snapshot_name(agent)}
