"""The client protocol: outgoing events (stamps, size limit, splitting) and control messages."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness import SCHEMA
from worker.protocol import (
    MAX_PACKET_BYTES,
    Control,
    ControlError,
    EndReason,
    EventEncoder,
    parse_control,
    split_text,
)

VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def decode(packets: list[bytes]) -> list[dict[str, object]]:
    return [json.loads(p) for p in packets]


def test_events_are_stamped_and_valid() -> None:
    clock = iter([100.0, 100.25, 101.5])
    encoder = EventEncoder("CA_1", clock=lambda: next(clock))
    events = decode(
        encoder.agent_state("speaking")
        + encoder.transcript("agent", "Hello there", final=True, interrupted=True)
        + encoder.call_ended(12.34567, EndReason.CLIENT_ENDED)
    )
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert [e["ts"] for e in events] == [100000, 100250, 101500]
    assert {e["call_id"] for e in events} == {"CA_1"}
    assert events[1] == {
        "type": "transcript",
        "call_id": "CA_1",
        "seq": 2,
        "ts": 100250,
        "role": "agent",
        "final": True,
        "interrupted": True,
        "text": "Hello there",
    }
    assert events[2]["duration"] == 12.346
    assert events[2]["reason"] == "client_ended"
    for event in events:
        VALIDATOR.validate(event)


def test_long_text_is_split_into_numbered_parts_under_the_packet_limit() -> None:
    text = ('Ünïcödé "quoted" words and\nnew lines, plus emoji 🎧. ' * 900).strip()
    encoder = EventEncoder("CA_1")
    packets = encoder.transcript("agent", text, final=True)
    assert len(packets) > 1
    assert all(len(p) <= MAX_PACKET_BYTES for p in packets)
    events = decode(packets)
    assert [e["part"] for e in events] == list(range(1, len(events) + 1))
    assert {e["parts"] for e in events} == {len(events)}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "".join(str(e["text"]) for e in events) == text
    for event in events:
        VALIDATOR.validate(event)


def test_lone_surrogates_from_a_provider_do_not_break_encoding() -> None:
    (packet,) = EventEncoder("CA_1").transcript("agent", "bad \ud800 text", final=True)
    assert json.loads(packet)["text"] == "bad ? text"


def test_short_text_has_no_part_fields() -> None:
    (event,) = decode(EventEncoder("CA_1").transcript("user", "hi", final=False))
    assert "part" not in event
    assert "parts" not in event


@given(st.text(max_size=40_000), st.integers(min_value=8, max_value=4000))
def test_split_is_lossless_and_fits(text: str, budget: int) -> None:
    chunks = split_text(text, budget)
    assert "".join(chunks) == text
    for chunk in chunks:
        assert len(json.dumps(chunk, ensure_ascii=False).encode()) - 2 <= budget


@settings(max_examples=25)
@given(st.text(min_size=1, max_size=300).map(lambda s: s * (60_000 // len(s))))
def test_any_long_transcript_fits_in_packets(text: str) -> None:
    packets = EventEncoder("CA_x" * 10).transcript("user", text, final=True)
    assert all(len(p) <= MAX_PACKET_BYTES for p in packets)
    assert "".join(json.loads(p)["text"] for p in packets) == text


@pytest.mark.parametrize(
    ("data", "control"),
    [
        (b'{"type": "end_call"}', Control.END_CALL),
        (b'{"type": "end_call", "reason": "user pressed hang up"}', Control.END_CALL),
        (b'{"message": "AudioEnded"}', Control.AUDIO_ENDED),
    ],
)
def test_control_messages(data: bytes, control: Control) -> None:
    assert parse_control(data) is control


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not acceptable JSON"),
        (b"end_call", "not acceptable JSON"),
        (b"\xc3\x28", "not acceptable JSON"),
        (b"[]", "expected a JSON object, got list"),
        (b"42", "expected a JSON object, got int"),
        (b'{"type": null}', "'type' must be a string"),
        (b'{"type": "END_CALL"}', "unknown message type"),
        (b'{"message": "audioended"}', "neither"),
        (b'{"hello": "world"}', "neither"),
        (b'{"type": "end_call", "x": "' + b"a" * MAX_PACKET_BYTES + b'"}', "oversized"),
    ],
)
def test_malformed_control_messages_raise(data: bytes, reason: str) -> None:
    with pytest.raises(ControlError, match=reason):
        parse_control(data)
