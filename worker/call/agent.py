"""The LiveKit `Agent` for one call: rendered instructions, the greeting, the call's tools
(`worker.tools`), its turn-taking in the STT node, and a line of its own when the LLM has
nothing to say after a tool failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents import (
    NOT_GIVEN,
    Agent,
    APIConnectOptions,
    FlushSentinel,
    ModelSettings,
    llm,
    stt,
)

from worker.audio_files import Audio
from worker.call.clips import clip_frames
from worker.call.greetings import GreetingCapture

if TYPE_CHECKING:
    from worker.turns.call_turns import CallTurns

logger = logging.getLogger("worker.agent")

WARM_OPTIONS = APIConnectOptions(max_retry=0, timeout=60.0)
"""Reading the prompt is the whole request (one token out): it may take its time, once."""


async def read_prompt(
    model: llm.LLM[Any], context: llm.ChatContext, tools: list[llm.Tool], greeting: str
) -> None:
    """Have `model` read a call's prompt once, one token out, so it is cached before the
    caller's first question. The greeting is what the session puts after the instructions once
    it is said: read now, the first question's prompt is all cached but the question itself."""
    context = context.copy()
    context.add_message(role="assistant", content=greeting)
    try:
        async with model.chat(
            chat_ctx=context,
            tools=tools,
            extra_kwargs={"max_completion_tokens": 1},
            conn_options=WARM_OPTIONS,
        ) as stream:
            async for _ in stream:
                pass
    except Exception as exc:  # a cache warm-up: never worth failing a call for
        logger.debug("could not warm the LLM's prompt: %s", exc)


class VoiceAgent(Agent):
    """Greets first (a fixed line, spoken without waiting for the LLM), then answers with its
    tools."""

    def __init__(
        self,
        *,
        instructions: str,
        greeting: str,
        greeting_interruptible: bool,
        tools: Sequence[llm.Tool | llm.Toolset],
        tool_error: str | None = None,
        max_history: int | None = None,
        warm_prompt: bool = False,
        turns: CallTurns | None = None,
        before_greeting: Callable[[], Awaitable[None]] | None = None,
        greeting_audio: Audio | None = None,
        greeting_capture: GreetingCapture | None = None,
    ) -> None:
        """`tool_error`: said when the LLM answers a failed tool with nothing;
        `before_greeting`: run once the session's audio is set up, before the first word (the
        call's recording starts there, so it has the greeting); `greeting_audio`: the greeting
        as the agent's voice rendered it before (`greetings.py`), played instead of the TTS;
        `greeting_capture`: otherwise, what keeps this call's rendering for the next calls."""
        super().__init__(instructions=instructions, tools=list(tools))
        self._turns = turns
        self._greeting = greeting
        self._greeting_interruptible = greeting_interruptible
        self._tool_error = tool_error
        self._max_history = max_history
        self._warm_prompt = warm_prompt
        self._warming: asyncio.Task[None] | None = None
        self._before_greeting = before_greeting
        self._greeting_audio = greeting_audio
        self._greeting_capture = greeting_capture

    async def on_enter(self) -> None:
        if self._before_greeting is not None:
            await self._before_greeting()
        audio = self._greeting_audio
        self.session.say(
            self._greeting,
            audio=clip_frames(audio) if audio is not None else NOT_GIVEN,
            allow_interruptions=self._greeting_interruptible,
        )
        if self._warm_prompt and isinstance(self.session.llm, llm.LLM):
            self._warming = asyncio.create_task(self._read_instructions(self.session.llm))

    async def _read_instructions(self, model: llm.LLM[Any]) -> None:
        """Have the LLM read the instructions, tools and greeting while the greeting plays (the
        1.5B takes 4-14 s to read them on 2 cores, unless its prompt snapshot has them)."""
        tools = [tool for tool in self.tools if isinstance(tool, llm.Tool)]
        await read_prompt(model, self.chat_ctx, tools, self._greeting)

    def stt_node(
        self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
    ) -> (
        AsyncIterable[stt.SpeechEvent | str]
        | Coroutine[Any, Any, AsyncIterable[stt.SpeechEvent | str]]
        | Coroutine[Any, Any, None]
    ):
        """LiveKit's STT step, through the call's turn-taking (which hears the audio for the
        end-of-turn model and holds back acknowledgements over the agent)."""
        if self._turns is None:
            return Agent.default.stt_node(self, audio, model_settings)
        return self._turns.stt_node(self, audio, model_settings)

    def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> (
        AsyncIterable[rtc.AudioFrame]
        | Coroutine[Any, Any, AsyncIterable[rtc.AudioFrame]]
        | Coroutine[Any, Any, None]
    ):
        """The default TTS step; its first rendering is kept for the next calls when it is the
        greeting (`greeting_capture`)."""
        capture, self._greeting_capture = self._greeting_capture, None
        if capture is None:
            return Agent.default.tts_node(self, text, model_settings)
        return capture.tee(Agent.default.tts_node(self, capture.read(text), model_settings))

    def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> (
        AsyncIterable[llm.ChatChunk | str | FlushSentinel]
        | Coroutine[Any, Any, AsyncIterable[llm.ChatChunk | str | FlushSentinel]]
        | Coroutine[Any, Any, str]
        | Coroutine[Any, Any, llm.ChatChunk]
        | Coroutine[Any, Any, None]
    ):
        """The default LLM step, on the last `max_history` items only (small models loop on
        long contexts; the instructions are always kept), with `tool_error` when it answers a
        failed tool with nothing."""
        after_failure = _after_failed_tool(chat_ctx)
        if self._max_history is not None:
            chat_ctx = chat_ctx.copy().truncate(max_items=self._max_history)
        answer = Agent.default.llm_node(self, chat_ctx, tools, model_settings)
        if not after_failure or self._tool_error is None:
            return answer
        return _or_line(answer, self._tool_error)


def _after_failed_tool(chat_ctx: llm.ChatContext) -> bool:
    """Whether the context ends with tool results, one of them an error."""
    results = []
    for item in reversed(chat_ctx.items):
        if item.type == "function_call_output":
            results.append(item)
        elif item.type != "function_call":
            break
    return any(result.is_error for result in results)


async def _or_line(
    answer: AsyncIterable[llm.ChatChunk | str | FlushSentinel], line: str
) -> AsyncIterator[llm.ChatChunk | str | FlushSentinel]:
    """`answer`, or `line` when it holds neither words nor a tool call."""
    said = False
    async for chunk in answer:
        if isinstance(chunk, str):
            said = said or bool(chunk.strip())
        elif isinstance(chunk, llm.ChatChunk) and chunk.delta is not None:
            said = said or bool((chunk.delta.content or "").strip() or chunk.delta.tool_calls)
        yield chunk
    if not said:
        logger.info("the LLM said nothing after a failed tool: saying the agent's line")
        yield line
