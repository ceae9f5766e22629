"""The dispatch metadata: placeholder values, and a call limit that can only shorten a call."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import make_agent
from worker.config import MIN_CALL_SECONDS, AgentConfig
from worker.dispatch import MAX_DURATION_KEY, encode_metadata, with_call_limit
from worker.placeholders import placeholder_values

AGENT = make_agent(limits={"max_duration": 600, "idle_timeout": 45})


def limited(limit: int) -> AgentConfig:
    return AGENT.model_copy(
        update={"limits": AGENT.limits.model_copy(update={"max_duration": limit})}
    )


def test_encode_metadata_round_trips_the_context() -> None:
    context = {"customer_name": "José", "plan": "gold", "visits": 3}
    assert json.loads(encode_metadata(context)) == context
    assert MAX_DURATION_KEY not in json.loads(encode_metadata(context))
    assert json.loads(encode_metadata(context, max_duration=300)) == {
        **context,
        MAX_DURATION_KEY: 300,
    }
    assert json.loads(encode_metadata({}, max_duration=60)) == {MAX_DURATION_KEY: 60}
    assert "José" in encode_metadata(context), "text stays readable in LiveKit's dashboards"


def test_the_reserved_key_cannot_come_from_the_context() -> None:
    with pytest.raises(ValueError, match="reserved"):
        encode_metadata({MAX_DURATION_KEY: 10})


def test_a_shorter_requested_limit_shortens_the_call() -> None:
    shortened = with_call_limit(AGENT, encode_metadata({"a": "b"}, max_duration=120))
    assert shortened.limits.max_duration == 120
    assert shortened.limits.idle_timeout == 45, "only max_duration changes"
    assert shortened.id == AGENT.id
    assert shortened.instructions == AGENT.instructions
    assert AGENT.limits.max_duration == 600, "the shared config is not modified"


@pytest.mark.parametrize(
    "metadata",
    [
        "",
        "{}",
        encode_metadata({"customer_name": "Ana"}),
        encode_metadata({}, max_duration=600),
        encode_metadata({}, max_duration=601),
        encode_metadata({}, max_duration=86_400),
    ],
    ids=["empty", "no-keys", "no-limit", "equal", "longer", "much-longer"],
)
def test_a_call_is_never_lengthened(metadata: str) -> None:
    result = with_call_limit(AGENT, metadata)
    assert result.limits == AGENT.limits


@pytest.mark.parametrize(
    "value",
    ["120", 120.0, 12.5, True, False, 0, -30, [120], {"seconds": 120}, None],
    ids=[
        "string",
        "float",
        "fraction",
        "true",
        "false",
        "zero",
        "negative",
        "list",
        "object",
        "null",
    ],
)
def test_an_unusable_limit_is_ignored_with_a_warning(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.dispatch"):
        result = with_call_limit(AGENT, json.dumps({MAX_DURATION_KEY: value}))
    assert result.limits == AGENT.limits
    warnings = [r for r in caplog.records if r.name == "worker.dispatch"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert MAX_DURATION_KEY in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [("not json", "not JSON"), ("[60]", "expected a JSON object"), ("60", "expected a JSON")],
)
def test_metadata_that_is_not_an_object_is_ignored_with_a_warning(
    metadata: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = with_call_limit(AGENT, metadata)
    assert result.limits == AGENT.limits
    assert any(
        r.levelno == logging.WARNING and message in r.getMessage() for r in caplog.records
    ), caplog.text


def test_placeholders_still_fill_with_the_reserved_key_present() -> None:
    agent = make_agent(
        instructions="You are talking to {customer_name}.", placeholders={"customer_name": "there"}
    )
    metadata = encode_metadata({"customer_name": "Ana"}, max_duration=60)
    assert placeholder_values(agent, metadata=metadata) == {"customer_name": "Ana"}
    assert with_call_limit(agent, metadata).limits.max_duration == 60


@given(
    requested=st.integers(min_value=1, max_value=10**12),
    limit=st.integers(min_value=10, max_value=4 * 3600),
)
def test_the_resulting_limit_is_the_shorter_of_the_two(requested: int, limit: int) -> None:
    """...but never under the shortest limit an agent may have (MIN_CALL_SECONDS)."""
    agent = limited(limit)
    result = with_call_limit(agent, encode_metadata({}, max_duration=requested))
    assert result.limits.max_duration == min(max(requested, MIN_CALL_SECONDS), limit)
    assert agent.limits.max_duration == limit
