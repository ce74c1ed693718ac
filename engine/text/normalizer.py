"""Spoken-form normalisation with a bounded cost and the do-no-harm rule.

English: the cheap rules of ``rules`` say what the grammar gets wrong or is slow at; what is
left goes to WeTextProcessing's grammar only around tokens with a digit or a symbol (plain words
have nothing to normalise, and the grammar costs one to a few milliseconds a character), one
window of at most ``MAX_SPAN`` characters per call. A window whose reading changes a plain word
(``guard``) is read again token by token, and a token whose reading still does is kept as
written, logged at DEBUG. Chinese: long digit runs are read digit by digit, and chunks of at
most ``MAX_SPAN`` characters with a digit or symbol go to the Chinese grammar. Between windows
the caller's ``stop`` is asked whether to go on, and once ``budget_s`` is spent, or the grammars
have read ``MAX_GRAMMAR_CHARS`` characters in this call, the rest is left as written.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from engine.text.guard import keeps_words
from engine.text.pronunciations import Pronunciations
from engine.text.rules import LONGEST_NUMBER, apply_rules

log = logging.getLogger("engine.text")

MAX_SPAN = 100  # characters per grammar call: its cost and memory grow faster than the length
# Characters the grammars may read in one call, about 1-3 ms each on two cores: what the cheap
# rules leave is rare in real text, so only a text built to be slow reaches this.
MAX_GRAMMAR_CHARS = 200
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# S1 control markers such as (excited): never spoken. A marker has a letter in it, so "(415)" in a
# phone number is read.
MARKER = re.compile(r"(\((?=[^()]*[^\W\d_])[^()]{1,40}\))")
# Where a sentence ends: after . ! ? … ; (and closing quotes) before a space, after a CJK
# full stop, or at a line break. Shared with the service's long-text splitter.
SENTENCE_END = re.compile(r"(?<=[.!?…;])[\"'”’)\]]*\s+|(?<=[。！？；])|\n\s*")
# The Chinese grammar writes ASCII punctuation; after a CJK character it is put back, so the
# splitter still finds each sentence end.
_FULL_WIDTH = {".": "。", "!": "！", "?": "？", ";": "；", ",": "，", ":": "："}
_CJK_END = re.compile(rf"(?<={_CJK.pattern})([.!?;,:])")
_NEEDS_GRAMMAR = re.compile(r"[\d$£€¥%&#@+=°º℃℉~^*|<>§/\\]")
_TOKEN = re.compile(r"\S+")
_LONG_DIGITS = re.compile(rf"\d{{{LONGEST_NUMBER + 1},}}")
_CHINESE_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")
_CHINESE_BREAKS = " ，、,；;：:"


class NormalizationStopped(Exception):
    """The caller's ``stop`` said to give up (its client left): nothing more is normalised."""


class _Grammar(Protocol):
    def normalize(self, text: str) -> str: ...


class _Run:
    """One call's stop check and grammar budget (seconds, and characters)."""

    def __init__(self, stop: Callable[[], bool] | None, budget_s: float | None) -> None:
        self.stop = stop
        self.deadline = None if budget_s is None else time.monotonic() + budget_s
        self.budget_s = budget_s
        self.grammar_chars = 0
        self.spent = False

    def check(self) -> None:
        if self.stop is not None and self.stop():
            raise NormalizationStopped("normalisation stopped: the caller gave up")

    def may_use_grammar(self, chars: int) -> bool:
        """Whether the grammar may read ``chars`` more characters; the first refusal warns."""
        if self.spent:
            return False
        if self.deadline is not None and time.monotonic() > self.deadline:
            log.warning("normalisation budget of %.1f s spent; the rest as written", self.budget_s)
        elif self.grammar_chars + chars > MAX_GRAMMAR_CHARS:
            log.warning(
                "normalisation read its %d grammar characters; the rest as written",
                MAX_GRAMMAR_CHARS,
            )
        else:
            self.grammar_chars += chars
            return True
        self.spent = True
        return False


def _apply(grammar: _Grammar, text: str) -> str:
    try:
        return grammar.normalize(text)
    except Exception as exc:  # a grammar that chokes on one span must not cost the request
        log.warning("normalisation failed; speaking as written: %r (%s)", text[:80], exc)
        return text


def _joined(pieces: list[str]) -> str:
    """The pieces end to end, with a space where two words would otherwise run together."""
    text = ""
    for piece in pieces:
        if text and piece and text[-1].isalnum() and piece[0].isalnum():
            text += " "
        text += piece
    return text


def _windows(tokens: list[re.Match[str]]) -> Iterator[tuple[int, int]]:
    """Runs of tokens (first, last index) whose text fits in ``MAX_SPAN`` characters."""
    first = 0
    for index, token in enumerate(tokens):
        if index > first and token.end() - tokens[first].start() > MAX_SPAN:
            yield first, index - 1
            first = index
    if tokens:
        yield first, len(tokens) - 1


def _chinese_chunks(text: str) -> Iterator[str]:
    """``text`` in chunks of at most ``MAX_SPAN`` characters, cut after a space or comma if
    there is one, else before a number."""
    while len(text) > MAX_SPAN:
        cut = max(text.rfind(mark, 0, MAX_SPAN) for mark in _CHINESE_BREAKS) + 1
        if cut <= 0:
            cut = MAX_SPAN
            while cut > MAX_SPAN - LONGEST_NUMBER - 2 and text[cut - 1].isdigit():
                cut -= 1
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


