"""Per-language word lists for turn-taking, and how transcripts are compared with them.

- Acknowledgements ("yeah", "uh huh", "okay", "got it"): said over the agent, they mean "go on".
  A transcript is one when it is made of at most `MAX_PHRASES_IN_A_ROW` of them ("yeah, yeah",
  "oh okay, got it").
- Continuation words: a sentence does not end on "the", "my", "and", "to" or "um". A transcript
  ending on one is a caller who paused mid-sentence, whatever the audio model thinks.
- Not acknowledgements: words that ask the agent to stop; an agent file may not list them.
- Goodbyes ("goodbye", "that's all", "have a nice day"): a caller's turn made only of them, thanks
  and acknowledgements ("Great, that is all. Thank you, goodbye.") ends the call after the reply.

Transcripts are compared as lowercase words without punctuation: "Uh-huh." is `uh huh`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

MAX_PHRASES_IN_A_ROW = 3
MAX_PHRASE_WORDS = 4

_SEPARATORS = re.compile(r"[\-\u2010-\u2015/]")
_NOT_A_WORD = re.compile(r"[^\w\s']")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> tuple[str, ...]:
    """`text` as comparable words: lowercase, hyphens split, punctuation dropped."""
    spaced = _NOT_A_WORD.sub(" ", _SEPARATORS.sub(" ", text.lower()))
    return tuple(w.strip("'") for w in spaced.split() if w.strip("'"))


def primary_language(language: str) -> str:
    """`en` for `en-US`: the lists are per language, not per region."""
    return language.split("-", maxsplit=1)[0].lower()


def _words_list(spec: str) -> tuple[str, ...]:
    """A word list written as `"a|b|c d"` (`|` separates entries, which may hold spaces)."""
    return tuple(entry.strip() for entry in spec.split("|") if entry.strip())


ACKNOWLEDGEMENTS: dict[str, tuple[str, ...]] = {
    "en": _words_list(
        "yeah|yea|yes|yep|yup|ya|yah|uh huh|uhhuh|mm hmm|mmhmm|mhm|mhmm|mm|mmm|hmm|okay|ok|k|kay|"
        "alright|all right|right|sure|got it|gotcha|i see|oh|ah|aha|oh okay|cool|great|good|"
        "nice|perfect|exactly|true|indeed|of course|makes sense|that makes sense|sounds good|"
        "go on|i know|wow"
    ),
    "es": _words_list(
        "sí|si|vale|ajá|aja|claro|ya|bueno|de acuerdo|entiendo|mhm|mm|ok|okay|perfecto|exacto|"
        "ah|oh|ya veo|bien"
    ),
    "fr": _words_list(
        "oui|ouais|d'accord|ok|okay|mm|mhm|hum|ah|oh|ah oui|je vois|bien sûr|voilà|exactement|"
        "parfait|bien|entendu|c'est ça"
    ),
    "de": _words_list(
        "ja|jaja|genau|okay|ok|mhm|mm|aha|ah|oh|alles klar|stimmt|richtig|verstehe|"
        "ich verstehe|klar|gut|super|prima"
    ),
    "it": _words_list(
        "sì|si|certo|ok|okay|va bene|ho capito|capito|esatto|mhm|mm|ah|oh|giusto|perfetto|bene|"
        "d'accordo"
    ),
    "pt": _words_list(
        "sim|tá|ta|certo|uhum|entendi|claro|beleza|ok|okay|mhm|mm|ah|oh|exato|perfeito|tá bom|"
        "ta bom|com certeza"
    ),
}
"""Default acknowledgements per language (an agent's `turn_taking.acknowledgements.phrases`
replaces its language's list)."""

STOP_WORDS = frozenset(
    _words_list(
        "stop|wait|no|nope|hold|hang|sorry|excuse|actually|but|pardon|para|espera|perdón|"
        "arrête|attends|non|halt|stopp|warte|nein|moment|aspetta|basta|scusa|pare|espere|não"
    )
)
"""Words that ask the agent to stop or let the caller speak: never part of an acknowledgement
(an agent file listing one is refused at start)."""

GOODBYES: dict[str, tuple[str, ...]] = {
    "en": _words_list(
        "goodbye|good bye|bye|bye bye|bye now|see you|see ya|talk to you later|take care|"
        "have a nice day|have a good day|have a great day|that's all|that is all|that's it|"
        "that's everything|that'll be all|nothing else|i'm done|i'm all set|all set|hang up"
    ),
    "es": _words_list("adiós|adios|hasta luego|hasta pronto|chao|chau|eso es todo|nada más"),
    "fr": _words_list(
        "au revoir|salut|bonne journée|bonne soirée|à bientôt|c'est tout|rien d'autre"
    ),
    "de": _words_list(
        "auf wiedersehen|auf wiederhören|tschüss|tschüs|bis bald|das war's|das wars|"
        "das ist alles|schönen tag noch"
    ),
    "it": _words_list("arrivederci|a presto|buona giornata|è tutto|nient'altro"),
    "pt": _words_list("tchau|adeus|até logo|até mais|é só isso|só isso|mais nada"),
}
"""Default goodbyes per language (an agent's `turn_taking.goodbyes.phrases` replaces its
language's list). Words that also greet ("ciao", "salut") are left out: a caller answering the
greeting with one would end the call."""

THANKS: dict[str, tuple[str, ...]] = {
    "en": _words_list(
        "thanks|thank you|thank you very much|thanks a lot|many thanks|cheers|for your help|"
        "for all your help|for now|then|so|no|nope|no thanks|no thank you|you too|and|um|uh|er|erm"
    ),
    "es": _words_list("gracias|muchas gracias|no|nada|entonces|por tu ayuda|por su ayuda"),
    "fr": _words_list("merci|merci beaucoup|non|alors|pour votre aide"),
    "de": _words_list("danke|danke schön|vielen dank|nein|dann|für ihre hilfe"),
    "it": _words_list("grazie|grazie mille|no|allora|per l'aiuto"),
    "pt": _words_list("obrigado|obrigada|muito obrigado|muito obrigada|não|então"),
}
"""What may come with a goodbye without making it a request: thanks, "no", "for now"."""

MAX_GOODBYE_PARTS = 6

CONTINUATIONS: dict[str, frozenset[str]] = {
    "en": frozenset(
        _words_list(
            "a|an|the|my|your|our|their|into|onto|between|than|and|or|but|because|if|although|"
            "though|whether|unless|i|um|uh|er|erm|uhm"
        )
    ),
    "es": frozenset(_words_list("el|los|las|un|una|mi|mis|y|o|pero|porque|eh")),
    "fr": frozenset(_words_list("le|les|un|une|des|mon|ma|mes|et|ou|mais|euh")),
    "de": frozenset(_words_list("eine|einen|einem|einer|und|oder|aber|weil|dass|äh|ähm")),
    "it": frozenset(_words_list("il|lo|gli|un|una|uno|e|o|ma|perché|ehm")),
    "pt": frozenset(_words_list("os|um|uma|meu|minha|e|ou|mas|porque|eh")),
}
"""Words a caller's sentence does not end on, per language: determiners, conjunctions, fillers.
Kept short on purpose: a word here makes the agent wait, so only words that (almost) never end
a sentence belong."""

# English has no list that covers it: a few rules on the last words, each cheap and each about a
# word that needs what comes after it. A rule that fires makes the agent wait, so every one has
# its exceptions (questions, phrasal verbs, pronouns) written next to it.
_EN_STRANDABLE = frozenset(_words_list("to|of|from|with|for|about|at|like|when|while"))
"""Words that end a wh-question ("Who am I talking to?") but not a statement ("I'd like to")."""
_EN_PARTICLES = frozenset(_words_list("on|in|up|out|off|over|down|back|through|around"))
"""Prepositions that are also particles of phrasal verbs: "placed on" needs more, "hold on" not
(nor "come in" alone: two words are a phrasal verb)."""
_EN_PARTICLE_VERBS = frozenset(
    _words_list(
        "log|logged|logging|sign|signed|signing|check|checked|checking|hold|holding|hang|carry|"
        "go|going|keep|move|plug|plugged|turn|turned|switch|switched|put|try|tried|drop|dropped|"
        "fill|filled|let|get|got|set|back|call|called|calling|give|gave|break|broke|show|shut|"
        "pick|picked|sort|sorted|work|working"
    )
)
_EN_OBJECT_PRONOUNS = frozenset(_words_list("it|them|me|him|her|us|you|this|that|everything"))
_EN_AUXILIARIES = frozenset(
    _words_list(
        "is|are|was|were|am|be|been|have|has|had|do|does|did|will|would|can|could|should|may|"
        "might|must"
    )
)
"""Auxiliaries: a sentence ends on one after a pronoun ("Yes, it is."), not after a noun ("My
account number is")."""
_EN_PRONOUNS = frozenset(
    _words_list("i|you|he|she|it|we|they|that|this|there|here|who|which|what|one|so|yes|no|not")
)
_EN_GIVING_VERBS = frozenset(
    _words_list("tell|give|show|send|bring|remind|email|text|offer|pass|hand|lend|get")
)
"""Verbs that take a thing after their person: "tell me" needs what, "help me" does not."""
_EN_OBJECT_VERBS = frozenset(
    _words_list(
        "cancel|change|book|order|buy|return|update|send|make|find|add|remove|pay|reset|track|"
        "report|confirm|schedule|reschedule|transfer|upgrade|renew|replace|exchange|want|need"
    )
)
"""Verbs that need their object in a support call: "I'd like to cancel" has not said what."""
_EN_VERB_LEADS = frozenset(
    _words_list("to|please|you|i|we|they|can|could|will|would|should|must|lets|let's|wanna")
)
_EN_QUESTION_WORDS = frozenset(_words_list("who|what|where|which|how|when|why|whom|whose"))


def _english_mid_sentence(said: tuple[str, ...]) -> bool:
    last, before = said[-1], said[:-1]
    prev = before[-1] if before else ""
    # "Who am I talking to?", "That's what I was looking for": a wh-word before the end (a
    # question mark alone is not enough: "Can you send it to?" is a transcriber's guess)
    stranded = any(w in _EN_QUESTION_WORDS for w in before)
    if last in _EN_STRANDABLE:
        return not stranded
    if last in _EN_PARTICLES:
        phrasal = prev in _EN_PARTICLE_VERBS or prev in _EN_OBJECT_PRONOUNS or len(said) <= 2
        return not (stranded or phrasal)
    if last in _EN_AUXILIARIES:
        return bool(prev) and prev not in _EN_PRONOUNS
    if last in ("me", "us") and prev in _EN_GIVING_VERBS:
        return not stranded
    if last in _EN_OBJECT_VERBS and prev in _EN_VERB_LEADS:
        return not stranded
    return False


class PhraseSet:
    """A list of acknowledgement phrases, and what a transcript is with respect to it."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self._phrases = frozenset(w for w in map(words, phrases) if w)
        self._prefixes = frozenset(p[:i] for p in self._phrases for i in range(1, len(p)))

    def __len__(self) -> int:
        return len(self._phrases)

    def is_acknowledgement(self, text: str) -> bool:
        """`text` is nothing but acknowledgements, at most `MAX_PHRASES_IN_A_ROW` of them."""
        said = words(text)
        return bool(said) and _covers(said, self._phrases, MAX_PHRASES_IN_A_ROW)

    def could_become_acknowledgement(self, text: str) -> bool:
        """`text` is an acknowledgement, or its beginning ("uh" of "uh huh"): interim words
        that do not yet tell a caller saying "go on" from one taking the floor."""
        said = words(text)
        if not said or _covers(said, self._phrases, MAX_PHRASES_IN_A_ROW):
            return bool(said)
        for cut in range(len(said)):
            head, tail = said[:cut], said[cut:]
            if tail in self._prefixes and _covers(head, self._phrases, MAX_PHRASES_IN_A_ROW - 1):
                return True
        return False


class Goodbyes:
    """A caller's closing turn: nothing but goodbyes, thanks and acknowledgements, with at least
    one goodbye ("No, that's all, thanks. Bye!"), or a turn whose last sentence is one ("Okay,
    I'll try that. Thank you, goodbye."); never a request that merely holds one ("I want to say
    goodbye to my old plan") or that follows one ("Goodbye. Oh wait, one more thing?")."""

    def __init__(self, goodbyes: Iterable[str], extras: Iterable[str]) -> None:
        self._goodbyes = frozenset(w for w in map(words, goodbyes) if w)
        self._parts = self._goodbyes | frozenset(w for w in map(words, extras) if w)

    def __len__(self) -> int:
        return len(self._goodbyes)

    def is_goodbye(self, text: str) -> bool:
        last = _SENTENCES.split(text.strip())[-1]
        return self._closes(text) or (last != text.strip() and self._closes(last))

    def _closes(self, text: str) -> bool:
        said = words(text)
        if not said or not _covers(said, self._parts, MAX_GOODBYE_PARTS):
            return False
        return any(said[i : i + len(g)] == g for g in self._goodbyes for i in range(len(said)))


def _covers(said: tuple[str, ...], phrases: frozenset[tuple[str, ...]], most: int) -> bool:
    """Whether `said` splits into 1..`most` phrases (empty `said`: only when `most` allows 0)."""
    if not said:
        return most >= 0
    if most == 0:
        return False
    return any(
        said[:n] in phrases and (n == len(said) or _covers(said[n:], phrases, most - 1))
        for n in range(1, min(MAX_PHRASE_WORDS, len(said)) + 1)
    )


@cache
def default_acknowledgements(language: str) -> PhraseSet | None:
    phrases = ACKNOWLEDGEMENTS.get(primary_language(language))
    return PhraseSet(phrases) if phrases else None


@cache
def default_goodbyes(language: str) -> Goodbyes | None:
    lang = primary_language(language)
    return goodbyes(GOODBYES[lang], language) if lang in GOODBYES else None


def goodbyes(phrases: Iterable[str], language: str) -> Goodbyes:
    """`phrases` as goodbyes, with the language's thanks and acknowledgements around them."""
    lang = primary_language(language)
    return Goodbyes(phrases, (*THANKS.get(lang, ()), *ACKNOWLEDGEMENTS.get(lang, ())))


def ends_mid_sentence(text: str, language: str) -> bool:
    """Whether the transcript stops where no sentence ends: on a determiner, a conjunction or a
    filler; in English also on a preposition outside a question, an auxiliary after a noun, or a
    verb still waiting for its object. Languages without a list never do."""
    said = words(text)
    lang = primary_language(language)
    continuations = CONTINUATIONS.get(lang)
    if not said or continuations is None:
        return False
    last = said[-1]
    if last in continuations:
        return True
    return lang == "en" and _english_mid_sentence(said)
