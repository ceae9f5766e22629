"""One call, whatever carries it: events to the client, limits, goodbyes, and a single ending.

`run_call` takes its transport as a parameter. A transport brings the caller (audio in, audio out
with pause/resume through a `TranscriptSynchronizer`), delivers client events, reports what the
caller does (data packets, leaving) and releases what it holds when the call ends. A LiveKit room
is the production transport; file and test transports reuse everything here unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from livekit.agents import NOT_GIVEN, AgentSession, llm, stt, tts, vad
from livekit.agents.llm import ChatMessage
from livekit.agents.voice import events as lk_events
from livekit.agents.voice.speech_handle import SpeechHandle

from worker.call.agent import VoiceAgent
from worker.call.clips import clip_frames, load_clip
from worker.call.greetings import GreetingCache
from worker.call.outbox import INTERIM_MAX_CHARS, Outbox
from worker.call.pipeline import build_session
from worker.config import AgentConfig
from worker.crash_guard import CallLedger
from worker.dispatch import with_call_limit
from worker.logs import ContextLogger
from worker.placeholders import parse_metadata, placeholder_values
from worker.protocol import TOPIC, ControlError, EndReason, EventEncoder, parse_control
from worker.providers import Providers
from worker.records.recording import CallRecording
from worker.records.report import CallRecorder, RecordTarget
from worker.settings import RecordingSettings
from worker.tools.calls import CallHooks, CallTools, ToolStatus
from worker.tools.failure import ToolFailedError
from worker.turns.call_turns import CallTurns
from worker.turns.detector import ModelRunner

logger = logging.getLogger("worker.call")

GOODBYE_TIMEOUT = 10.0
"""A goodbye the worker speaks on its own (limits, shutdown) never holds the call longer."""
FLUSH_TIMEOUT = 2.0
"""How long the last events may take to leave before the transport is released anyway."""
SETTLE_TIMEOUT = 0.5
"""How long an ending call waits for interrupted speech to report what was played."""
VAD_SILENCE = 0.3
"""The VAD's silence window, for a VAD that does not report its own."""
INPUT_SETTLE = 2.5
"""Seconds of quiet after a recorded caller's audio is over before the call ends: covers a last
utterance still being transcribed when the recording ends."""


@dataclass(frozen=True)
class Caller:
    identity: str
    attributes: Mapping[str, str] = field(default_factory=dict)


class CallListener(ABC):
    """What a transport reports about the caller's side of the call."""

    @abstractmethod
    def data_received(self, data: bytes, *, sender: str | None, topic: str) -> None: ...

    @abstractmethod
    def caller_left(self, detail: str) -> None: ...

    @abstractmethod
    def transport_lost(self, reason: EndReason, detail: str) -> None: ...

    @abstractmethod
    def input_ended(self) -> None:
        """The caller's audio is over for good (a recording): end once the agent is done."""


class CallTransport(ABC):
    """How a call meets its caller."""

    label = "transport"
    """Names the kind of transport in log lines."""

    def __init__(self) -> None:
        self.listener: CallListener | None = None

    @abstractmethod
    async def wait_for_caller(self, timeout: float) -> Caller | None:
        """The caller once present, or None if nobody came within `timeout` seconds."""

    @abstractmethod
    async def start(self, session: AgentSession[Any], agent: VoiceAgent, caller: Caller) -> None:
        """Wire audio in and out for `caller` and start `session` with `agent`."""

    @abstractmethod
    async def send(self, packet: bytes) -> None:
        """Deliver one client event, reliably and in order."""

    @abstractmethod
    async def close(self, reason: EndReason | None) -> None:
        """Release the transport (leave the room, close files). Called once, last."""

    def check_phone_line(self) -> None:
        """Raises `ToolFailedError` unless the caller is on a phone line (transfer, keys)."""
        raise ToolFailedError(f"a {self.label} call has no phone line")

    async def transfer(self, to: str) -> None:
        """Hand the caller to `to` (a number or SIP URI); `ToolFailedError` when it fails."""
        raise NotImplementedError(f"{self.label} transfers to {to}")

    async def send_dtmf(self, digits: str) -> None:
        """Press `digits` on the call's keypad; `ToolFailedError` when it fails."""
        raise NotImplementedError(f"{self.label} sends {digits}")


