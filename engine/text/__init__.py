"""The engine's text front-end. Written text -> what a speaker says: spoken-form normalisation,
then pronunciation lists; and the sentences it is said in (``sentences``: what can be said at
all, where a streamed text has complete sentences, long text in chunks for one engine call each).
The service and ``fishbench normalize`` run it before they hand text to the engine.

Normalisation turns numbers, money, dates, times, ordinals, measures, fractions, telephone
numbers and common abbreviations into words ("£12.50" -> "twelve pounds fifty"), which S1
otherwise reads digit by digit or skips. Cheap regex rules (``rules``) say what is common or what
WeTextProcessing's grammar gets wrong; the grammar (wenet-e2e's weighted FSTs, prebuilt in its
wheel for English and Chinese) says the rest, in windows of bounded length (``normalizer``). It
never changes a plain word (``guard``). Lines with CJK characters go through the Chinese grammar;
S1's markers such as ``(excited)`` pass through unchanged.

A pronunciation list maps a written word or phrase to what to say instead (``SQL: sequel``); it
applies after normalisation, to whole words only (``pronunciations``).
"""

from engine.text.normalizer import (
    MARKER,
    MAX_GRAMMAR_CHARS,
    MAX_SPAN,
    SENTENCE_END,
    NormalizationStopped,
    SpokenForm,
)
from engine.text.pronunciations import (
    MAX_ENTRIES,
    MAX_ENTRY_CHARS,
    Pronunciations,
    check_entries,
)

__all__ = [
    "MARKER",
    "MAX_ENTRIES",
    "MAX_ENTRY_CHARS",
    "MAX_GRAMMAR_CHARS",
    "MAX_SPAN",
    "SENTENCE_END",
    "NormalizationStopped",
    "Pronunciations",
    "SpokenForm",
    "check_entries",
]
