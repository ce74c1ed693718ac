"""Spoken form: WeTextProcessing's grammars turn numbers, money, dates, times, units and
abbreviations into words; pronunciation lists then replace whole words by the stated rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.spoken_form import MAX_ENTRIES, Pronunciations, SpokenForm, check_entries
from harness.cli import main


@pytest.fixture(scope="module")
def spoken() -> SpokenForm:
    return SpokenForm()


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("It costs $1,234.56.", "one thousand two hundred and thirty four point five six dollars"),
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


def test_s1_markers_and_line_breaks_pass_through(spoken: SpokenForm) -> None:
    assert spoken("(excited) We won 3 games!\nThen 4 more.") == (
        "(excited) We won three games!\nThen four more."
    )


def test_chinese_lines_use_the_chinese_grammar_and_keep_full_width_sentence_ends(
    spoken: SpokenForm,
) -> None:
    assert spoken("我有3个苹果，花了12.5元。") == "我有三个苹果，花了十二点五元。"


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
