"""Written text -> what a speaker says: spoken-form normalisation, then pronunciation lists.

Normalisation turns numbers, money, dates, times, ordinals, measures, fractions, telephone
numbers and common abbreviations into words ("$1,234.56" -> "one thousand two hundred and
thirty four point five six dollars"), which S1 otherwise reads digit by digit or skips. It uses
WeTextProcessing (wenet-e2e, the normaliser CosyVoice uses): weighted FST grammars, ported from
NeMo's, that ship *prebuilt* in its wheel for English and Chinese, so loading them takes about a
second and needs nothing but pynini. NeMo text processing compiles its English grammars at first
use (minutes on two cores, or a cache folder to manage) and pins an older pynini beside
transformers and pandas. Lines with CJK characters go through the Chinese grammar, the rest
through the English one; S1's markers such as ``(excited)`` pass through unchanged.

A pronunciation list maps a written word or phrase to what to say instead (``SQL: sequel``). It
applies after normalisation, to whole words only (never inside a longer word). An entry written
in lower case matches any case (``gif`` matches "GIF" and "Gif"); one with a capital letter
matches exactly that case (``US`` matches "US", not "us"). Longer entries win over shorter ones
they overlap, and a voice's entries override the global list's.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import yaml

from engine.errors import ConfigError

log = logging.getLogger(__name__)

MAX_ENTRIES = 1000
MAX_ENTRY_CHARS = 100
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
MARKER = re.compile(r"(\([^()]{1,40}\))")  # S1 control markers such as (excited): never spoken
# Where a sentence ends: after . ! ? … ; (and closing quotes) before a space, after a CJK
# full stop, or at a line break. Shared with the service's long-text splitter.
SENTENCE_END = re.compile(r"(?<=[.!?…;])[\"'”’)\]]*\s+|(?<=[。！？；])|\n\s*")
# The Chinese grammar writes ASCII punctuation; after a CJK character it is put back, so the
# splitter still finds each sentence end.
_FULL_WIDTH = {".": "。", "!": "！", "?": "？", ";": "；", ",": "，", ":": "："}
_CJK_END = re.compile(rf"(?<={_CJK.pattern})([.!?;,:])")


def check_entries(entries: Any, source: str) -> dict[str, str]:
    """The entries as ``{written: spoken}``, or a ConfigError naming ``source`` and the bad one."""
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{source}: a pronunciation list is a mapping of written: spoken")
    if len(entries) > MAX_ENTRIES:
        raise ConfigError(f"{source}: {len(entries)} entries; the limit is {MAX_ENTRIES}")
    checked = {}
    for written, spoken in entries.items():
        if not isinstance(written, str) or not isinstance(spoken, str):
            raise ConfigError(f"{source}: {written!r}: both sides must be text")
        written, spoken = written.strip(), " ".join(spoken.split())
        if not written or not spoken:
            raise ConfigError(f"{source}: {written!r}: neither side may be empty")
        if max(len(written), len(spoken)) > MAX_ENTRY_CHARS:
            raise ConfigError(f"{source}: {written!r}: longer than {MAX_ENTRY_CHARS} characters")
        checked[written] = spoken
    return checked


@dataclass(frozen=True)
class Pronunciations:
    """``written: spoken`` entries with the matching rules of the module docstring."""

    entries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Pronunciations:
        """A YAML file of ``written: spoken`` lines; an empty file is an empty list."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the pronunciation list {path}: {exc}") from exc
        return cls(check_entries(data or {}, str(path)))

    def over(self, base: Pronunciations) -> Pronunciations:
        """These entries on top of ``base``'s."""
        return Pronunciations(base.entries | self.entries)

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if not self.entries:
            return None
        ordered = sorted(self.entries, key=lambda w: (-len(w), w == w.lower()))
        options = "|".join(
            f"(?i:{re.escape(w)})" if w == w.lower() else re.escape(w) for w in ordered
        )
        return re.compile(rf"(?<!\w)(?:{options})(?!\w)")

    @cached_property
    def _any_case(self) -> dict[str, str]:
        return {w.lower(): s for w, s in self.entries.items() if w == w.lower()}

    def _spoken(self, match: re.Match[str]) -> str:
        found = match.group(0)
        return self.entries.get(found) or self._any_case[found.lower()]

    def apply(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(self._spoken, text)


class _Grammar(Protocol):
    def normalize(self, text: str) -> str: ...


def _apply(grammar: _Grammar, sentence: str) -> str:
    try:
        return grammar.normalize(sentence)
    except Exception as exc:  # a grammar that chokes on one sentence must not cost the request
        log.warning("normalisation failed; speaking as written: %r (%s)", sentence[:80], exc)
        return sentence


class SpokenForm:
    """Normalisation and the global pronunciation list; the grammars load once, on first use,
    and run one line at a time (pynini makes no promise about sharing them between threads)."""

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

    def _line(self, line: str) -> str:
        """Sentence by sentence: the grammars' cost grows faster than the text's length."""
        chinese = _CJK.search(line) is not None
        spoken = []
        with self._lock:
            grammar = self._grammar("zh" if chinese else "en")
            for index, piece in enumerate(MARKER.split(line)):
                if index % 2:
                    spoken.append(piece)
                    continue
                spoken += [_apply(grammar, s) for s in SENTENCE_END.split(piece) if s.strip()]
        text = " ".join(" ".join(spoken).split())
        return _CJK_END.sub(lambda m: _FULL_WIDTH[m.group(1)], text) if chinese else text

    def normalize(self, text: str) -> str:
        """Numbers, dates, money, ... as words, line by line; markers such as ``(excited)``
        are left as they are."""
        return "\n".join(self._line(line) for line in text.splitlines() if line.strip())

    def __call__(
        self, text: str, *, normalize: bool = True, voice: Pronunciations | None = None
    ) -> str:
        """The spoken form of ``text``: normalised (unless asked not to), then the lists applied."""
        spoken = self.normalize(text) if normalize else text
        entries = voice.over(self.pronunciations) if voice else self.pronunciations
        return entries.apply(spoken)