class SpokenForm:
    """Normalisation and the global pronunciation list; the grammars load once, on first use,
    and run one window at a time (pynini makes no promise about sharing them between threads)."""

    def __init__(self, pronunciations: Pronunciations | None = None) -> None:
        self.pronunciations = pronunciations or Pronunciations()
        self._grammars: dict[str, _Grammar] = {}
        self._lock = threading.Lock()

    def _grammar(self, language: str) -> _Grammar:
        if language not in self._grammars:
            if language == "zh":
                from tn.chinese.normalizer import Normalizer
            else:
                from tn.english.normalizer import Normalizer
            logging.getLogger("wetext").setLevel(logging.WARNING)  # "found existing fst"
            self._grammars[language] = Normalizer()
        return self._grammars[language]

    def preload(self, language: str = "en") -> None:
        """Load ``language``'s grammar now (English: about 3 s and 80 MB on two cores), so the
        first request that needs it does not wait for it."""
        with self._lock:
            self._grammar(language)

    def _say(self, language: str, text: str, run: _Run) -> str | None:
        """The grammar's reading of ``text`` (at most MAX_SPAN characters); ``text`` itself
        once the budget (time or MAX_GRAMMAR_CHARS) is spent; None when the reading would
        change a plain word."""
        run.check()
        if not run.may_use_grammar(len(text)):
            return text
        with self._lock:
            said = _apply(self._grammar(language), text)
        if keeps_words(text, said, units_in_english=language == "en"):
            return said
        log.debug("the grammar's %r for %r changes a word; trying narrower", said, text)
        return None

    def _english_gaps(self, text: str, run: _Run) -> str:
        """Text the rules left: each run of tokens with a digit or symbol, with a word of
        context either side, through the grammar; plain words stay as they are."""
        tokens = list(_TOKEN.finditer(text))
        needs = [_NEEDS_GRAMMAR.search(t.group(0)) is not None for t in tokens]
        pieces, position, index = [], 0, 0
        while index < len(tokens):
            if not needs[index]:
                index += 1
                continue
            last = index
            while last + 1 < len(tokens) and needs[last + 1]:
                last += 1
            first = index - 1 if index > 0 and tokens[index - 1].start() >= position else index
            last = min(last + 1, len(tokens) - 1)
            for start, end in _windows(tokens[first : last + 1]):
                window = tokens[first : last + 1][start : end + 1]
                pieces.append(text[position : window[0].start()])
                pieces.append(self._english_window(text, window, run))
                position = window[-1].end()
            index = last + 1
        pieces.append(text[position:])
        return "".join(pieces)

    def _english_window(self, text: str, window: list[re.Match[str]], run: _Run) -> str:
        written = text[window[0].start() : window[-1].end()]
        said = self._say("en", written, run)
        if said is not None:
            return said
        pieces, position = [], window[0].start()
        for token in window:
            pieces.append(text[position : token.start()])
            alone = token.group(0)
            said = self._say("en", alone, run) if _NEEDS_GRAMMAR.search(alone) else alone
            if said is None:
                log.debug("kept as written: %r", alone)
            pieces.append(alone if said is None else said)
            position = token.end()
        return "".join(pieces)

    def _english(self, text: str, run: _Run) -> str:
        pieces = [
            piece if final else self._english_gaps(piece, run) for piece, final in apply_rules(text)
        ]
        said = _joined(pieces)
        if keeps_words(text, said):
            return said
        log.debug("kept as written, its reading %r changes a word: %r", said, text)
        return text

    def _chinese(self, sentence: str, run: _Run) -> str:
        text = _LONG_DIGITS.sub(lambda m: m.group(0).translate(_CHINESE_DIGITS), sentence)
        said = []
        for chunk in _chinese_chunks(text):
            if not _NEEDS_GRAMMAR.search(chunk):
                said.append(chunk)  # nothing to normalise: spare the grammar its cost
                continue
            reading = self._say("zh", chunk, run)
            said.append(chunk if reading is None else reading)
        return "".join(said)

    def _line(self, line: str, run: _Run) -> str:
        """S1 markers pass through; English text is read whole (the rules need "Jan. 5" in
        one piece), Chinese sentence by sentence."""
        chinese = _CJK.search(line) is not None
        spoken = []
        for index, piece in enumerate(MARKER.split(line)):
            if index % 2:
                spoken.append(piece)
                continue
            run.check()
            if not chinese:
                spoken.append(self._english(piece, run))
                continue
            spoken += [self._chinese(s, run) for s in SENTENCE_END.split(piece) if s.strip()]
        text = " ".join(" ".join(spoken).split())
        return _CJK_END.sub(lambda m: _FULL_WIDTH[m.group(1)], text) if chinese else text

    def normalize(
        self,
        text: str,
        *,
        stop: Callable[[], bool] | None = None,
        budget_s: float | None = None,
    ) -> str:
        """Numbers, dates, money, ... as words, line by line; markers such as ``(excited)``
        are left as they are. ``stop`` is asked between spans (True raises
        NormalizationStopped); after ``budget_s`` seconds the grammars are no longer used."""
        run = _Run(stop, budget_s)
        lines = []
        for line in text.splitlines():
            if line.strip():
                run.check()
                lines.append(self._line(line, run))
        return "\n".join(lines)

    def __call__(
        self,
        text: str,
        *,
        normalize: bool = True,
        voice: Pronunciations | None = None,
        stop: Callable[[], bool] | None = None,
        budget_s: float | None = None,
    ) -> str:
        """The spoken form of ``text``: normalised (unless asked not to), then the lists applied."""
        spoken = self.normalize(text, stop=stop, budget_s=budget_s) if normalize else text
        entries = voice.over(self.pronunciations) if voice else self.pronunciations
        return entries.apply(spoken)
