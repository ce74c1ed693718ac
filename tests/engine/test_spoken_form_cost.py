"""Normalisation has a bounded cost: a 5,000-character text of any of the shapes that made the
grammar take a minute and gigabytes (one digit run, dotted or priced runs, one long word, many
small numbers), or one that is all for the grammar, is said within a bounded CPU time and a
bounded peak of memory.

README's figures (two shared cores): under 0.1 s and under 1 MB for the texts the rules say,
0.6-1 s for those all for the grammar. The bounds are CPU seconds of this thread (what a loaded
machine does not inflate) and the peak resident memory during the call (a spike freed before it
returns counts), with headroom for slower CPUs: measured 0.001-0.17 s and at most 0.3 MiB for the
rules' shapes, 0.08-0.28 s and 1 MiB for the grammar's."""

from __future__ import annotations

import time

import pytest

from engine.text import SpokenForm

MIB = 2**20
RULES_CPU_S, GRAMMAR_CPU_S = 0.5, 1.5
PEAK_BYTES = 4 * MIB

SAID_BY_THE_RULES = {
    "5,000 digits": "1" * 5000,
    "1.1.1. repeated": "1." * 2500,
    "$1$1$1 repeated": "$1" * 2500,
    "one 5,000-letter word": "a" * 5000,
    "5,000 characters of '1 '": "1 " * 2500,
    "Chinese then 4,999 digits": "我" + "1" * 4999,
    "ranges before a unit": "20-25 min " * 500,
    "time ranges": "3-4pm " * 833,
    "slashed pairs": "24/7 " * 1000,
    "mixed numbers": "3 1/2 " * 833,
}
ALL_FOR_THE_GRAMMAR = {  # the grammars stop after MAX_GRAMMAR_CHARS; the rest stays as written
    "ratios": "1:1 " * 1250,
    "fractions": "1/3 " * 1250,
    "Chinese numbers": "我有3个" * 1250,
}


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    form = SpokenForm()
    form("Load the English grammar: 1/3.")  # the rules say the rest; it needs the grammar
    form("我有3个苹果。")
    return form


def said_within_bounds(spoken: SpokenForm, text: str, cpu_s: float, peak_rss) -> str:
    started = time.thread_time()
    with peak_rss() as peak:
        said = spoken(text)
    took = time.thread_time() - started
    assert took < cpu_s, f"{took:.2f} CPU s"
    assert peak.growth_bytes < PEAK_BYTES, f"peak +{peak.growth_bytes / MIB:.1f} MiB"
    return said


@pytest.mark.parametrize("text", SAID_BY_THE_RULES.values(), ids=SAID_BY_THE_RULES.keys())
def test_a_long_text_of_any_shape_is_said_fast_and_in_little_memory(
    spoken: SpokenForm, text: str, peak_rss
) -> None:
    said = said_within_bounds(spoken, text, RULES_CPU_S, peak_rss)
    assert said and not any(ch.isdigit() for ch in said)


@pytest.mark.parametrize("text", ALL_FOR_THE_GRAMMAR.values(), ids=ALL_FOR_THE_GRAMMAR.keys())
def test_a_long_text_all_for_the_grammar_is_bounded_too(
    spoken: SpokenForm, text: str, peak_rss
) -> None:
    said = said_within_bounds(spoken, text, GRAMMAR_CPU_S, peak_rss)
    assert said != text  # the start was normalised


def test_a_long_digit_run_is_read_digit_by_digit(spoken: SpokenForm) -> None:
    assert spoken("ID 12345678901234567.") == (
        "ID one two three four five six seven eight nine zero one two three four five six seven."
    )