@dataclass
class CallSetup:
    """Everything a call needs besides its transport."""

    agent: AgentConfig
    call_id: str
    vad: vad.VAD
    providers: Providers
    metadata: str = ""
    """The dispatch metadata (a JSON object whose keys fill placeholders)."""
    shutdown: asyncio.Event | None = None
    """Set when the worker is shutting down: the call says goodbye and ends."""
    log_fields: dict[str, str] = field(default_factory=dict)
    turn_runner: ModelRunner | None = None
    """The process's end-of-turn model (agents with `smart_turn`; None: turns end on silence)."""
    ledger: CallLedger | None = None
    """What the main process reads if this process dies mid-call (see `crash_guard`)."""
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    """Where the tools' `${VAR}` secrets come from."""
    room: str = ""
    user_id: str | None = None
    records: RecordTarget | None = None
    """Where the call's record goes (`worker/records`); None: it is kept in memory only."""
    recording: RecordingSettings | None = None
    """Where the call's recording goes; None: the call is not recorded."""
    greetings: GreetingCache | None = None
    """Where rendered greetings are kept for the next calls; None: each call renders its own."""


@dataclass
class CallResult:
    reason: EndReason
    duration: float
    user_turns: int
    agent_turns: int
    interruptions: int
    record: dict[str, Any] | None = None
    """The call's `call.ended` record (`worker/records/report.py`)."""


async def run_call(setup: CallSetup, transport: CallTransport) -> CallResult | None:
    """Run one call to its end over `transport`; None if the caller never joined."""
    setup = replace(setup, agent=with_call_limit(setup.agent, setup.metadata))
    log = ContextLogger(logger, {"call_id": setup.call_id, **setup.log_fields})
    turns = CallTurns(
        setup.agent,
        runner=setup.turn_runner,
        vad_silence=getattr(setup.vad, "min_silence_duration", None) or VAD_SILENCE,
    )
    session = build_session(setup.agent, setup.providers, setup.vad, turns.turn_detection)
    turns.attach(session)
    setup.providers.tts.prewarm()  # connect to the TTS while the caller is still joining
    tools = CallTools(setup.agent, setup.env)
    building = asyncio.create_task(tools.build())  # and to the MCP servers

    try:
        caller = await transport.wait_for_caller(setup.agent.limits.join_timeout)
    except Exception:
        log.exception("could not reach the caller over %s", transport.label)
        caller = None
    else:
        if caller is None:
            log.warning(
                "no caller joined within %ss, ending without a call",
                setup.agent.limits.join_timeout,
            )
    if caller is None:
        if setup.ledger is not None:
            setup.ledger.done()  # nobody to tell
        building.cancel()
        await asyncio.gather(building, return_exceptions=True)
        await tools.aclose()
        await _close_providers(setup.providers)
        await transport.close(None)
        return None

    values = placeholder_values(setup.agent, metadata=setup.metadata, attributes=caller.attributes)
    lines = {
        name: setup.agent.render(text, values)
        for name, text in setup.agent.messages.lines().items()
    }
    recorder = CallRecorder(
        setup.records,
        call_id=setup.call_id,
        agent=setup.agent,
        room=setup.room,
        user_id=setup.user_id,
        metadata=parse_metadata(setup.metadata, where="dispatch metadata"),
    )
    call = Call(
        setup,
        recorder=recorder,
        session=session,
        transport=transport,
        caller=caller,
        log=log,
        lines=lines,
        turns=turns,
    )
    tools.hooks = call.tool_hooks()
    call.tools = tools
    greeting = setup.agent.render(setup.agent.greeting, values)
    cached, capture = (None, None)
    if setup.greetings is not None:
        cached, capture = setup.greetings.for_call(setup.agent, greeting, setup.providers.tts)
        if cached is not None:
            log.info("greeting played from the cache (%.1f s of audio)", cached.duration)
    try:
        agent = VoiceAgent(
            instructions=setup.agent.render(setup.agent.instructions, values),
            greeting=greeting,
            greeting_interruptible=setup.agent.turn_taking.greeting_interruptible,
            tools=await building,
            tool_error=lines["tool_error"],
            max_history=setup.agent.llm[0].max_history,
            warm_prompt=getattr(setup.agent.llm[0], "warm_prompt", False),
            turns=turns,
            before_greeting=call.start_recording,
            greeting_audio=cached,
            greeting_capture=capture,
        )
        return await call.run(agent)
    finally:  # the session leaves its providers open: they hold connections and an LLM slot
        await tools.aclose()
        await _close_providers(setup.providers)


