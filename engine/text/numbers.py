"""Numbers as English words, in the style of WeTextProcessing's grammar ("one hundred and one",
"nineteen ninety nine"), so text read by the cheap rules sounds like text read by the grammar."""

from __future__ import annotations

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
MAX_CARDINAL = 10**15 - 1  # beyond this nobody says the number; digits are read one by one


def _under_hundred(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")


def _under_thousand(n: int, joiner: str) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _under_hundred(rest)
    said = f"{_ONES[hundreds]} hundred"
    return f"{said}{joiner}{_under_hundred(rest)}" if rest else said


def cardinal(n: int) -> str:
    """``n`` (0 .. MAX_CARDINAL) as words, "and" only in the last group as the grammar has it."""
    if not 0 <= n <= MAX_CARDINAL:
        raise ValueError(f"{n} is out of range for a cardinal")
    if n < 1000:
        return _under_thousand(n, " and ")
    parts = []
    for scale, name in _SCALES:
        count, n = divmod(n, scale)
        if count:
            parts.append(f"{_under_thousand(count, ' ')} {name}")
    if n:
        parts.append(_under_thousand(n, " and "))
    return " ".join(parts)


def year(n: int) -> str:
    """A four-digit number read as a year ("nineteen ninety nine", "twenty twenty five",
    "two thousand five"), else as a cardinal."""
    high, low = divmod(n, 100)
    if not (1010 <= n <= 1999 or 2010 <= n <= 2099) or (low == 0 and n % 1000 == 0):
        return cardinal(n)
    if low == 0:
        return f"{_under_hundred(high)} hundred"
    return f"{_under_hundred(high)} {'oh ' if low < 10 else ''}{_under_hundred(low)}"


def number(written: str) -> str:
    """An integer as written (``1999``, ``1,234``): four bare digits read as a year, like the
    grammar does; thousands separators mean a cardinal."""
    value = int(written.replace(",", ""))
    return year(value) if len(written) == 4 and "," not in written else cardinal(value)


def ordinal(n: int) -> str:
    """``n`` as an ordinal ("first", "nineteenth", "twenty second", "one hundredth")."""
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def fraction(numerator: int, denominator: int) -> str:
    """A proper fraction as said after "and" in a mixed number ("a half", "three quarters",
    "an eighth", "a hundredth"): the article for one, halves and quarters by name."""
    if denominator == 2:
        part, parts = "half", "halves"
    elif denominator == 4:
        part, parts = "quarter", "quarters"
    else:
        part = ordinal(denominator).removeprefix("one ")
        parts = part + "s"
    if numerator != 1:
        return f"{cardinal(numerator)} {parts}"
    return f"{'an' if part[0] in 'aeiou' else 'a'} {part}"


def plural(words: str) -> str:
    """The plural of a number's last word ("nineties", "hundreds", "tens")."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + ("es" if last.endswith("x") else "s")
    return f"{head} {last}" if head else last


def digits(written: str) -> str:
    """Each digit of ``written`` as a word; anything else is dropped."""
    return " ".join(_ONES[int(d)] for d in written if d.isdigit())
