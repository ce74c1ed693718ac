"""Word timings for captions and lip-sync: the returned audio aligned with the requested words.

faster-whisper (the bundled tiny.en, on CPU) transcribes the audio with word timestamps; those
words are matched to the words the engine was asked to say (difflib over lower-cased letters and
digits; a run of misheard words of the same length is matched one to one), and each requested
word takes the times of its match. A requested word Whisper did not hear gets an even share of
the gap between its matched neighbours and ``aligned: false``. Times are seconds of the audio as
returned (after ``speed``), because that audio is what is aligned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from engine.text.sentences import without_markers

MIN_WORD_S = 0.01
_EDGES = "\"'“”‘’.,;:!?()[]{}…—-"


@dataclass(frozen=True)
class WordTime:
    word: str
    start: float
    end: float
    aligned: bool


def _key(word: str) -> str:
    return re.sub(r"[^0-9a-z]", "", word.lower())


def spoken_words(text: str) -> list[str]:
    """The words of ``text`` a listener hears, without markers and surrounding punctuation."""
    words = (w.strip(_EDGES) for w in without_markers(text).split())
    return [w for w in words if _key(w)]


def _matches(wanted: list[str], heard: list[str]) -> dict[int, int]:
    """Requested word index -> heard word index."""
    found = {}
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, wanted, heard, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            found.update(zip(range(i1, i2), range(j1, j2), strict=True))
    return found


def align_words(
    text: str, heard: list[tuple[str, float, float]], duration_s: float
) -> list[WordTime]:
    """Every spoken word of ``text``, in order, with ``0 <= start < end <= duration_s``."""
    words = spoken_words(text)
    found = _matches([_key(w) for w in words], [_key(w) for w, _, _ in heard])
    timed: list[WordTime] = []
    index = 0
    while index < len(words):
        if index in found:
            _, start, end = heard[found[index]]
            timed.append(_bounded(words[index], start, end, duration_s, aligned=True))
            index += 1
            continue
        gap_end = index
        while gap_end < len(words) and gap_end not in found:
            gap_end += 1
        after = heard[found[gap_end]][1] if gap_end < len(words) else duration_s
        before = timed[-1].end if timed else 0.0
        share = max(after - before, 0.0) / (gap_end - index)
        for k in range(index, gap_end):
            start = before + share * (k - index)
            timed.append(_bounded(words[k], start, start + share, duration_s, aligned=False))
        index = gap_end
    return timed


def _bounded(word: str, start: float, end: float, duration_s: float, aligned: bool) -> WordTime:
    start = min(max(start, 0.0), max(duration_s - MIN_WORD_S, 0.0))
    end = min(max(end, start + MIN_WORD_S), duration_s)
    return WordTime(word, round(start, 3), round(end, 3), aligned)
