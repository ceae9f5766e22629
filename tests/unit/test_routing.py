"""Room-name grammar and agent lookup: examples, then properties over generated names."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.routing import (
    MAX_USER_ID_LEN,
    RoomName,
    RoutingError,
    ambiguous_prefixes,
    format_room,
    parse_room,
    resolve_agent_id,
)

UUID_ID = "5b710eca-ee67-4c3a-aeb6-8b541f451b40"
IDS = [UUID_ID, "hotel-concierge", "sales"]

agent_ids = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=64)
user_ids = st.text(
    string.ascii_letters + string.digits + "_.@+:=-", min_size=1, max_size=MAX_USER_ID_LEN
)
timestamps = st.text(string.digits, min_size=1, max_size=16)


def test_parses_the_documented_example() -> None:
    room = parse_room("agent_5b710eca_user123_1705312800000")
    assert room == RoomName("5b710eca", "user123", "1705312800000")
    assert room.timestamp_ms == 1705312800000


def test_user_id_keeps_its_underscores() -> None:
    room = parse_room("agent_sales_user_with_parts_42_1705312800000")
    assert room.agent_id == "sales"
    assert room.user_id == "user_with_parts_42"
    assert room.timestamp == "1705312800000"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "does not start with 'agent_'"),
        ("room-123", "does not start with 'agent_'"),
        ("Agent_sales_u_1", "does not start with 'agent_'"),
        ("agent__u_1", "is not agent_"),  # empty agent id
        ("agent_sa.les_u_1", "is not agent_"),  # agent id with a forbidden character
        ("agent_sales_1", "is not agent_"),  # no user id
        ("agent_sales__1", "is not agent_"),  # empty user id
        ("agent_sales_u_", "is not agent_"),  # empty timestamp
        ("agent_sales_u_12a", "is not agent_"),  # timestamp not digits
        ("agent_sales_u_\uff11\uff12", "is not agent_"),  # non-ASCII (fullwidth) digits
        ("agent_sales_u ser_1", "user id"),  # space in the user id
        ("agent_sales_u\nx_1", "user id"),  # newline in the user id
        ("agent_sales_" + "u" * 129 + "_1", "longer than 128"),
        ("agent_" + "a" * 65 + "_u_1", "longer than 64"),
        ("agent_sales_u_" + "1" * 17, "longer than 16"),
    ],
)
def test_rejects_malformed_names(name: str, reason: str) -> None:
    with pytest.raises(RoutingError, match=reason) as excinfo:
        parse_room(name)
    assert "\n" not in str(excinfo.value), "routing errors are one log line"


def test_lookup_exact_id_wins_over_prefix() -> None:
    ids = ["abcdefgh", "abcdefgh-2"]
    assert resolve_agent_id("abcdefgh", ids) == "abcdefgh"


def test_lookup_by_unique_prefix_is_case_insensitive() -> None:
    assert resolve_agent_id("5B710ECA", IDS) == UUID_ID
    assert resolve_agent_id("5b710eca-ee67", IDS) == UUID_ID


def test_lookup_rejects_short_prefix_and_unknown_ids() -> None:
    with pytest.raises(RoutingError, match="no configured agent"):
        resolve_agent_id("5b710ec", IDS)  # 7 characters is not enough
    with pytest.raises(RoutingError, match="no configured agent"):
        resolve_agent_id("deadbeef", IDS)
    with pytest.raises(RoutingError, match="no configured agent"):
        resolve_agent_id("SALES", IDS)  # short ids match exactly only


def test_ambiguous_prefixes_are_reported() -> None:
    assert ambiguous_prefixes(["abcdefgh-1", "ABCDEFGH-2", "short", "shortish"]) == [
        ("abcdefgh-1", "ABCDEFGH-2")
    ]
    assert ambiguous_prefixes(IDS) == []


@given(agent_ids, user_ids, timestamps)
def test_format_then_parse_round_trips(agent_id: str, user_id: str, timestamp: str) -> None:
    room = RoomName(agent_id, user_id, timestamp)
    name = format_room(room)
    assert parse_room(name) == room
    assert format_room(parse_room(name)) == name


@given(agent_ids, st.lists(user_ids, min_size=2, max_size=4), timestamps)
def test_user_ids_with_underscores_survive(agent_id: str, parts: list[str], ts: str) -> None:
    user_id = "_".join(parts)
    assert parse_room(f"agent_{agent_id}_{user_id}_{ts}").user_id == user_id


@given(st.text(max_size=40).filter(lambda s: not s.startswith("agent_")))
def test_names_without_the_prefix_are_rejected(name: str) -> None:
    with pytest.raises(RoutingError):
        parse_room(name)


@given(agent_ids, user_ids, st.text(min_size=1, max_size=8).filter(lambda s: not s.isdigit()))
def test_non_digit_timestamps_are_rejected(agent_id: str, user_id: str, ts: str) -> None:
    name = f"agent_{agent_id}_{user_id}_{ts}"
    # a timestamp with '_' in it just moves the split: the last segment must still be digits
    if ts.rsplit("_", 1)[-1].isascii() and ts.rsplit("_", 1)[-1].isdigit():
        return
    with pytest.raises(RoutingError):
        parse_room(name)


@given(
    st.text(min_size=1, max_size=10).filter(
        lambda s: (
            any(c not in string.ascii_letters + string.digits + "-" for c in s) and "_" not in s
        )
    ),
    user_ids,
    timestamps,
)
def test_agent_ids_with_other_characters_are_rejected(bad: str, user_id: str, ts: str) -> None:
    with pytest.raises(RoutingError):
        parse_room(f"agent_{bad}_{user_id}_{ts}")


@given(
    agent_ids,
    st.text(min_size=1, max_size=10).filter(
        lambda s: any(c not in string.ascii_letters + string.digits + "_.@+:=-" for c in s)
    ),
    timestamps,
)
def test_user_ids_with_other_characters_are_rejected(agent_id: str, bad: str, ts: str) -> None:
    with pytest.raises(RoutingError):
        parse_room(f"agent_{agent_id}_{bad}_{ts}")


@given(st.lists(agent_ids, min_size=1, max_size=6, unique=True), st.data())
def test_any_known_id_resolves_to_itself(ids: list[str], data: st.DataObject) -> None:
    if ambiguous_prefixes(ids):
        return
    chosen = data.draw(st.sampled_from(ids))
    assert resolve_agent_id(chosen, ids) == chosen
    if len(chosen) >= 8:
        assert resolve_agent_id(chosen[:8].upper(), ids) == chosen
