"""Do no harm: normalisation may turn numbers and symbols into words, never change a plain word.

A plain word is a run of Latin letters (apostrophes inside allowed) touching no digit: "month"
in "per month", "century" in "19th-century", but not the "x" of "3x" or the "s" of "1990s". Every
plain word of the written text must appear unchanged (case included), in order, in what is said.
Exempt, because saying them is the point: the abbreviations of ``rules.ABBREVIATIONS`` and the
grammar's titles, a unit or "am"/"pm" right after a number, the C or F after a degree sign, a
roman numeral after a word that makes it a number, and the scheme of an address.
"""

from __future__ import annotations

import re

from engine.spoken_form.rules import (
    ABBREVIATIONS,
    REGNAL_NAMES,
    ROMAN_CONTEXT,
    UNIT,
    URL_SCHEMES,
)

_LETTER = r"[A-Za-zÀ-ÖØ-öø-ɏ]"
WORD = re.compile(rf"(?<![^\W_]){_LETTER}+(?:['’]{_LETTER}+)*(?![^\W_])")
_ABBREVIATED = sorted({a.rstrip(".") for a in ABBREVIATIONS} | {"Mr", "Mrs", "Ms", "Dr"}, key=len)
_EXEMPT = re.compile(
    "|".join(
        (
            r"(?<![\w.])(?P<a>" + "|".join(re.escape(a) for a in reversed(_ABBREVIATED)) + r")\.",
            r"\b(?P<t>Mr|Mrs|Ms|Dr)\s(?=[A-Z])",
            r"\b(?P<e>e\.g|i\.e)\.",
            r"\b(?P<m>Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\s\d",
            r"\b(?P<x>[Ee]xt)\s?\d",
            rf"\d\s?(?P<v>(?:{UNIT})/(?:{UNIT}))(?![^\W_])",
            rf"\d\s?(?P<u>{UNIT})(?![^\W_])",
            r"[°º](?P<d>[CF])\b",
            rf"\b(?:{ROMAN_CONTEXT}|{REGNAL_NAMES})\s(?P<r>[IVXLCDM]+)\b",
            r"\b(?P<s>" + "|".join(URL_SCHEMES) + r")\b(?=:|\.)",
        )
    )
)


def plain_words(text: str) -> list[str]:
    """The words of ``text`` that normalisation must leave as they are, in order."""
    exempt = set()
    for found in _EXEMPT.finditer(text):
        name = found.lastgroup
        start, end = found.span(name)
        exempt.update(w.start() for w in WORD.finditer(text, start, end))
    return [w.group(0) for w in WORD.finditer(text) if w.start() not in exempt]


def keeps_words(written: str, said: str) -> bool:
    """Whether every plain word of ``written`` appears, unchanged and in order, in ``said``."""
    remaining = iter(w.group(0) for w in WORD.finditer(said))
    return all(word in remaining for word in plain_words(written))
