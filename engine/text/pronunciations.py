"""Pronunciation lists: ``written: spoken`` entries applied to whole words after normalisation.

An entry written in lower case matches any case (``gif`` matches "GIF" and "Gif"); one with a
capital letter matches exactly that case (``US`` matches "US", not "us"). Longer entries win over
shorter ones they overlap, and a voice's entries override the global list's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError

MAX_ENTRIES = 1000
MAX_ENTRY_CHARS = 100


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
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the pronunciation list {path}: {exc}") from exc
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str) -> Pronunciations:
        """YAML ``written: spoken`` lines, checked; a ConfigError naming ``source`` otherwise."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{source}: not a YAML list of written: spoken lines ({exc})"
            ) from exc
        return cls(check_entries(data or {}, source))

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
