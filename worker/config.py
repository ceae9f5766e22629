"""Agent configurations: one Markdown file per agent in `prompts/`, validated once at start.

A file is YAML front matter (fields) followed by the instructions written as prose:

    ---
    id: support
    name: Acme support
    greeting: Hi {customer_name}, how can I help?
    placeholders: {customer_name: there}
    ---
    You are the voice of Acme support...

Every problem is reported as `file: field: message`, all files at once, so a broken config stops
the worker at start instead of failing during a call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.audio_files import BUNDLED_APOLOGY, AudioFileError, check_clip
from worker.routing import AGENT_ID_RE, MAX_AGENT_ID_LEN, ambiguous_prefixes, resolve_agent_id
from worker.settings import check_service_url
from worker.tools.spec import DEFAULT_TOOLS, ToolCalls, ToolSpec, check_tools, placeholders
from worker.turns import phrases

PLACEHOLDER_MAX_LEN = 200


MAX_AGENT_FILE_BYTES = 256 * 1024
MAX_INSTRUCTIONS_CHARS = 100_000
"""About 25k tokens: more is a mistake (a pasted document), and every request would carry it."""


class ConfigError(Exception):
    """One or more invalid agent files; each line names the file and the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid agent configuration:\n  " + "\n  ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0, le=120)]


class _ProviderBase(_Strict):
    """One provider of a stage. The first entry of a stage is primary, the rest are fallbacks."""

    model: str | None = None
    timeout: Seconds = 3.0
    """Seconds for one attempt to connect (and, for the LLM, between streamed chunks). A dead
    provider costs (retries + 1) x timeout before the next one takes over, or, with none left,
    the call ends with the recorded apology: the defaults keep that near 6 s."""
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    retry_interval: Annotated[float, Field(ge=0, le=10)] = 0.5


class _CloudProvider(_ProviderBase):
    base_url: str | None = Field(default=None, pattern=r"^(https?|wss?)://\S+$")
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the provider's LiveKit plugin, checked at start."""


class DeepgramSTT(_CloudProvider):
    provider: Literal["deepgram"]


class OpenAILLM(_CloudProvider):
    """OpenAI, or any OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp) through `base_url`."""

    provider: Literal["openai"]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=4096)] | None = None
    max_history: Annotated[int, Field(ge=2, le=1000)] | None = None
    """Conversation items sent with each request (the instructions are always kept)."""


class ElevenLabsTTS(_CloudProvider):
    provider: Literal["elevenlabs"]
    voice: str | None = None


class LocalSTT(_ProviderBase):
    """faster-whisper on the CPU; `model` is a CTranslate2 model directory or a model name (a
    name needs internet once). Default: the bundled "base" model."""

    provider: Literal["local"]
    beam_size: Annotated[int, Field(ge=1, le=5)] = 1
    no_speech_threshold: Annotated[float, Field(ge=0, le=1)] = 0.6
    log_prob_threshold: Annotated[float, Field(le=0)] = -1.0
    """A segment is dropped as a hallucination when it is likely silence (`no_speech_threshold`)
    and Whisper is unsure of it (average log-probability below this)."""


class LocalLLM(_ProviderBase):
    """A small model served by the worker itself (llama.cpp); `model` is a bundled model's name
    (`qwen2.5-coder-1.5b`, `smollm2-135m`) or a GGUF file. Default: `WORKER_LOCAL_LLM`, else
    the 1.5B."""

    provider: Literal["local"]
    timeout: Seconds = 15.0
    """A local model's first token waits for it to read the prompt: seconds on a small CPU."""
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.3
    max_tokens: Annotated[int, Field(gt=0, le=4096)] = 80
    max_history: Annotated[int, Field(ge=2, le=1000)] | None = 8
    max_sentences: Annotated[int, Field(ge=1, le=20)] | None = 2
    """Sentences of an answer that are spoken (null: all); always only its first line. The
    1.5B follows a short answer with lists and form fields written for a screen."""
    warm_prompt: bool = True
    """Send the instructions once while the greeting plays, so the model has them cached (its
    first answer would otherwise wait for the whole prompt to be read)."""