async def _close_providers(providers: Providers) -> None:
    for provider in (providers.stt, providers.llm, providers.tts):
        with contextlib.suppress(Exception):
            await provider.aclose()


@dataclass
class _Ending:
    reason: EndReason
    detail: str
    goodbye: str | None
    clip: Path | None


class Call(CallListener):
    """Turns session events into client events and owns the call's one ending."""

    def __init__(
        self,
        setup: CallSetup,
        *,
        recorder: CallRecorder,
        session: AgentSession[Any],
        transport: CallTransport,
        caller: Caller,
        log: ContextLogger,
        lines: dict[str, str],
        turns: CallTurns,
    ) -> None:
        self.setup = setup
        self.recorder = recorder
        self.turns = turns
        self.session = session
        self.transport = transport
        self.caller = caller
        self.log = log
        self.lines = lines
        """The agent's fixed lines (`messages` in the config), placeholders filled."""
        self._outbox = Outbox(EventEncoder(setup.call_id), transport.send, log, setup.ledger)
        self._ending: asyncio.Future[_Ending] = asyncio.get_running_loop().create_future()
        self._started_at = time.monotonic()
        # idle tracking: a timer runs only while neither side speaks nor the agent thinks
        self._agent_state = "initializing"
        self._user_speaking = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reprompted = False
        self._input_over = False
        # the caller's goodbye: the reply to a closing turn ends the call
        self._goodbyes = setup.agent.goodbyes()
        self._turn_began = 0.0
        self._closing_since: float | None = None
        # the user's turn so far, for interim transcripts
        self._turn_finals: list[str] = []
        self._end_after_turn: tuple[asyncio.TimerHandle, Callable[[], None]] | None = None
        """An ending put off until the caller's turn is in, and its ceiling (`_on_error`)."""
        # agent speech not yet reported, so the ending can wait for its transcript
        self._unreported: set[asyncio.Future[None]] = set()
        # summary
        self._user_turns = 0
        self._agent_turns = 0
        self._interruptions = 0
        self._latencies: list[dict[str, float]] = []
        self.tools: CallTools | None = None
        self._recording: CallRecording | None = None
        self._transferring = False
        self._asides: dict[str, str] = {}
        """Lines said outside the LLM's history (a tool's filler), by speech id: reported as
        the agent's turns all the same."""
        transport.listener = self

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, agent: VoiceAgent) -> CallResult:
        sender = asyncio.create_task(self._outbox.run(), name="call_events")
        watchers = [asyncio.create_task(self._max_duration(), name="call_max_duration")]
        if self.setup.shutdown is not None:
            watchers.append(asyncio.create_task(self._on_shutdown(self.setup.shutdown)))
        self._subscribe()
        self._outbox.put(lambda e: e.agent_state("initializing"))
        try:
            await self.transport.start(self.session, agent, self.caller)
            self._started_at = time.monotonic()
            if self.setup.ledger is not None:
                self.setup.ledger.session_started()
            await self.recorder.started()
            self.log.info(
                "call started",
                extra={"caller": self.caller.identity, "transport": self.transport.label},
            )
        except Exception as exc:
            self.log.exception("call failed to start")
            self.request_end(EndReason.ERROR, detail=f"start failed: {exc}")
        ending = await self._ending
        for watcher in watchers:
            watcher.cancel()
        result = await self._finish(ending)
        await _wait_bounded(sender, FLUSH_TIMEOUT)
        await self._close_session()
        await self.transport.close(ending.reason)
        return result

    def request_end(
        self,
        reason: EndReason,
        *,
        detail: str = "",
        goodbye: str | None = None,
        clip: Path | None = None,
        stop_audio: bool = False,
    ) -> None:
        """End the call (the first request wins) with an optional `goodbye`, played from `clip`
        when given (no TTS needed); `stop_audio` silences the agent at once."""
        if self._ending.done():
            self.log.debug("ignoring end request %s: already ending", reason.value)
            return
        if stop_audio:
            self._interrupt()
        self._ending.set_result(_Ending(reason, detail, goodbye, clip))

    async def _finish(self, ending: _Ending) -> CallResult:
        self._cancel_idle_timer()
        if self._end_after_turn is not None:
            self._end_after_turn[0].cancel()
        with contextlib.suppress(RuntimeError):
            self.session.input.set_audio_enabled(False)  # no new turns while ending
        if ending.goodbye and self.session.output.audio is not None:
            await self._say_goodbye(ending.goodbye, ending.clip)
        if self._unreported:  # interrupted speech: its transcript goes out before call_ended
            await asyncio.wait(self._unreported, timeout=SETTLE_TIMEOUT)
        duration = time.monotonic() - self._started_at
        self._outbox.put(lambda e: e.agent_state("idle"))
        self._outbox.put(lambda e: e.call_ended(duration, ending.reason))
        self._outbox.close()
        usage = self._usage()
        recording = None
        if self._recording is not None:
            recording = await self._recording.finish(duration)
        await self.recorder.ended(
            reason=ending.reason.value,
            duration=duration,
            turns=self._latencies,
            usage=usage,
            recording=recording,
        )
        result = CallResult(
            ending.reason,
            duration,
            self._user_turns,
            self._agent_turns,
            self._interruptions,
            record=self.recorder.body,
        )
        self._log_summary(result, ending.detail, usage)
        return result

    async def start_recording(self) -> None:
        """A recording that cannot start costs the call its recording, not the call."""
        if self.setup.recording is None:
            return
        recording = CallRecording(self.setup.recording, self.setup.call_id, self.session)
        try:
            await recording.start()
        except Exception as exc:
            self.log.error("the call is not recorded: %s: %s", type(exc).__name__, exc)
            return
        self._recording = recording

    async def _say_goodbye(self, text: str, clip: Path | None) -> None:
        self._interrupt()
        audio = clip_frames(load_clip(clip)) if clip is not None else NOT_GIVEN
        try:
            handle = self.session.say(text, audio=audio, allow_interruptions=False)
        except RuntimeError:
            return  # the session is not running any more: nothing can be said
        try:
            await asyncio.wait_for(handle.wait_for_playout(), GOODBYE_TIMEOUT)
        except TimeoutError:
            self.log.warning("goodbye did not finish within %ss, cutting it", GOODBYE_TIMEOUT)
            handle.interrupt(force=True)

    def _interrupt(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.session.interrupt(force=True)

    async def _close_session(self) -> None:
        try:
            await asyncio.wait_for(self.session.aclose(), 10)
        except Exception:
            self.log.exception("session did not close cleanly")

    async def _max_duration(self) -> None:
        await asyncio.sleep(self.setup.agent.limits.max_duration)
        self.request_end(
            EndReason.MAX_DURATION,
            detail=f"{self.setup.agent.limits.max_duration}s limit",
            goodbye=self.lines["max_duration_goodbye"],
        )

    async def _on_shutdown(self, shutdown: asyncio.Event) -> None:
        await shutdown.wait()
        self.request_end(
            EndReason.WORKER_SHUTDOWN,
            detail="worker shutting down",
            goodbye=self.lines["shutdown_goodbye"],
        )

    # --- tools ----------------------------------------------------------------------------------

    def tool_hooks(self) -> CallHooks:
        return CallHooks(
            end_call=lambda: self.request_end(EndReason.AGENT_ENDED, detail="end_call tool"),
            check_transfer=self.transport.check_phone_line,
            transfer=self._transfer,
            send_dtmf=self._send_dtmf,
            report=self._report_tool,
            say_aside=self._say_aside,
            filler=self.lines["tool_filler"],
        )

    async def _send_dtmf(self, digits: str) -> None:
        self.transport.check_phone_line()
        await self.transport.send_dtmf(digits)

    def _say_aside(self, line: str) -> SpeechHandle:
        handle = self.session.say(line, add_to_chat_ctx=False)
        self._asides[handle.id] = line
        return handle

    async def _transfer(self, to: str) -> None:
        """Hand the caller over; the call ends `transferred` (a caller leaving the room meanwhile
        is the transfer taking them, not a hang-up)."""
        await asyncio.sleep(0)  # the line's transcript is queued as its speech ends
        await self._outbox.sent(FLUSH_TIMEOUT)  # what the caller has heard, they also see
        self._transferring = True
        try:
            await self.transport.transfer(to)
        finally:
            self._transferring = False
        self.request_end(EndReason.TRANSFERRED, detail="transferred by the transfer_call tool")

    def _report_tool(self, name: str, status: ToolStatus, seconds: float | None) -> None:
        self._outbox.put(lambda e: e.tool_call(name, status, seconds))
        self.recorder.tool_call(name, status, seconds)
        self._update_idle_timer()

    # --- transport reports ----------------------------------------------------------------------

    def data_received(self, data: bytes, *, sender: str | None, topic: str) -> None:
        if topic not in (TOPIC, ""):
            return  # other features' topics are none of our business
        if sender != self.caller.identity:
            self.log.warning(
                "ignoring data message from %r: only the caller %r may control the call",
                sender,
                self.caller.identity,
            )
            return
        try:
            control = parse_control(data)
        except ControlError as exc:
            self.log.warning("ignoring data message from the caller on topic %r: %s", topic, exc)
            return
        self.request_end(
            EndReason.CLIENT_ENDED, detail=f"caller sent {control.value}", stop_audio=True
        )

    def caller_left(self, detail: str) -> None:
        if self._transferring:
            self.request_end(EndReason.TRANSFERRED, detail=f"transferred ({detail})")
            return
        self.request_end(EndReason.CALLER_LEFT, detail=detail, stop_audio=True)

    def transport_lost(self, reason: EndReason, detail: str) -> None:
        self.request_end(reason, detail=detail, stop_audio=True)

    def input_ended(self) -> None:
        self._input_over = True
        self._cancel_idle_timer()  # from now on, quiet means the call is over, not idle
        self._update_idle_timer()

    # --- session events -------------------------------------------------------------------------

    def _subscribe(self) -> None:
        s = self.session
        s.on("agent_state_changed", self._on_agent_state)
        s.on("user_state_changed", self._on_user_state)
        s.on("user_input_transcribed", self._on_user_transcribed)
        s.on("conversation_item_added", self._on_item_added)
        s.on("speech_created", self._on_speech_created)
        s.on("agent_false_interruption", self._on_false_interruption)
        s.on("error", self._on_error)
        s.on("close", self._on_close)

    def _on_agent_state(self, ev: lk_events.AgentStateChangedEvent) -> None:
        self._agent_state = ev.new_state
        self._outbox.put(lambda e: e.agent_state(ev.new_state))
        self._update_idle_timer()

    def _on_user_state(self, ev: lk_events.UserStateChangedEvent) -> None:
        self._user_speaking = ev.new_state == "speaking"
        if self._user_speaking:
            self._reprompted = False
            self._turn_began = ev.created_at
        self._update_idle_timer()

    def _on_user_transcribed(self, ev: lk_events.UserInputTranscribedEvent) -> None:
        text = " ".join([*self._turn_finals, ev.transcript.strip()]).strip()
        if ev.is_final and ev.transcript.strip():
            self._turn_finals.append(ev.transcript.strip())
            # an interim shows only the turn's end: older finals need not be kept for it
            while (
                len(self._turn_finals) > 1 and sum(map(len, self._turn_finals)) > INTERIM_MAX_CHARS
            ):
                self._turn_finals.pop(0)
        if text:
            self._outbox.interim(text)

    def _on_item_added(self, ev: lk_events.ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage):
            return
        if item.role == "user":
            self._turn_finals.clear()
            self._user_turns += 1
            closing = self._goodbyes is not None and self._goodbyes.is_goodbye(
                item.text_content or ""
            )
            self._closing_since = self._turn_began if closing else None
            if closing:
                self.log.info("the caller said goodbye: the call ends after the reply")
            self._outbox.put(lambda e: e.transcript("user", item.text_content or "", final=True))
            self.recorder.said("user", item.text_content or "")
            if self._end_after_turn is not None:
                self._end_after_turn[1]()  # the LLM has already failed: the turn is reported
        elif item.role == "assistant" and item.metrics:
            self._latencies.append(
                {
                    k: round(v, 3)
                    for k, v in item.metrics.items()
                    if k in _LATENCY_KEYS and isinstance(v, int | float)
                }
            )

    def _on_speech_created(self, ev: lk_events.SpeechCreatedEvent) -> None:
        reported: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unreported.add(reported)

        def done(handle: SpeechHandle) -> None:
            self._on_speech_done(handle, created_at=ev.created_at)
            self._unreported.discard(reported)
            reported.set_result(None)

        ev.speech_handle.add_done_callback(done)

    def _on_speech_done(self, handle: SpeechHandle, *, created_at: float) -> None:
        """Report an agent turn that ended; the reply to the caller's goodbye ends the call."""
        if not handle.scheduled:
            return  # a preemptive generation that was discarded: never a turn
        text = " ".join(
            item.text_content or ""
            for item in handle.chat_items
            if isinstance(item, ChatMessage) and item.role == "assistant"
        ).strip() or self._asides.pop(handle.id, "")
        interrupted = handle.interrupted
        if text or interrupted:  # else a tool-only step, or a reply with nothing to say
            self._agent_turns += 1
            self._interruptions += interrupted
            self._outbox.put(
                lambda e: e.transcript("agent", text, final=True, interrupted=interrupted)
            )
            self.recorder.said("agent", text, interrupted=interrupted)
        tool_step = any(isinstance(item, llm.FunctionCall) for item in handle.chat_items)
        if (
            self._closing_since is not None
            and created_at >= self._closing_since  # a reply to the goodbye, not older speech
            and not interrupted
            and not tool_step  # a tool's result is answered by a speech of its own
        ):
            self.request_end(EndReason.AGENT_ENDED, detail="the caller said goodbye")

    def _on_false_interruption(self, ev: lk_events.AgentFalseInterruptionEvent) -> None:
        self.log.info("false interruption, resumed=%s", ev.resumed)

    def _on_error(self, ev: lk_events.ErrorEvent) -> None:
        recoverable = getattr(ev.error, "recoverable", True)
        stage = _stage(ev.source)
        self.log.warning(
            "%s error from %s (%s): %s",
            stage,
            type(ev.source).__name__,
            "recoverable" if recoverable else "unrecoverable",
            getattr(ev.error, "error", ev.error),
        )
        if recoverable:
            return
        # retries and fallbacks are spent: no provider is left for this stage
        end = functools.partial(
            self.request_end,
            EndReason.ERROR,
            detail=f"no {stage} provider left",
            goodbye=self.lines["error_goodbye"],
            clip=self.setup.agent.apology_clip,
        )
        if stage == "llm" and self._agent_state == "listening" and self._end_after_turn is None:
            # the answer LiveKit began ahead of the caller's turn (the agent is not thinking
            # yet) failed: the turn is still to come, and an apology now could skip it (the
            # caller's words never reported). The call ends once the turn is in, or at the
            # longest a turn can take to end.
            self.log.info("the LLM failed before the caller's turn was in: ending after it")
            delay = self.setup.agent.turn_taking.endpointing.max_delay + 1.0
            self._end_after_turn = asyncio.get_running_loop().call_later(delay, end), end
            return
        end()

    def _on_close(self, ev: lk_events.CloseEvent) -> None:
        if self._ending.done():
            return
        reason = _CLOSE_REASONS.get(ev.reason, EndReason.ERROR)
        self.request_end(reason, detail=f"session closed: {ev.reason.value} {ev.error or ''}")

    # --- idle timeout ---------------------------------------------------------------------------

    def _update_idle_timer(self) -> None:
        silent = self._agent_state == "listening" and not self._user_speaking
        silent = silent and (self.tools is None or not self.tools.running)  # a tool is working
        if not silent or self._ending.done():
            self._cancel_idle_timer()
        elif self._idle_timer is None:
            timeout = (
                self._input_settle() if self._input_over else self.setup.agent.limits.idle_timeout
            )
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(timeout, self._on_idle_timeout)

    def _input_settle(self) -> float:
        """Quiet after the recording before the call ends: long enough for a last utterance
        the end-of-turn model waited on to be answered."""
        return max(INPUT_SETTLE, self.setup.agent.turn_taking.endpointing.max_delay + 1.0)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self._input_over:
            self.request_end(EndReason.INPUT_ENDED, detail="the recording is over")
            return
        if not self._reprompted:
            self._reprompted = True
            self.log.info(
                "caller silent for %ss, reprompting", self.setup.agent.limits.idle_timeout
            )
            with contextlib.suppress(RuntimeError):
                self.session.say(self.lines["reprompt"])
            return
        self.request_end(
            EndReason.IDLE_TIMEOUT,
            detail=f"silent for {self.setup.agent.limits.idle_timeout}s after a reprompt",
            goodbye=self.lines["idle_goodbye"],
        )

    # --- events out -----------------------------------------------------------------------------

    def _usage(self) -> list[dict[str, Any]]:
        """What each model was used for in the call (LiveKit's usage, by provider and model)."""
        with contextlib.suppress(Exception):  # the session's accounting must not end a call
            return [
                {"type": u.type, **u.model_dump(exclude_defaults=True)}
                for u in self.session.usage.model_usage
            ]
        return []

    def _log_summary(self, result: CallResult, detail: str, usage: list[dict[str, Any]]) -> None:
        self.log.info(
            "call ended: %s after %.1fs (%d user turns, %d agent turns, %d interrupted)",
            result.reason.value,
            result.duration,
            result.user_turns,
            result.agent_turns,
            result.interruptions,
            extra={
                "reason": result.reason.value,
                "detail": detail,
                "duration": round(result.duration, 3),
                "user_turns": result.user_turns,
                "agent_turns": result.agent_turns,
                "interruptions": result.interruptions,
                "turn_latency": self._latencies,
                "turn_taking": self.turns.summary(),
                "usage": usage,
            },
        )


def _stage(source: object) -> str:
    for stage, kind in (("stt", stt.STT), ("llm", llm.LLM), ("tts", tts.TTS)):
        if isinstance(source, kind):
            return stage
    return "session"


_LATENCY_KEYS = frozenset({"e2e_latency", "llm_node_ttft", "tts_node_ttfb", "playback_latency"})
_CLOSE_REASONS: dict[lk_events.CloseReason, EndReason] = {
    lk_events.CloseReason.ERROR: EndReason.ERROR,
    lk_events.CloseReason.PARTICIPANT_DISCONNECTED: EndReason.CALLER_LEFT,
    lk_events.CloseReason.JOB_SHUTDOWN: EndReason.WORKER_SHUTDOWN,
    lk_events.CloseReason.USER_INITIATED: EndReason.AGENT_ENDED,
    lk_events.CloseReason.TASK_COMPLETED: EndReason.AGENT_ENDED,
}


async def _wait_bounded(task: asyncio.Task[Any], timeout: float) -> None:
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
