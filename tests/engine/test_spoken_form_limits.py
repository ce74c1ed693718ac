"""The limits: ``stop`` is asked between spans and ends the work with NormalizationStopped;
after ``budget_s`` seconds, or MAX_GRAMMAR_CHARS characters, the grammars are no longer used
(the rest is left as written, with one warning); no grammar call sees more than MAX_SPAN
characters."""

from __future__ import annotations

import logging

import pytest

from engine.text import MAX_GRAMMAR_CHARS, MAX_SPAN, NormalizationStopped, SpokenForm


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    form = SpokenForm()
    form("Warm up 1/3 of it.")
    return form


def test_stop_is_asked_between_spans_and_ends_the_work(spoken: SpokenForm) -> None:
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 3

    with pytest.raises(NormalizationStopped):
        spoken("1/3 " * 45, stop=stop)  # one line, two windows for the grammar
    assert len(asked) == 4  # not asked again once it said stop


def test_a_stop_that_never_fires_changes_nothing(spoken: SpokenForm) -> None:
    said = spoken("Add 1/3 of it.", stop=lambda: False)
    assert said == "Add one third of it."


def test_a_spent_budget_leaves_the_grammars_part_as_written_with_one_warning(
    spoken: SpokenForm, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.text"):
        said = spoken("Pay $5 for 1/3, 2/3 and 3/4.", budget_s=0)
    assert said == "Pay five dollars for 1/3, 2/3 and 3/4."
    assert [r.message for r in caplog.records].count(
        "normalisation budget of 0.0 s spent; the rest as written"
    ) == 1


def measured(spoken: SpokenForm, seen: list[int]) -> SpokenForm:
    """A SpokenForm whose English grammar (the real one) notes the length of what it reads."""
    grammar = spoken._grammar("en")

    class Measured:
        def normalize(self, text: str) -> str:
            seen.append(len(text))
            return grammar.normalize(text)

    form = SpokenForm()
    form._grammars["en"] = Measured()
    return form


def test_no_grammar_call_sees_more_than_max_span_characters(spoken: SpokenForm) -> None:
    seen: list[int] = []
    text = "1/3 " * 45  # every token needs the grammar: one run of 180 characters
    assert measured(spoken, seen)(text) == " ".join(["one third"] * 45)
    assert max(seen) <= MAX_SPAN < sum(seen)


def test_the_grammars_read_at_most_max_grammar_chars_a_call(
    spoken: SpokenForm, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="engine.text"):
        said = measured(spoken, seen)("1/3 " * 1250)  # 5,000 characters, all for the grammar
    assert sum(seen) <= MAX_GRAMMAR_CHARS
    assert said.startswith("one third one third") and said.endswith("1/3 1/3")
    assert caplog.text.count("grammar characters; the rest as written") == 1