class LocalTTS(_ProviderBase):
    """Piper in process; `voice` is a Piper .onnx voice. Default: the bundled US English voice."""

    provider: Literal["local"]
    voice: str | None = None
    speed: Annotated[float, Field(gt=0.25, le=4)] = 1.0
    first_clause: bool = True
    """Speak a reply's first clause as soon as it is written, not its whole first sentence."""


STTProvider = Annotated[DeepgramSTT | LocalSTT, Field(discriminator="provider")]
LLMProvider = Annotated[OpenAILLM | LocalLLM, Field(discriminator="provider")]
TTSProvider = Annotated[ElevenLabsTTS | LocalTTS, Field(discriminator="provider")]
CloudEntry = DeepgramSTT | OpenAILLM | ElevenLabsTTS
LocalEntry = LocalSTT | LocalLLM | LocalTTS
ProviderEntry = CloudEntry | LocalEntry


VOICE_MAX_DELAY = 1.5


class Endpointing(_Strict):
    mode: Literal["fixed", "dynamic"] = "fixed"
    """`dynamic`: LiveKit learns `min_delay` from the caller's own pauses (up to `max_delay`)."""
    min_delay: Annotated[float, Field(ge=0, le=5)] = 0.3
    """Seconds of silence after speech before the user's turn can end."""
    max_delay: Annotated[float, Field(ge=0, le=10)] = 2.0
    """With a model (`smart_turn`, `livekit`): how long to wait for more speech when the turn
    sounds unfinished."""
    voice_max_delay: Annotated[float, Field(ge=0, le=10)] | None = None
    """With `smart_turn`, when the words make a whole sentence and only the voice sounds
    unfinished: the model alone calls a third to a half of finished turns unfinished, so its
    doubt waits this long (default 1.5 s, within `min_delay`..`max_delay`), not `max_delay`
    (which the words' own doubt keeps)."""

    def voice_ceiling(self) -> float:
        """`voice_max_delay`, or its default kept between `min_delay` and `max_delay`."""
        if self.voice_max_delay is not None:
            return self.voice_max_delay
        return max(self.min_delay, min(VOICE_MAX_DELAY, self.max_delay))


class Interruption(_Strict):
    enabled: bool = True
    min_duration: Annotated[float, Field(gt=0, le=5)] = 0.09
    """Seconds of caller speech over the agent before it pauses (it resumes on a false alarm).
    Silero judges 32 ms windows: 0.09 pauses on the third window of speech (0.15 waits for the
    fifth, 64 ms later); 0 would make LiveKit pause on every window, silence too."""
    min_words: Annotated[int, Field(ge=0, le=20)] = 0
    false_interruption_timeout: Annotated[float, Field(gt=0, le=10)] | None = 1.5
    """Seconds without a transcript after which a pause counts as a false interruption."""
    resume_false_interruption: bool = True


MAX_PHRASES = 200


