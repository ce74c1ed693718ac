"""Text -> the sentences and chunks it is said in: what can be said at all, where a streamed text
has complete sentences, and long text packed into chunks at sentence boundaries, each short
enough for one engine call.

Chunks are generated in order with the same voice, so splitting where a speaker would pause
anyway (sentence ends, then clause breaks, then spaces) keeps the joins inaudible.
"""

from __future__ import annotations

import re
import unicodedata

from engine.errors import RequestError
from engine.text.normalizer import MARKER, SENTENCE_END

_CLAUSE_END = re.compile(r"(?<=[,:，、：—])\s*")
# Letters, marks on them, digits, punctuation and symbols can be said (or shape how the rest is
# said); spaces, control, format (zero-width, direction marks) and unassigned code points cannot.
_SPEAKABLE_CATEGORIES = frozenset("LNPS")


def speakable(text: str) -> bool:
    """Whether ``text`` holds anything to say: a letter, digit, punctuation mark or symbol.

    Text of only zero-width spaces, NULs or combining marks would reach the engine as an empty
    prompt; every route refuses it the same way instead.
    """
    return any(unicodedata.category(char)[0] in _SPEAKABLE_CATEGORIES for char in text)


def check_text(text: str, max_chars: int, setting: str | None = None) -> str:
    """The stripped text, or a ``RequestError`` (a 422 from the service) for text that is empty,
    longer than ``max_chars`` (the ``setting`` that sets it named in the message) or has nothing
    to speak: the engine and every route refuse it the same way."""
    text = (text or "").strip()
    if not text:
        raise RequestError("text is empty")
    if len(text) > max_chars:
        limit = f"{max_chars} ({setting})" if setting else str(max_chars)
        raise RequestError(f"text is {len(text)} characters; the limit is {limit}")
    if not speakable(text):
        raise RequestError(
            "text has nothing to speak: only spaces, control characters or invisible "
            "(zero-width, format) characters"
        )
    return text


def complete_sentences(text: str) -> tuple[list[str], str]:
    """The sentences of ``text`` known to be complete (an end mark followed by more text, or a
    line break), and the rest, which more text may still continue."""
    *complete, rest = SENTENCE_END.split(text)
    return complete, rest


def without_markers(text: str) -> str:
    """``text`` without S1's markers such as ``(excited)``: what a listener hears as words."""
    return MARKER.sub(" ", text)


def _pieces(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [p.strip() for p in pattern.split(text) if p and p.strip()]


def _hard_wrap(text: str, limit: int) -> list[str]:
    """Split a clause with no usable punctuation at spaces (or anywhere, for unspaced scripts)."""
    out, line = [], ""
    for word in text.split(" "):
        while len(word) > limit:
            if line:
                out.append(line)
                line = ""
            out.append(word[:limit])
            word = word[limit:]
        candidate = f"{line} {word}".strip()
        if len(candidate) > limit:
            out.append(line)
            candidate = word
        line = candidate
    return out + ([line] if line else [])


def _units(text: str, limit: int) -> list[str]:
    units = []
    for sentence in _pieces(text, SENTENCE_END):
        if len(sentence) <= limit:
            units.append(sentence)
            continue
        for clause in _pieces(sentence, _CLAUSE_END):
            units.extend([clause] if len(clause) <= limit else _hard_wrap(clause, limit))
    return units


def split_text(text: str, limit: int) -> list[str]:
    """Pack whole sentences greedily into chunks of at most ``limit`` characters."""
    chunks: list[str] = []
    for unit in _units(text, limit):
        if chunks and len(chunks[-1]) + 1 + len(unit) <= limit:
            chunks[-1] = f"{chunks[-1]} {unit}"
        else:
            chunks.append(unit)
    return chunks
