"""Normalisation has a bounded cost: a 5,000-character text of any of the shapes that made the
grammar take a minute and gigabytes (one digit run, dotted or priced runs, one long word, many
small numbers), or one that is all for the grammar, is said in under two seconds and does not
grow the process."""

from __future__ import annotations

import time

import pytest

from engine.spoken_form import SpokenForm

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


def resident_mb() -> float:
    """This process's resident memory now (Linux), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    form = SpokenForm()
    form("Load the English grammar: 1/3.")  # the rules say the rest; it needs the grammar
    form("我有3个苹果。")
    return form


def said_within_bounds(spoken: SpokenForm, text: str) -> str:
    before = resident_mb()
    started = time.perf_counter()
    said = spoken(text)
    took = time.perf_counter() - started
    assert took < 2.0, f"{took:.1f} s"
    assert resident_mb() - before < 50
    return said


@pytest.mark.parametrize("text", SAID_BY_THE_RULES.values(), ids=SAID_BY_THE_RULES.keys())
def test_a_long_text_of_any_shape_is_said_fast_and_in_little_memory(
    spoken: SpokenForm, text: str
) -> None:
    said = said_within_bounds(spoken, text)
    assert said and not any(ch.isdigit() for ch in said)


@pytest.mark.parametrize("text", ALL_FOR_THE_GRAMMAR.values(), ids=ALL_FOR_THE_GRAMMAR.keys())
def test_a_long_text_all_for_the_grammar_is_bounded_too(spoken: SpokenForm, text: str) -> None:
    said = said_within_bounds(spoken, text)
    assert said != text  # the start was normalised


def test_a_long_digit_run_is_read_digit_by_digit(spoken: SpokenForm) -> None:
    assert spoken("ID 12345678901234567.") == (
        "ID one two three four five six seven eight nine zero one two three four five six seven."
    )
