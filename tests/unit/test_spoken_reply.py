"""What of a local model's streamed answer is spoken (`SpokenReply`): the first sentences of its
first line, whatever the pieces the stream cuts it into."""

from __future__ import annotations

import pytest

from worker.local.llm_client import SpokenReply

pytestmark = pytest.mark.unit

SCREEN_ANSWER = (
    "Great! Could you please give me your order number?\n\nOrder Number: [Insert Order Number]"
)


def spoken(answer: str, max_sentences: int | None, piece: int = 3) -> str:
    reply = SpokenReply(max_sentences)
    return "".join(reply.feed(answer[i : i + piece]) for i in range(0, len(answer), piece))


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_the_first_line_is_said_and_the_form_below_it_is_not(piece: int) -> None:
    said = spoken(SCREEN_ANSWER, 2, piece)
    assert said == "Great! Could you please give me your order number?"


def test_a_long_answer_stops_after_its_second_sentence() -> None:
    answer = "Thank you. I'll check that right away. It should arrive within seven days."
    assert spoken(answer, 2) == "Thank you. I'll check that right away."
    assert spoken(answer, 1) == "Thank you."
    assert spoken(answer, None) == answer


def test_markdown_emphasis_is_not_read_aloud() -> None:
    assert spoken("Your order is **on its way**.", 2) == "Your order is on its way."


def test_decimals_quotes_and_leading_line_breaks_do_not_end_it_early() -> None:
    answer = '\n\nShipping is 12.50 dollars. He said "yes." Then more.'
    assert spoken(answer, 2) == 'Shipping is 12.50 dollars. He said "yes."'


def test_once_over_every_later_piece_is_silent() -> None:
    reply = SpokenReply(1)
    assert reply.feed("Done. And") == "Done."
    assert reply.over
    assert reply.feed(" more words.") == ""
