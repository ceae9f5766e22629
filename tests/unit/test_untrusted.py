"""Untrusted JSON is bounded before it is parsed, at every place it enters."""

from __future__ import annotations

import logging

import pytest

from worker.placeholders import parse_metadata
from worker.protocol import ControlError, parse_control
from worker.untrusted import MAX_DEPTH, UntrustedJSONError, depth, loads_bounded


@pytest.mark.parametrize(
    ("text", "levels"),
    [("1", 0), ("[]", 1), ('{"a": [1, {"b": 2}]}', 3), ('["[[[[", "}}"]', 1), (r'["\"[["]', 1)],
)
def test_depth_counts_brackets_outside_strings(text: str, levels: int) -> None:
    assert depth(text) == levels


def test_nesting_beyond_the_limit_is_refused_before_parsing() -> None:
    assert loads_bounded("[" * MAX_DEPTH + "]" * MAX_DEPTH, max_bytes=1000) is not None
    with pytest.raises(UntrustedJSONError, match="nested 33 levels deep"):
        loads_bounded("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), max_bytes=1000)
    with pytest.raises(UntrustedJSONError, match="nested 100000 levels deep"):
        loads_bounded("[" * 100_000, max_bytes=1_000_000)  # json.loads: RecursionError


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"x" * 11, "11 bytes, more than 10"), (b"\xff\xfe", "not UTF-8"), (b"{", "not JSON")],
)
def test_size_encoding_and_syntax_are_refused_with_what_was_wrong(
    data: bytes, message: str
) -> None:
    with pytest.raises(UntrustedJSONError, match=message):
        loads_bounded(data, max_bytes=10)


def test_a_deep_data_packet_is_a_control_error_not_a_recursion_error() -> None:
    with pytest.raises(ControlError, match="nested"):
        parse_control(b"[" * 1024)
    assert parse_control(b'{"type": "end_call"}').name == "END_CALL"


def test_deep_dispatch_metadata_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse_metadata('{"a":' * 975 + "1" + "}" * 975, where="dispatch metadata") == {}
    assert "ignoring dispatch metadata: nested 975 levels deep" in caplog.text
    assert parse_metadata('{"customer_name": "Sam"}', where="dispatch metadata") == {
        "customer_name": "Sam"
    }
