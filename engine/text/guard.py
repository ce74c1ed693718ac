"""Do no harm: normalisation may turn numbers and symbols into words, never change a plain word.

A plain word is a run of Latin letters (apostrophes inside allowed) touching no digit: "month"
in "per month", "century" in "19th-century", but not the "x" of "3x" or the "s" of "1990s". Every
plain word of the written text must appear unchanged (case included), in order, in what is said,
and nothing may be said between plain words that only spaces and punctuation part: a grammar
that takes the "m" of "25 minutes" for a unit says "minutes inutes", which keeps "minutes" but
adds a word where none was written. A unit or "am"/"pm" right after a number (the whole word
only) may change, but only to a unit's reading ("hours", "PM"), or stay as written: "2-3 hrs"
said "hours rs" is refused. Exempt, because saying them is the point: the abbreviations of
``rules.ABBREVIATIONS`` and the grammar's titles, a scale after money ("$5 million" is "five
million dollars"), "in" after a measure in feet ("6 ft 2 in"), the C or F after a degree sign, a
roman numeral after a word that makes it a number, and the scheme of an address.
"""

from __future__ import annotations

import re

from engine.text.rules import (
    ABBREVIATIONS,
    FOOT,
    MONEY_SCALE,
    REGNAL_NAMES,
    ROMAN_CONTEXT,
    UNIT,
    UNITS,
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
            rf"[$£€¥][\d,.$£€¥–-]*\d\s?(?P<c>{MONEY_SCALE})(?![^\W_])",
            rf"\d\s?(?P<f>(?:{FOOT})\s\d{{1,2}}(?:\.\d)?\s?in)(?![^\W_])",
            rf"\d\s?(?P<v>(?:{UNIT})/(?:{UNIT}))(?![^\W_])",
            rf"\d\s?(?P<u>{UNIT})(?![^\W_])",
            r"[°º](?P<d>[CF])\b",
            rf"\b(?:{ROMAN_CONTEXT}|{REGNAL_NAMES})\s(?P<r>[IVXLCDM]+)\b",
            r"\b(?P<s>" + "|".join(URL_SCHEMES) + r")\b(?=:|\.)",
        )
    )
)


# What parts two plain words when nothing between them is said: spaces and punctuation that
# touch a space or the text's edge ("minutes." or "Apples, pears"; not the "." of "example.com").
_SILENT = re.compile(r"[\s.,;:!?…\"'“”‘’()\[\]{}–—-]*")
# The ways a unit after a number may be said: any unit's reading ("kilometers", "degrees
# Celsius", "PM", "times"), or the unit as written. "hrs" said "hours rs" is neither.
_UNIT_READINGS = frozenset(tuple(said.split()) for pair in UNITS.values() for said in pair) | {
    ("AM",),
    ("PM",),
    ("am",),
    ("pm",),
    ("times",),
    ("by",),
}
_PER = frozenset({(), ("per",), ("slash",)})  # the "/" of "km/h"

# What must be said for one written thing: parts in order, each a set of ways (word sequences)
# any one of which says it. A plain word is one part with one way: itself.
_Ways = frozenset[tuple[str, ...]]
_Parts = tuple[_Ways, ...]


def _exempt(text: str, units_in_english: bool) -> tuple[set[int], list[tuple[int, int, _Parts]]]:
    """Where the exempt words of ``text`` start, and (when they are said in English) its units
    after a number with the ways each may be said (start, end, parts)."""
    exempt: set[int] = set()
    units = []
    for found in _EXEMPT.finditer(text):
        name = found.lastgroup
        start, end = found.span(name)
        exempt.update(w.start() for w in WORD.finditer(text, start, end))
        if not units_in_english:
            continue
        if name == "u" and _words(text, start, end):
            units.append((start, end, (_unit(text, start, end),)))
        elif name == "v":
            slash = text.index("/", start, end)
            parts = (_unit(text, start, slash), _PER, _unit(text, slash + 1, end))
            units.append((start, end, parts))
    return exempt, units


def _words(text: str, start: int, end: int) -> tuple[str, ...]:
    """The words of ``text[start:end]``, as words of the whole text ("s" of "1990s" is none)."""
    return tuple(w.group(0) for w in WORD.finditer(text, start, end))


def _unit(text: str, start: int, end: int) -> _Ways:
    return _UNIT_READINGS | {_words(text, start, end)}


def _plain(text: str) -> list[re.Match[str]]:
    exempt, _ = _exempt(text, units_in_english=False)
    return [w for w in WORD.finditer(text) if w.start() not in exempt]


def plain_words(text: str) -> list[str]:
    """The words of ``text`` that normalisation must leave as they are, in order."""
    return [w.group(0) for w in _plain(text)]


def _silent(gap: str, edge: bool) -> bool:
    """Whether nothing in ``gap`` is said: only punctuation, touching a space or the edge."""
    return _SILENT.fullmatch(gap) is not None and (edge or any(c.isspace() for c in gap))


def _runs(text: str, units_in_english: bool) -> tuple[list[list[_Ways]], bool, bool]:
    """What ``text`` must say in runs that nothing else said may come between (plain words and
    units after a number, as parts), and whether the first run starts and the last run ends
    what is said (nothing to say before or after)."""
    exempt, units = _exempt(text, units_in_english)
    plain = [
        (w.start(), w.end(), (frozenset({(w.group(0),)}),))
        for w in WORD.finditer(text)
        if w.start() not in exempt
    ]
    items = sorted(plain + units, key=lambda item: item[0])
    if not items:
        return [], False, False
    runs = [list(items[0][2])]
    for (_, end, _), (start, _, parts) in zip(items, items[1:], strict=False):
        if _silent(text[end:start], edge=False):
            runs[-1] += parts
        else:
            runs.append(list(parts))
    starts = _silent(text[: items[0][0]], edge=True)
    return runs, starts, _silent(text[items[-1][1] :], edge=True)


def _ends(words: tuple[str, ...], run: list[_Ways], at: int) -> set[int]:
    """Where a reading of ``run`` that starts at ``words[at]`` may end (none: it does not)."""
    ends = {at}
    for ways in run:
        ends = {e + len(w) for e in ends for w in ways if words[e : e + len(w)] == w}
        if not ends:
            break
    return ends


def keeps_words(written: str, said: str, *, units_in_english: bool = True) -> bool:
    """Whether every plain word of ``written`` appears, unchanged and in order, in ``said``,
    each unit after a number as a unit's reading or as written, with nothing said where only
    spaces and punctuation part them (or lead or end the text). ``units_in_english=False``
    (the Chinese grammar says "km" as 公里) lets a unit after a number be said any way."""
    runs, starts, ends = _runs(written, units_in_english)
    words = tuple(w.group(0) for w in WORD.finditer(said))
    position = 0
    for index, run in enumerate(runs):
        last = ends and index == len(runs) - 1
        candidates = [0] if starts and index == 0 else range(position, len(words) + 1)
        for at in candidates:
            reached = _ends(words, run, at)
            if last:
                reached &= {len(words)}
            if reached:
                position = min(reached)
                break
        else:
            return False
    return True
