"""What Piper is given to speak while the LLM is still writing."""

from __future__ import annotations

import asyncio

from worker.local.tts import ClauseFirstTokenizer


async def pieces(text: str, **options: int) -> list[tuple[str, str]]:
    """Stream `text` word by word; each piece with the word that was being written when it left."""
    stream = ClauseFirstTokenizer(**options).stream()
    out: list[str] = []

    async def read() -> None:
        async for token in stream:
            out.append(token.token)

    reader = asyncio.create_task(read())
    emitted: list[tuple[str, str]] = []
    for word in text.split(" "):
        stream.push_text(word + " ")
        await asyncio.sleep(0)
        emitted += [(piece, word) for piece in out]
        out.clear()
    stream.end_input()
    await reader
    return emitted + [(piece, "<end>") for piece in out]


async def test_the_first_clause_goes_out_before_the_sentence_ends() -> None:
    text = "I can see your order in our system, it left the warehouse at noon. It comes tomorrow."
    assert await pieces(text) == [
        ("I can see your order in our system,", "it"),
        ("it left the warehouse at noon.", "It"),
        ("It comes tomorrow.", "<end>"),
    ]


async def test_a_short_opening_waits_for_more_words() -> None:
    emitted = await pieces("Sure, I can check that for you. One moment please.")
    assert emitted[0][0] == "Sure, I can check that for you.", "a 1-word clause is too choppy"


async def test_a_short_first_sentence_goes_out_alone() -> None:
    emitted = await pieces("Sure! To check your order, I need its number. What is it?")
    assert emitted == [
        ("Sure!", "To"),  # a whole sentence, however short, is not choppy
        ("To check your order,", "I"),  # and the caller does not wait for the whole next one
        ("I need its number. What is it?", "<end>"),  # then sentences, short ones together
    ]


async def test_a_reply_without_punctuation_still_starts_after_a_few_words() -> None:
    text = " ".join(f"word{i}" for i in range(70))
    emitted = await pieces(text, first_words=8, max_words=30)
    assert emitted[0] == (" ".join(f"word{i}" for i in range(8)), "word8")
    assert all(len(piece.split()) <= 30 for piece, _ in emitted), "run-ons keep streaming"
    assert " ".join(piece for piece, _ in emitted).split() == text.split(), "nothing is lost"