class _Phrases(_Strict):
    """A list of caller phrases that the agent's language has a default for."""

    enabled: bool | None = None
    """Default: on when the agent's language has a built-in list (`phrases` otherwise)."""
    phrases: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=MAX_PHRASES
    )
    """Replaces the language's built-in list (see worker/turns/phrases.py)."""

    @field_validator("phrases", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        for i, phrase in enumerate(value if isinstance(value, list) else []):
            if isinstance(phrase, bool):
                raise ValueError(
                    f"[{i}] YAML reads an unquoted yes/no/on/off as {phrase}: quote the phrase "
                    '("yes")'
                )
        return value

    @field_validator("phrases")
    @classmethod
    def _phrases_have_words(cls, value: list[str] | None) -> list[str] | None:
        for i, phrase in enumerate(value or []):
            said = phrases.words(phrase)
            if not said:
                raise ValueError(f"[{i}] {phrase!r} has no words")
            if len(said) > phrases.MAX_PHRASE_WORDS:
                raise ValueError(f"[{i}] {phrase!r} has more than {phrases.MAX_PHRASE_WORDS} words")
        return value

    def in_use(self, language: str, defaults: Mapping[str, tuple[str, ...]]) -> bool:
        """Whether the phrases are on; raises naming the field when on without any."""
        if self.enabled is False:
            return False
        if self.phrases is not None or defaults.get(phrases.primary_language(language)):
            return True
        if self.enabled:
            raise ValueError(
                f"phrases: no built-in list for language {language!r}; list the phrases, or set "
                "enabled: false"
            )
        return False


class Acknowledgements(_Phrases):
    """What the caller says over the agent to mean "go on": not a turn, not a barge-in."""

    @field_validator("phrases")
    @classmethod
    def _phrases_are_acknowledgements(cls, value: list[str] | None) -> list[str] | None:
        for i, phrase in enumerate(value or []):
            if stop := sorted(set(phrases.words(phrase)) & phrases.STOP_WORDS):
                raise ValueError(
                    f"[{i}] {phrase!r}: {stop[0]!r} asks the agent to stop, so it must keep "
                    "interrupting"
                )
        return value


class Goodbyes(_Phrases):
    """What the caller says to end the call ("goodbye", "that's all"): a turn made of these
    (with thanks and acknowledgements) is answered, then the call ends (`agent_ended`), whether
    or not the LLM calls `end_call`."""


class TurnTaking(_Strict):
    detection: Literal["smart_turn", "livekit", "vad", "stt"] = "smart_turn"
    """`smart_turn`: an end-of-turn model hears whether the caller finished (and the transcript
    must not stop mid-sentence) before the agent answers; `livekit`: LiveKit's own local model
    (v1-mini) does; `vad`: a fixed silence does; `stt`: the STT's endpointing does."""
    endpointing: Endpointing = Endpointing()
    interruption: Interruption = Interruption()
    acknowledgements: Acknowledgements = Acknowledgements()
    goodbyes: Goodbyes = Goodbyes()
    greeting_interruptible: bool = False
    aec_warmup: Annotated[float, Field(ge=0, le=10)] = 1.0
    """Seconds at the start of the first agent speech during which barge-in is ignored."""
    preemptive_generation: bool = True

    @model_validator(mode="after")
    def _delays_ordered(self) -> TurnTaking:
        delays = self.endpointing
        if delays.max_delay < delays.min_delay:
            raise ValueError("endpointing.max_delay must be >= endpointing.min_delay")
        if not delays.min_delay <= delays.voice_ceiling() <= delays.max_delay:
            raise ValueError(
                "endpointing.voice_max_delay must be between endpointing.min_delay and max_delay"
            )
        return self


MIN_CALL_SECONDS = 10
MAX_CALL_SECONDS = 4 * 3600


class Limits(_Strict):
    max_duration: Annotated[int, Field(ge=MIN_CALL_SECONDS, le=MAX_CALL_SECONDS)] = 1800
    """Seconds a call may last; then a goodbye and `call_ended{max_duration}`."""
    idle_timeout: Annotated[int, Field(ge=5, le=3600)] = 30
    """Seconds with no speech from either side before one reprompt, then a goodbye."""
    join_timeout: Annotated[int, Field(ge=1, le=600)] = 30
    """Seconds to wait for the caller to join the room."""


DEFAULT_ERROR_GOODBYE = "I'm sorry, we're having technical difficulties. Please call back later."


class Messages(_Strict):
    """Fixed lines the agent speaks without asking the LLM: deterministic and instant."""

    reprompt: str = "Are you still there?"
    idle_goodbye: str = "It seems you've stepped away. Goodbye for now."
    max_duration_goodbye: str = "We've reached the time limit for this call. Thank you, goodbye."
    shutdown_goodbye: str = "I'm sorry, I have to end the call now. Please call back in a moment."
    tool_filler: str = "One moment while I check that."
    """Said once when a tool has not answered within `tool_calls.filler_delay`."""
    tool_error: str = "I'm sorry, I couldn't do that just now."
    """Said when a tool failed and the LLM has nothing to say about it."""
    error_goodbye: str = DEFAULT_ERROR_GOODBYE
    """Played when a provider stage has failed for good, from `error_goodbye_audio`."""
    error_goodbye_audio: str | None = None
    """WAV file of `error_goodbye` (relative to the agent file): the apology plays from a
    recording, so the caller hears it even when the TTS is down. Default: the worker's own
    recording of the default line; `python -m worker render-apology` makes one."""

    def lines(self) -> dict[str, str]:
        """The lines the agent speaks, by name (placeholders not yet filled)."""
        return self.model_dump(exclude={"error_goodbye_audio"})


class AgentWebhook(_Strict):
    """The agent's call records (`worker/records`); the environment gives the defaults."""

    enabled: bool = True
    url: str | None = None
    """Instead of `WORKER_WEBHOOK_URL`, for this agent's calls."""
    events: list[Literal["call.started", "call.ended"]] | None = None
    """Instead of `WORKER_WEBHOOK_EVENTS`."""
    metadata_values: list[str] = Field(default_factory=list, max_length=50)
    """Dispatch metadata keys whose values the records may carry; of the others, only the keys
    (values can be personal data)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and (problem := check_service_url(value)):
            raise ValueError(problem)
        return value


class AgentRecording(_Strict):
    """Whether the agent's calls are recorded (`worker/records/recording.py`)."""

    enabled: bool = False
    per_session: bool = True
    """Let a session (the session API's `recording`, the dispatch metadata) turn it on or off;
    false: this agent's calls are recorded exactly as `enabled` says, and the API answers 400."""


class AgentConfig(_Strict):
    id: str = Field(min_length=1, max_length=MAX_AGENT_ID_LEN)
    name: str = Field(min_length=1, max_length=200)
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    greeting: str = Field(min_length=1, max_length=1000)
    instructions: str = Field(min_length=1, max_length=MAX_INSTRUCTIONS_CHARS)
    placeholders: dict[str, str] = Field(default_factory=dict)
    stt: list[STTProvider] = Field(min_length=1, max_length=4)
    llm: list[LLMProvider] = Field(min_length=1, max_length=4)
    tts: list[TTSProvider] = Field(min_length=1, max_length=4)
    turn_taking: TurnTaking = TurnTaking()
    limits: Limits = Limits()
    messages: Messages = Messages()
    tools: list[ToolSpec] = Field(default_factory=lambda: list(DEFAULT_TOOLS), max_length=32)
    """What the agent can do besides talking (`worker/tools/spec.py`); without `tools:`, only
    `end_call`."""
    tool_calls: ToolCalls = ToolCalls()
    webhook: AgentWebhook = AgentWebhook()
    recording: AgentRecording = AgentRecording()
    local_fallback: bool = False
    """Let `start` replace a cloud provider whose key is missing by the local one. Off: production
    should never answer callers with a small local model by accident."""
    source: str = Field(default="", exclude=True)
    """The file this config came from (set by the loader, used in error messages)."""

    @field_validator("recording", mode="before")
    @classmethod
    def _recording_shorthand(cls, value: object) -> object:
        """`recording: true` is `recording: {enabled: true}`."""
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("id")
    @classmethod
    def _id_routable(cls, value: str) -> str:
        if not AGENT_ID_RE.fullmatch(value):
            raise ValueError("may only hold letters, digits and '-' (it appears in room names)")
        return value

    @field_validator("placeholders")
    @classmethod
    def _placeholder_defaults(cls, value: dict[str, str]) -> dict[str, str]:
        for key, default in value.items():
            if not key.isidentifier():
                raise ValueError(f"placeholder name {key!r} must be an identifier")
            if len(default) > PLACEHOLDER_MAX_LEN:
                raise ValueError(f"default of {key!r} is longer than {PLACEHOLDER_MAX_LEN}")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_unique(cls, value: list[ToolSpec]) -> list[ToolSpec]:
        return check_tools(value)

    @model_validator(mode="after")
    def _placeholders_have_defaults(self) -> AgentConfig:
        for where, text in self.templates():
            for name in placeholders(text, where):
                if name not in self.placeholders:
                    raise ValueError(
                        f"{where}: uses placeholder {{{name}}} with no default in 'placeholders'"
                    )
        return self

    @model_validator(mode="after")
    def _custom_apology_recorded(self) -> AgentConfig:
        m = self.messages
        if m.error_goodbye != DEFAULT_ERROR_GOODBYE and m.error_goodbye_audio is None:
            raise ValueError(
                "messages.error_goodbye_audio: a custom error_goodbye needs its recording (it is "
                "played from a file so it is heard even when the TTS is down; make one with "
                "`python -m worker render-apology`)"
            )
        return self

    @model_validator(mode="after")
    def _phrases_usable(self) -> AgentConfig:
        turns = self.turn_taking
        for name in ("acknowledgements", "goodbyes"):
            try:
                getattr(self, name)()
            except ValueError as exc:
                raise ValueError(f"turn_taking.{name}.{exc}") from None
        if self.acknowledgements() and not turns.interruption.resume_false_interruption:
            raise ValueError(
                "turn_taking.acknowledgements: needs interruption.resume_false_interruption (the "
                "agent pauses at the first sound and resumes once the words are an "
                "acknowledgement)"
            )
        acks = self.acknowledgements()
        for i, phrase in enumerate(turns.goodbyes.phrases or []):
            if acks is not None and acks.is_acknowledgement(phrase):
                raise ValueError(
                    f"turn_taking.goodbyes.phrases: [{i}] {phrase!r} is an acknowledgement too: "
                    "the call would end on every one"
                )
        return self

    def acknowledgements(self) -> phrases.PhraseSet | None:
        """The acknowledgement phrases in use, or None when they are off."""
        acks = self.turn_taking.acknowledgements
        if not acks.in_use(self.language, phrases.ACKNOWLEDGEMENTS):
            return None
        if acks.phrases is not None:
            return phrases.PhraseSet(acks.phrases)
        return phrases.default_acknowledgements(self.language)

    def goodbyes(self) -> phrases.Goodbyes | None:
        """The caller's closing phrases in use, or None when they are off."""
        goodbyes = self.turn_taking.goodbyes
        if not goodbyes.in_use(self.language, phrases.GOODBYES):
            return None
        if goodbyes.phrases is not None:
            return phrases.goodbyes(goodbyes.phrases, self.language)
        return phrases.default_goodbyes(self.language)

    def templates(self) -> Iterator[tuple[str, str]]:
        """Every text that may hold `{placeholders}`, with the field it came from."""
        yield "instructions", self.instructions
        yield "greeting", self.greeting
        for name, text in self.messages.lines().items():
            yield f"messages.{name}", text

    @property
    def apology_clip(self) -> Path:
        """The recording of `messages.error_goodbye`."""
        if self.messages.error_goodbye_audio is None:
            return BUNDLED_APOLOGY
        return Path(self.source).parent / self.messages.error_goodbye_audio

    def render(self, text: str, values: Mapping[str, str]) -> str:
        """`text` with placeholders filled from `values`, falling back to the config defaults."""
        return text.format_map({**self.placeholders, **values})


class AgentRegistry:
    """The configured agents, by id; lookups follow the routing rules (exact id, else a unique
    prefix of 8+ characters)."""

    def __init__(self, agents: list[AgentConfig]) -> None:
        self._agents = {agent.id: agent for agent in agents}

    def __iter__(self) -> Iterator[AgentConfig]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, requested_id: str) -> AgentConfig:
        """The agent a room's agent id names; raises `RoutingError` when none or several match."""
        return self._agents[resolve_agent_id(requested_id, self._agents)]


