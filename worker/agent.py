"""The LiveKit `Agent` for one call: rendered instructions, the greeting, the `end_call` tool."""

from __future__ import annotations

from collections.abc import Callable

from livekit.agents import Agent, RunContext, StopResponse, function_tool


class VoiceAgent(Agent):
    """Greets first (a fixed line, spoken without waiting for the LLM) and can hang up."""

    def __init__(
        self,
        *,
        instructions: str,
        greeting: str,
        greeting_interruptible: bool,
        on_end_call: Callable[[], None],
    ) -> None:
        super().__init__(instructions=instructions)
        self._greeting = greeting
        self._greeting_interruptible = greeting_interruptible
        self._on_end_call = on_end_call

    async def on_enter(self) -> None:
        self.session.say(self._greeting, allow_interruptions=self._greeting_interruptible)

    @function_tool
    async def end_call(self, ctx: RunContext[None]) -> None:
        """End the phone call. Call this only after you said goodbye: when the caller says
        goodbye, asks to hang up, or the conversation is clearly over."""
        await ctx.wait_for_playout()  # let the goodbye that came with this call finish playing
        # end once this turn is complete, so its transcript reaches the client first
        ctx.speech_handle.add_done_callback(lambda _: self._on_end_call())
        raise StopResponse()  # no further reply after hanging up
