"""Spoken form: cheap rules and WeTextProcessing's grammars turn numbers, money, dates, times,
units and abbreviations into words without ever changing a plain word; pronunciation lists then
replace whole words by the stated rules."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.text import MAX_ENTRIES, Pronunciations, SpokenForm, check_entries
from engine.text.guard import keeps_words, plain_words
from engine.text.rules import UNITS
from harness.cli import main


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    return SpokenForm()


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("It costs $1,234.56.", "one thousand two hundred and thirty four dollars fifty six"),
        ("On 3/4/2025 we met.", "twenty twenty five"),
        ("Meet me at 10:30pm.", "ten thirty PM"),
        ("Dr. Smith is here.", "doctor Smith"),
        ("We drove 60 km/h.", "sixty kilometers per hour"),
        ("She came 2nd.", "She came second."),
        ("The year 1999.", "nineteen ninety nine"),
    ],
)
def test_numbers_money_dates_times_units_and_abbreviations_become_words(
    spoken: SpokenForm, written: str, said: str
) -> None:
    out = spoken(written)
    assert said in out
    assert not any(ch.isdigit() for ch in out)


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("£12.50 per month", "twelve pounds fifty per month"),
        ("It costs $3.99.", "It costs three dollars ninety nine."),
        ("Only $0.99 or €5.20.", "Only ninety nine cents or five euros twenty."),
        ("It's 3x faster", "It's three times faster"),
        ("Use 2x.", "Use two times."),
        ("The 1990s", "The nineteen nineties"),
        ("the '90s and the 80s", "the nineties and the eighties"),
        ("19th-century art", "nineteenth-century art"),
        ("She came 2nd.", "She came second."),
        ("Jan. 5, 2024 was cold.", "January fifth, twenty twenty four was cold."),
        ("March 3, 2025 was a Monday.", "March third, twenty twenty five was a Monday."),
        ("Call ext. 1234 now.", "Call extension one two three four now."),
        ("Read Chapter IV and Part II.", "Read Chapter four and Part two."),
        ("World War II and Henry VIII.", "World War two and Henry the eighth."),
    ],
)
def test_the_issue_cases_are_said_as_a_person_says_them(
    spoken: SpokenForm, written: str, said: str
) -> None:
    assert spoken(written) == said


@pytest.mark.parametrize(
    ("written", "damaged"),
    [
        ("£12.50 per month", "twelve point five pounds - per minute onth"),
        ("It's 3x faster", "It's three times degrees Fahrenheit aster"),
        ("On TV 8:30 nightly.", "On Television eight thirty nightly."),
        ("I met her on Sun 5 May.", "I met her on Sunday the fifth of may."),
    ],
)
def test_the_guard_refuses_a_reading_that_changes_a_plain_word(written: str, damaged: str) -> None:
    assert not keeps_words(written, damaged)


@pytest.mark.parametrize(
    ("written", "damaged", "said"),
    [  # the grammar's own readings: it takes the "m" of "minutes" for minutes, and so on
        (
            "Bake for 20-25 minutes.",
            "Bake for twenty to twenty five minutes inutes.",
            "Bake for twenty to twenty five minutes.",
        ),
        (
            "Sleep 7-8 hours a night.",
            "Sleep seven to eight hours ours a night.",
            "Sleep seven to eight hours a night.",
        ),
        (
            "Wait 10-15 seconds.",
            "Wait ten to fifteen seconds econds.",
            "Wait ten to fifteen seconds.",
        ),
    ],
)
def test_the_guard_refuses_a_unit_taken_from_the_first_letter_of_a_plain_word(
    written: str, damaged: str, said: str
) -> None:
    assert not keeps_words(written, damaged)  # the word is kept, but a fragment is added
    assert keeps_words(written, said)


@pytest.mark.parametrize(
    ("written", "said", "kept"),
    [
        ("It lasts 2-3 hrs.", "It lasts two to three hours rs.", False),  # the grammar's
        ("Use 2-3 mL.", "Use two to three minutes L.", False),  # the grammar's
        ("It lasts 2-3 hrs.", "It lasts two to three hours.", True),
        ("It lasts 2-3 hrs.", "It lasts two to three hrs.", True),
        ("We drove 60 km/h today.", "We drove sixty kilometers per hour today.", True),
        ("It is 5 p.m. Then we go.", "It is five PM. Then we go.", True),
    ],
)
def test_a_unit_after_a_number_is_said_as_a_units_reading_or_as_written(
    written: str, said: str, kept: bool
) -> None:
    assert keeps_words(written, said) is kept


def test_nothing_may_be_said_where_only_spaces_and_punctuation_part_plain_words() -> None:
    assert not keeps_words("Cats, dogs.", "Cats, and dogs.")
    assert not keeps_words("Cats, dogs.", "Cats, dogs ogs.")
    assert not keeps_words("Cats, dogs.", "The Cats, dogs.")
    assert keeps_words("Visit example.com today.", "Visit example dot com today.")
    assert keeps_words("Cats & dogs.", "Cats and dogs.")


def test_a_word_after_a_number_is_exempt_only_when_it_is_a_unit() -> None:
    assert plain_words("Bake for 20-25 minutes.") == ["Bake", "for", "minutes"]
    assert plain_words("He is 6 ft 2 in tall.") == ["He", "is", "tall"]  # inches after feet
    assert plain_words("There were 2 in the car.") == ["There", "were", "in", "the", "car"]
    assert plain_words("It raised $5 million.") == ["It", "raised"]  # "five million dollars"


def test_a_window_whose_reading_takes_a_letter_of_a_word_for_a_unit_is_read_token_by_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    readings = {"for 1/3 minutes.": "for one third minutes inutes.", "1/3": "one third"}

    class Damaging:
        def normalize(self, text: str) -> str:
            return readings.get(text, text)

    form = SpokenForm()
    form._grammars["en"] = Damaging()
    with caplog.at_level(logging.DEBUG, logger="engine.text"):
        assert form("Bake for 1/3 minutes.") == "Bake for one third minutes."
    assert "changes a word" in caplog.text


@pytest.mark.parametrize("unit", UNITS)
def test_a_range_before_any_unit_reads_to_and_says_the_unit(spoken: SpokenForm, unit: str) -> None:
    said = f"It was two to three {UNITS[unit][1]} today."
    assert spoken(f"It was 2-3 {unit} today.") == said
    assert spoken(f"It was 2-3{unit} today.") == said


@pytest.mark.parametrize(
    "word", ["minutes", "hours", "seconds", "days", "weeks", "months", "years", "people", "in"]
)
def test_a_range_before_a_word_reads_to_and_keeps_the_word(spoken: SpokenForm, word: str) -> None:
    assert spoken(f"It was 20-25 {word} today.") == f"It was twenty to twenty five {word} today."


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("24/7", "twenty four seven"),  # not proper
        ("50/50", "fifty fifty"),
        ("16/9", "sixteen nine"),
        ("9/11", "nine eleven"),  # proper, but nobody writes elevenths so
        ("7/11", "seven eleven"),
        ("1/3", "one third"),
        ("3/4", "three quarters"),
        ("5/16", "five sixteenths"),
        ("2/3", "two thirds"),
    ],
)
def test_a_slash_is_a_fraction_only_when_proper_with_a_usual_denominator(
    spoken: SpokenForm, written: str, said: str
) -> None:
    assert spoken(f"It was {written} today.") == f"It was {said} today."


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("1 1/2", "one and a half"),
        ("2 3/4", "two and three quarters"),
        ("1 1/3", "one and a third"),
        ("4 1/8", "four and an eighth"),
        ("3 5/16", "three and five sixteenths"),
        ("2 1/2 kg", "two and a half kilograms"),
        ("3 24/7", "three twenty four seven"),  # no fraction, so no mixed number
    ],
)
def test_mixed_numbers_read_with_and(spoken: SpokenForm, written: str, said: str) -> None:
    assert spoken(f"Add {written} of it.") == f"Add {said} of it."


def test_abbreviations_units_and_numbers_may_change_plain_words_may_not() -> None:
    written = "Dr. Smith ran 5 km at 7 am on Jan. 5 in the 1990s, 3x, Chapter IV."
    assert plain_words(written) == ["Smith", "ran", "at", "on", "in", "the", "Chapter"]
    assert plain_words("I am here") == ["I", "am", "here"]  # "am" only after a number


def test_a_window_the_grammar_would_damage_is_read_token_by_token(
    spoken: SpokenForm, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="engine.text"):
        said = spoken("We watch TV 1/3 of the day.")
    assert said == "We watch TV one third of the day."
    assert "changes a word" in caplog.text  # the grammar said "Television"


def test_s1_markers_and_line_breaks_pass_through(spoken: SpokenForm) -> None:
    assert spoken("(excited) We won 3 games!\nThen 4 more.") == (
        "(excited) We won three games!\nThen four more."
    )


def test_chinese_lines_use_the_chinese_grammar_and_keep_full_width_sentence_ends(
    spoken: SpokenForm,
) -> None:
    assert spoken("我有3个苹果，花了12.5元。") == "我有三个苹果，花了十二点五元。"
    assert spoken("我跑了5 km，用了30 min。") == "我跑了五公里，用了三十分钟。"  # units in Chinese


def test_normalize_false_leaves_the_text_as_written(spoken: SpokenForm) -> None:
    assert spoken("Pay $5 on 2/3.", normalize=False) == "Pay $5 on 2/3."


def test_pronunciations_match_whole_words_with_the_case_rules() -> None:
    listed = Pronunciations({"gif": "jif", "SQL": "sequel", "New York": "the big apple"})
    assert listed.apply("A GIF, a Gif and a gif.") == "A jif, a jif and a jif."
    assert listed.apply("SQL, not sql or MySQL.") == "sequel, not sql or MySQL."
    assert listed.apply("New York, New Yorker, gifted.") == "the big apple, New Yorker, gifted."


def test_longer_entries_win_and_a_voice_overrides_the_global_list(spoken: SpokenForm) -> None:
    global_list = Pronunciations({"data": "day-ta", "data set": "dataset"})
    voice = Pronunciations({"data": "dah-ta"})
    form = SpokenForm(global_list)
    assert form("The data set has 2 rows of data.", voice=voice) == (
        "The dataset has two rows of dah-ta."
    )
    assert form("The data.") == "The day-ta."


def test_pronunciations_apply_after_normalisation(spoken: SpokenForm) -> None:
    form = SpokenForm(Pronunciations({"two": "a pair of"}))
    assert form("I have 2 cats.") == "I have a pair of cats."


@pytest.mark.parametrize(
    ("entries", "complaint"),
    [
        (["a", "b"], "a mapping"),
        ({"": "x"}, "neither side may be empty"),
        ({"x": 3}, "both sides must be text"),
        ({"x" * 101: "y"}, "longer than 100"),
        ({f"w{i}": "x" for i in range(MAX_ENTRIES + 1)}, "the limit is"),
    ],
)
def test_bad_lists_are_refused_naming_the_entry(entries: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        check_entries(entries, "test.yaml")


def test_a_yaml_list_loads_and_a_broken_one_names_its_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("SQL: sequel\nnginx: engine x\n")
    assert Pronunciations.load(good).entries == {"SQL": "sequel", "nginx": "engine x"}
    broken = tmp_path / "broken.yaml"
    broken.write_text("SQL: [sequel\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        Pronunciations.load(broken)


def test_cli_prints_the_spoken_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = tmp_path / "p.yaml"
    listed.write_text("dollars: bucks\n")
    assert main(["normalize", "It is $20.", "--pronunciations", str(listed)]) == 0
    assert capsys.readouterr().out.strip() == "It is twenty bucks."
    assert main(["normalize", "It is $20.", "--no-normalize"]) == 0
    assert capsys.readouterr().out.strip() == "It is $20."