def load_agent_file(path: Path) -> AgentConfig:
    """Parse and validate one agent file; raises `ConfigError` naming the file and fields."""
    try:
        if not path.is_file():  # a FIFO would block the read forever, a directory fail it
            raise ConfigError([f"{path}: not a regular file"])
        if (size := path.stat().st_size) > MAX_AGENT_FILE_BYTES:
            raise ConfigError(
                [f"{path}: {size} bytes; an agent file is at most {MAX_AGENT_FILE_BYTES}"]
            )
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")  # a BOM is allowed
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    fields, body = _split_front_matter(path, text)
    data = {**fields, "instructions": body, "source": str(path)}
    try:
        agent = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_describe(err)}" for err in exc.errors()]) from None
    clip = agent.apology_clip
    if clip != BUNDLED_APOLOGY and not clip.resolve().is_relative_to(path.parent.resolve()):
        raise ConfigError(
            [f"{path}: messages.error_goodbye_audio: {clip} is outside the prompts directory"]
        )
    try:
        check_clip(clip)
    except AudioFileError as exc:
        raise ConfigError([f"{path}: messages.error_goodbye_audio: {exc}"]) from None
    return agent


def load_registry(directory: Path) -> AgentRegistry:
    """Load every `*.md` in `directory` (names starting with `_` or `.` are skipped)."""
    if not directory.is_dir():
        raise ConfigError([f"{directory}: prompts directory not found (set WORKER_PROMPTS_DIR)"])
    problems: list[str] = []
    agents: list[AgentConfig] = []
    root = directory.resolve()
    for path in sorted(directory.iterdir()):
        if path.name.startswith(("_", ".")) or path.suffix.lower() != ".md":
            continue
        if path.suffix != ".md":
            problems.append(f"{path}: agent files end in .md (lower case): rename it")
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            problems.append(f"{path}: a symlink to {path.resolve()}, outside the prompts directory")
            continue
        try:
            agents.append(load_agent_file(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not agents and not problems:
        problems.append(f"{directory}: no agent files (*.md)")
    by_id: dict[str, AgentConfig] = {}
    for agent in agents:
        if agent.id in by_id:
            problems.append(
                f"{agent.source}: id: {agent.id!r} is also used by {by_id[agent.id].source}"
            )
        by_id[agent.id] = agent
    for first, second in ambiguous_prefixes(by_id):
        problems.append(
            f"{by_id[second].source}: id: {second!r} shares its first 8 characters with {first!r} "
            f"({by_id[first].source}); room names carrying that prefix could not be routed"
        )
    if problems:
        raise ConfigError(problems)
    return AgentRegistry(list(by_id.values()))


def _split_front_matter(path: Path, text: str) -> tuple[dict[str, Any], str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ConfigError([f"{path}: must start with a '---' line opening the YAML front matter"])
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        raise ConfigError([f"{path}: front matter is not closed by a '---' line"]) from None
    try:
        fields = yaml.load("\n".join(lines[1:end]), Loader=_UniqueKeyLoader) or {}  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(
            [f"{path}: front matter is not valid YAML: {_one_line(str(exc))}"]
        ) from None
    if not isinstance(fields, dict):
        raise ConfigError([f"{path}: front matter must be a mapping of fields"])
    if "instructions" in fields:
        raise ConfigError([f"{path}: instructions: write them as the body, after the front matter"])
    return fields, "\n".join(lines[end + 1 :]).strip()


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (YAML keeps the last one silently: a
    second `tts:` replaced the provider)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"field {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _describe(error: Any) -> str:
    location = ".".join(
        f"[{part}]" if isinstance(part, int) else str(part) for part in error["loc"]
    ).replace(".[", "[")
    # discriminated unions add the tag to the location (stt[0].deepgram.model): drop it
    for tag in ("deepgram.", "openai.", "elevenlabs.", "local."):
        location = location.replace(tag, "")
    for kind in _TOOL_KINDS:  # tools[0].http.url: the same for tools
        location = location.replace(f"].{kind}", "]")
    message = str(error["msg"]).removeprefix("Value error, ")
    # model-level checks name their field at the start of the message themselves
    return f"{location}: {_one_line(message)}" if location else _one_line(message)


_TOOL_KINDS = ("http", "python", "mcp", "end_call", "transfer_call", "send_dtmf")


def _one_line(text: str) -> str:
    return " ".join(text.split())
