"""The spoken-form table: over a hundred English sentences (money, dates, times, decades,
ordinals, units, phones, versions, URLs, e-mails, multipliers, roman numerals, ranges before
units and times, slashed pairs, mixed numbers) and what a speaker says for each, in
spoken_form_table.tsv; none of them may lose or change a plain word."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.text import SpokenForm
from engine.text.guard import keeps_words

TABLE = Path(__file__).with_name("spoken_form_table.tsv")
ROWS = [
    tuple(line.split("\t"))
    for line in TABLE.read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    return SpokenForm()


def test_the_table_has_over_a_hundred_distinct_sentences() -> None:
    assert all(len(row) == 2 for row in ROWS)
    assert len({written for written, _ in ROWS}) == len(ROWS) >= 100


@pytest.mark.parametrize(("written", "said"), ROWS, ids=[w for w, _ in ROWS])
def test_each_sentence_is_said_as_the_table_says_and_keeps_its_plain_words(
    spoken: SpokenForm, written: str, said: str
) -> None:
    out = spoken(written)
    assert keeps_words(written, out), f"a plain word of {written!r} changed: {out!r}"
    assert out == said
    assert not any(ch.isdigit() for ch in out)
