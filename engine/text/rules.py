"""Cheap English rules: written forms the grammar misreads, or reads too slowly, said by regex.

Each rule is one regular expression (linear in its input) and a function that says a match; a
function may return None to leave the match to the grammar. The rules run before the grammar
and their words are final: money with cents ("twelve pounds fifty"), decades ("nineteen
nineties"), ordinals ("nineteenth-century"), multipliers ("three times"), dates ("March third,
twenty twenty five", 3/4/2025, 2024-01-15), clock times, common units, percentages, decimals,
ranges with "to" ("20-25 minutes", "3-4pm", "$20-30", "March 3-5"), a slash between numbers
that is no fraction ("24/7" is "twenty four seven"), mixed numbers ("three and a half"), feet
and inches, common abbreviations, roman numerals after a word that makes them numbers ("Chapter
IV", "Henry VIII"), versions, URLs and e-mail addresses, phone and card numbers, digit runs too
long to be a number, tokens too long to be any written form, and plain integers; so the
grammar, which costs milliseconds a character, is rarely needed. Their style follows the
grammar's ("one hundred and one", "nineteen ninety nine", "ten thirty PM") so both read alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.text.numbers import (
    MAX_CARDINAL,
    cardinal,
    digits,
    fraction,
    number,
    ordinal,
    plural,
    year,
)

LONGEST_TOKEN = 48  # no written number, date or unit is longer; a longer token is not a form
LONGEST_NUMBER = 15  # digits; a longer run is an identifier, read digit by digit

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MONTH_ABBREVIATIONS = {m[:3]: m for m in _MONTHS} | {"Sept": "September"}
MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|" + (
    r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)"
)
_DAY = r"(?:3[01]|[12]\d|0?[1-9])"

# Written with a full stop, these are always abbreviations; the guard lets them change.
ABBREVIATIONS = {
    "Dr.": "doctor",
    "Mr.": "Mister",
    "Mrs.": "Misses",
    "Ms.": "Miss",
    "Prof.": "Professor",
    "Mt.": "Mount",
    "Jr.": "Junior",
    "Sr.": "Senior",
    "vs.": "versus",
    "etc.": "et cetera",
    "e.g.": "for example",
    "i.e.": "that is",
    "approx.": "approximately",
    "Approx.": "approximately",
    "dept.": "department",
    "Dept.": "department",
    "Ave.": "Avenue",
    "Blvd.": "Boulevard",
    "Inc.": "Incorporated",
    "Ltd.": "Limited",
    "Fig.": "figure",
    "Vol.": "volume",
    "ext.": "extension",
    "Ext.": "extension",
} | {f"{short}.": full for short, full in _MONTH_ABBREVIATIONS.items()}
_TITLES = {"Dr.", "Mr.", "Mrs.", "Ms.", "Prof.", "Mt."}  # never the end of a sentence

_CURRENCIES = {  # symbol: (one, many, one hundredth, hundredths)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "", ""),
}
_SCALES = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "bn": "billion"}
# A scale after an amount of money; the currency is said after it ("five million dollars").
MONEY_SCALE = r"thousand|million|billion|trillion|bn|[kKmM]"

# The words a roman numeral follows when it is a number; regnal names read it as an ordinal.
ROMAN_CONTEXT = (
    r"Chapter|Part|Volume|Book|Act|Scene|Section|Article|Appendix|Phase|Stage|Round|Episode|"
    r"Season|Level|Title|Class|Type|War|Bowl|Unit|Lesson|Psalm|Schedule|Star Wars Episode"
)
REGNAL_NAMES = (
    r"King|Queen|Pope|Emperor|Tsar|Henry|Edward|George|Elizabeth|Charles|William|Richard|James|"
    r"Mary|Louis|John|Paul|Benedict|Pius|Leo|Gregory|Peter|Frederick|Napoleon|Ramesses|Philip|"
    r"Alexander|Nicholas|Catherine|Victor|Ferdinand|Alfonso|Gustav|Innocent|Clement|Urban"
)
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}

URL_SCHEMES = ("http", "https", "ftp", "mailto", "www")
_URL_SAID = {
    ".": "dot",
    "/": "slash",
    ":": "colon",
    "@": "at",
    "-": "dash",
    "_": "underscore",
    "?": "question mark",
    "=": "equals",
    "&": "and",
    "#": "hash",
    "+": "plus",
    "~": "tilde",
    "%": "percent",
}
_VERSIONED = (
    r"[Vv]ersion|Python|Java|Node|iOS|Android|macOS|Windows|Ubuntu|Debian|Release|release|PHP|"
    r"Ruby|Rust|Kotlin|Swift|Perl|Go"
)


def _said(singular: str, plural: str | None = None) -> tuple[str, str]:
    return singular, plural or singular + "s"


# Units said after a number, singular and plural. Short written forms that are also words
# ("in", "bar", "cd") are left out: after a number they stay as written.
UNITS = {
    "km": _said("kilometer"),
    "m": _said("meter"),
    "cm": _said("centimeter"),
    "mm": _said("millimeter"),
    "mi": _said("mile"),
    "ft": _said("foot", "feet"),
    "yd": _said("yard"),
    "kg": _said("kilogram"),
    "g": _said("gram"),
    "mg": _said("milligram"),
    "lb": _said("pound"),
    "lbs": _said("pound"),
    "oz": _said("ounce"),
    "km/h": _said("kilometer per hour", "kilometers per hour"),
    "kph": _said("kilometer per hour", "kilometers per hour"),
    "mph": _said("mile per hour", "miles per hour"),
    "m/s": _said("meter per second", "meters per second"),
    "°C": _said("degree Celsius", "degrees Celsius"),
    "°F": _said("degree Fahrenheit", "degrees Fahrenheit"),
    "℃": _said("degree Celsius", "degrees Celsius"),
    "℉": _said("degree Fahrenheit", "degrees Fahrenheit"),
    "°": _said("degree"),
    "ml": _said("milliliter"),
    "mL": _said("milliliter"),
    "L": _said("liter"),
    "KB": _said("kilobyte"),
    "kB": _said("kilobyte"),
    "MB": _said("megabyte"),
    "GB": _said("gigabyte"),
    "TB": _said("terabyte"),
    "Hz": _said("hertz", "hertz"),
    "kHz": _said("kilohertz", "kilohertz"),
    "MHz": _said("megahertz", "megahertz"),
    "GHz": _said("gigahertz", "gigahertz"),
    "kW": _said("kilowatt"),
    "kWh": _said("kilowatt hour"),
    "h": _said("hour"),
    "hr": _said("hour"),
    "hrs": _said("hour"),
    "min": _said("minute"),
    "mins": _said("minute"),
    "s": _said("second"),
    "sec": _said("second"),
    "secs": _said("second"),
    "ms": _said("millisecond"),
    "%": _said("percent", "percent"),
}
_CLOCK = ("am", "pm", "AM", "PM", "a.m.", "p.m.")
# What may follow a number and be said differently: the units, the clock and "x" ("3 x 4").
UNIT = "|".join(re.escape(u) for u in sorted([*UNITS, *_CLOCK, "x"], key=len, reverse=True))
_UNIT_SAID = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_NUMBER = r"(\d{1,3}(?:,\d{3})+|\d{1,15})(?:\.(\d{1,15}))?"
_NOT_IN_A_NUMBER = r"(?<![\w.,:/$£€¥#+−-])"
# A range's dash: a hyphen, "-to-" ("9-to-5") or an en dash, spaced or not. A spaced hyphen
# may be a minus ("5 - 3"), so it is left to the grammar.
_TO = r"(?:\s?–\s?|-(?:to-)?)"
_HOUR = r"(1\d|2[0-3]|0?\d)"
_AM_PM = r"(am|pm|AM|PM|a\.m\.|p\.m\.)"
# Denominators fractions are written with. n/d is a fraction when it is proper (0 < n < d)
# with one of these; otherwise it is a pair of numbers: "24/7", "50/50", "9/11", "16/9".
_DENOMINATORS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 32, 64, 100, 1000)
_DENOMINATOR = "|".join(str(d) for d in sorted(_DENOMINATORS, reverse=True))
# After a range, pair or mixed number: no letter, no more of a number ("1-2-3", "1/2/3") and no
# symbol that would make it something else.
_NUMBER_END = r"(?![^\W_]|[.,:/–-]?\d|[%°/])"
# The unit of a measure: not one that is part of a longer word or of "km/h"-like units.
_UNIT_AFTER = rf"(?:\s?({_UNIT_SAID})(?![^\W_]|/[^\W\d_]))?"
FOOT = r"ft|foot|feet"  # "6 ft 2 in": "in" is inches after a measure in feet, nowhere else


def roman_value(written: str) -> int | None:
    """The value of a canonical roman numeral ("IV" -> 4), None for anything else ("IIII")."""
    total = 0
    for index, char in enumerate(written):
        value = _ROMAN[char]
        following = _ROMAN[written[index + 1]] if index + 1 < len(written) else 0
        total += -value if value < following else value
    return total if 0 < total < 4000 and _roman(total) == written else None


def _roman(value: int) -> str:
    written = ""
    for amount, letters in (
        (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
        (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
    ):  # fmt: skip
        count, value = divmod(value, amount)
        written += letters * count
    return written


def _integer(written: str) -> str:
    """A plain integer: "007" digit by digit, too many digits digit by digit, else a number."""
    bare = written.replace(",", "")
    if (len(bare) > 1 and bare.startswith("0")) or int(bare) > MAX_CARDINAL:
        return digits(bare)
    return number(written)


def _fraction_digits(written: str) -> str:
    """Digits after a decimal point, zero as "oh", as the grammar says them."""
    return " ".join("oh" if d == "0" else digits(d) for d in written)


def _decimal(whole: str, fraction: str | None) -> str:
    said = _integer(whole) if len(whole) != 4 or "," in whole else cardinal(int(whole))
    return f"{said} point {_fraction_digits(fraction)}" if fraction else said


def _is_fraction(numerator: str, denominator: str) -> bool:
    """Whether ``numerator/denominator`` is read as a fraction: proper, and with a denominator
    fractions are written with; "24/7", "50/50" and "9/11" are not."""
    low, high = int(numerator), int(denominator)
    leading_zero = numerator.startswith("0") or denominator.startswith("0")
    return 0 < low < high and high in _DENOMINATORS and not leading_zero


def _pair(m: re.Match[str]) -> str | None:
    """Two numbers ("24/7" is "twenty four seven"); a fraction is left to the grammar."""
    if _is_fraction(m.group(1), m.group(2)):
        return None
    return f"{_integer(m.group(1))} {_integer(m.group(2))}"


def _mixed(m: re.Match[str]) -> str:
    """A mixed number with "and": "3 1/2 cups" is "three and a half cups", "2 1/4 kg" "two and
    a quarter kilograms"."""
    whole, numerator, denominator, unit = m.groups()
    if not _is_fraction(numerator, denominator):  # "3 5/4": three numbers
        return " ".join(_integer(n) for n in (whole, numerator, denominator))
    said = f"{_integer(whole)} and {fraction(int(numerator), int(denominator))}"
    return f"{said} {UNITS[unit][1]}" if unit else said


def _feet_and_inches(m: re.Match[str]) -> str:
    """Feet then inches: "6 ft 2 in" is "six feet two inches"."""
    feet, inches, tenths = m.groups()
    said = f"{cardinal(int(feet))} {'foot' if feet == '1' else 'feet'} {_decimal(inches, tenths)}"
    return f"{said} {'inch' if inches == '1' and not tenths else 'inches'}"


def _unit(whole: str, decimals: str | None, unit: str) -> str:
    """A unit as said after the number: singular after a bare 1, else plural."""
    one, many = UNITS[unit]
    return one if whole == "1" and not decimals else many


def _measure(m: re.Match[str]) -> str:
    whole, decimals, unit = m.group(1), m.group(2), m.group(3)
    return f"{_decimal(whole, decimals)} {_unit(whole, decimals, unit)}"


def _ends_sentence(m: re.Match[str]) -> bool:
    """Whether the full stop a match swallowed ("etc.", "p.m.") also ended the sentence."""
    return re.match(r"\s*(?:$|[A-Z])", m.string[m.end() :]) is not None


def _clock_words(
    hour: str, minute: str | None, clock: str | None, o_clock: bool = True
) -> str | None:
    """A time of day ("ten thirty PM", "nine o'clock"); None for those the grammar knows
    better (hour 0, or past 12 with am/pm)."""
    if int(hour) == 0 or (clock and int(hour) > 12):
        return None
    said = cardinal(int(hour))
    if minute and minute != "00":
        said += f" oh {digits(minute[1])}" if minute[0] == "0" else f" {cardinal(int(minute))}"
    elif o_clock and not clock:
        said += " o'clock"
    return f"{said} {clock.replace('.', '').upper()}" if clock else said


def _clock_end(m: re.Match[str], clock: str | None) -> str:
    """The full stop of a final "p.m." when it also ended the sentence."""
    return "." if clock and clock.endswith(".") and _ends_sentence(m) else ""


def _clock(m: re.Match[str], hour: str, minute: str | None, clock: str | None) -> str | None:
    said = _clock_words(hour, minute, clock)
    return None if said is None else said + _clock_end(m, clock)


def _time_range(m: re.Match[str]) -> str | None:
    """A range of times with am or pm ("3-4pm", "9am-5pm"): each end as a time, "to" between,
    and no "o'clock", since "three to four PM" is what is said."""
    first = _clock_words(m.group(1), m.group(2), m.group(3), o_clock=False)
    last = _clock_words(m.group(4), m.group(5), m.group(6), o_clock=False)
    if first is None or last is None:
        return None
    return f"{first} to {last}{_clock_end(m, m.group(6))}"


def _clock_range(m: re.Match[str]) -> str | None:
    """A range of clock times ("9:30-10:30"): both times, "to" between."""
    first = _clock_words(m.group(1), m.group(2), None)
    last = _clock_words(m.group(3), m.group(4), None)
    return None if first is None or last is None else f"{first} to {last}"


def _range(m: re.Match[str]) -> str:
    """A range ("20-25", "5-10 km", "3%-5%"): both numbers, "to" between, a unit after the
    first said there and one after the second said in the plural; a word after the range
    ("minutes") stays as written."""
    low, low_decimals, low_unit, high, high_decimals, high_unit = m.groups()
    said = _decimal(low, low_decimals)
    if low_unit:
        said += f" {_unit(low, low_decimals, low_unit)}"
    said += f" to {_decimal(high, high_decimals)}"
    if high_unit:
        said += f" {_unit(high, high_decimals, high_unit) if low_unit else UNITS[high_unit][1]}"
    return said


def _linked(m: re.Match[str]) -> str:
    """Two numbers joined by a word ("2-for-1", "1-in-10"): the word stays between them."""
    return f"{_integer(m.group(1))} {m.group(2)} {_integer(m.group(3))}"


def _parts(written: str, joiner: str) -> str:
    return f" {joiner} ".join(_integer(part) for part in written.split("."))


def _money(m: re.Match[str]) -> str | None:
    return _amount(m.group(1), m.group(2), m.group(3), m.group(4))


def _money_range(m: re.Match[str]) -> str | None:
    """A range of money ("$20-30", "$5-$10 million"): the currency said once, after both
    amounts; with cents, each amount in full ("one dollar fifty to two dollars")."""
    symbol, low, low_cents, high, high_cents, scale = m.groups()
    many = _CURRENCIES[symbol][1]
    if scale:
        return f"{_scaled(low, low_cents)} to {_amount(symbol, high, high_cents, scale)}"
    if low_cents or high_cents:
        first = _amount(symbol, low, low_cents, None)
        last = _amount(symbol, high, high_cents, None)
        return None if first is None or last is None else f"{first} to {last}"
    return f"{_integer(low)} to {_integer(high)} {many}"


def _scaled(whole: str, decimals: str | None) -> str:
    """The number before a scale word: "2.5" (billion) is "two point five"."""
    return _integer(whole) + (f" point {digits(decimals)}" if decimals else "")


def _amount(symbol: str, whole: str, cents: str | None, scale: str | None) -> str | None:
    """An amount of money ("twelve pounds fifty", "five million dollars"); None for cents of a
    currency without them."""
    one, many, hundredth, hundredths = _CURRENCIES[symbol]
    if scale:
        return f"{_scaled(whole, cents)} {_SCALES.get(scale, scale)} {many}"
    if cents and not hundredth:
        return None  # yen have no cents: the grammar reads the decimal
    value = int(whole.replace(",", ""))
    cent_value = int(cents.ljust(2, "0")) if cents else 0
    said = f"{_integer(whole)} {one if value == 1 else many}" if value or not cent_value else ""
    if cent_value:
        if said:
            return f"{said} {cardinal(cent_value)}"
        return f"{cardinal(cent_value)} {hundredth if cent_value == 1 else hundredths}"
    return said


def _decade(m: re.Match[str]) -> str:
    century, decade, tens = m.group(1), m.group(2), m.group(3)
    if century is None:
        return plural(cardinal(int(tens) * 10))
    return plural(year(int(f"{century}{decade}0")))


def _month_first(m: re.Match[str]) -> str:
    """A month then a day ("March 3, 2025"), or days ("March 3-5" is "March third to
    fifth")."""
    month, day, last_day, comma, written_year = m.groups()
    said = f"{_MONTH_ABBREVIATIONS.get(month, month)} {ordinal(int(day))}"
    if last_day:
        said += f" to {ordinal(int(last_day))}"
    return f"{said}{comma or ''} {year(int(written_year))}" if written_year else said


def _day_first(m: re.Match[str]) -> str:
    month = _MONTH_ABBREVIATIONS.get(m.group(3), m.group(3))
    said = f"the {ordinal(int(m.group(1)))} of {month}"
    return f"{said} {year(int(m.group(4)))}" if m.group(4) else said


def _numeric_date(m: re.Match[str]) -> str | None:
    """3/4/2025 is the fourth of march (month first, as the grammar reads it) unless the first
    number cannot be a month; 2024-01-15 is year, month, day. Month names in lower case, as the
    grammar writes them."""
    if m.group(1):
        first, second, written_year = int(m.group(1)), int(m.group(2)), m.group(3)
        month, day = (first, second) if first <= 12 else (second, first)
    else:
        written_year, month, day = m.group(4), int(m.group(5)), int(m.group(6))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"the {ordinal(day)} of {_MONTHS[month - 1].lower()} {year(int(written_year))}"


def _roman_after(m: re.Match[str]) -> str | None:
    value = roman_value(m.group(2))
    return None if value is None else f"{m.group(1)} {cardinal(value)}"


def _regnal(m: re.Match[str]) -> str | None:
    value = roman_value(m.group(2))
    return None if value is None else f"{m.group(1)} the {ordinal(value)}"


def _grouped(m: re.Match[str]) -> str:
    """Phone and card numbers: each group digit by digit, groups apart, "+" as "plus"."""
    groups = re.findall(r"\+|\d+", m.group(0))
    return ", ".join("plus" if g == "+" else digits(g) for g in groups).replace("plus,", "plus")


def _url(m: re.Match[str]) -> str:
    """Words as written, digits one by one, marks by name; the scheme is not said."""
    address = re.sub(r"^(?:https?|ftp)://|^mailto:", "", m.group(0))
    said = []
    for piece in re.findall(r"[^\W\d_]+|\d+|\S", address):
        if piece == "www":
            said.append("w w w")
        elif piece.isdigit():
            said.append(digits(piece))
        else:
            said.append(_URL_SAID.get(piece, piece))
    return " ".join(said)


def _overlong(m: re.Match[str]) -> str:
    """No written form is this long: letters kept, digits one by one, marks dropped."""
    pieces = re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+", m.group(0))
    return " ".join(digits(p) if p[0].isdigit() else p for p in pieces)


def _abbreviation(m: re.Match[str]) -> str:
    written = m.group(1)
    said = ABBREVIATIONS[written]
    return said + ("." if written not in _TITLES and _ends_sentence(m) else "")


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    say: Callable[[re.Match[str]], str | None]


_END = r"(?![^\W_])"  # not followed by a letter or digit
_START = r"(?<![^\W_])"

RULES = (
    Rule(
        "url",
        r"(?:https?://|ftp://|mailto:|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]'’]"
        r"|[\w.+-]*\w@\w[\w-]*(?:\.[\w-]+)*\.[A-Za-z]{2,}",
        _url,
    ),
    Rule("overlong token", rf"(?<!\S)\S{{{LONGEST_TOKEN + 1},}}", _overlong),
    Rule("digit run", rf"\d{{{LONGEST_NUMBER + 1},}}", lambda m: digits(m.group(0))),
    Rule("card", r"(?<![\d-])\d{4}(?:[ -]\d{4}){2,3}(?![\d-])", _grouped),
    Rule(
        "phone",
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w-])"
        r"|(?<![\w+])\+\d{1,3}[ .-]\d{2,4}[ .-]\d{3,4}(?:[ .-]\d{2,4})?(?![\w-])"
        r"|(?<![\w-])\d{3}-\d{3}-\d{4}(?![\w-])"
        r"|(?<![\w.,/-])[2-9]\d{2}-\d{4}(?![\w.,/-]?\d)",  # a local number: 555-1234
        _grouped,
    ),
    Rule("extension", r"\b[Ee]xt\.?\s?(\d{1,6})\b", lambda m: f"extension {digits(m.group(1))}"),
    Rule(
        "money range",
        r"([$£€¥])(\d{1,3}(?:,\d{3})+|\d{1,15})(?:\.(\d{1,2}))?"
        + _TO
        + r"[$£€¥]?(\d{1,3}(?:,\d{3})+|\d{1,15})(?:\.(\d{1,2}))?"
        rf"(?:\s?({MONEY_SCALE})\b)?(?![.,]?\d)" + _END,
        _money_range,
    ),
    Rule(
        "money",
        r"([$£€¥])(\d{1,3}(?:,\d{3})+|\d{1,15})(?:\.(\d{1,2}))?"
        rf"(?:\s?({MONEY_SCALE})\b)?(?![.,]?\d)" + _END,
        _money,
    ),
    Rule(
        "pence",
        r"(?<![\w.,])(\d{1,3})p" + _END,
        lambda m: f"{cardinal(int(m.group(1)))} {'penny' if m.group(1) == '1' else 'pence'}",
    ),
    Rule(
        "decade",
        r"(?<![\w'’.,])(?:(1\d|20)(\d)0|['’]?([1-9])0)['’]?s" + _END,
        _decade,
    ),
    Rule(
        "year range",
        r"(?<![\w.,/-])(1\d{3}|20\d{2})[-–](1\d{3}|20\d{2}|\d{2})(?![^\W_]|[.,/–-]\d)",
        lambda m: f"{year(int(m.group(1)))} to {year(int(m.group(2)))}",
    ),
    Rule(
        "ordinal",
        r"(?<![\w.,])(\d{1,9})(?:st|nd|rd|th)" + _END,
        lambda m: ordinal(int(m.group(1))),
    ),
    Rule(
        "dimensions",
        r"(?<![\w.,])(\d{1,6})\s?[x×]\s?(\d{1,6})" + _END,
        lambda m: f"{cardinal(int(m.group(1)))} by {cardinal(int(m.group(2)))}",
    ),
    Rule(
        "multiplier",
        r"(?<![\w.,])(\d{1,6}(?:\.\d{1,3})?)\s?[x×]" + _END,
        lambda m: _parts(m.group(1), "point") + " times",
    ),
    Rule(
        "month day",
        rf"\b({MONTH})\.?\s({_DAY})(?:st|nd|rd|th)?(?:{_TO}({_DAY})(?:st|nd|rd|th)?)?"
        rf"(?:(,?)\s(\d{{4}}))?(?![^\W_]|[.,:/]\d)",
        _month_first,
    ),
    Rule(
        "day month",
        rf"(?<![\w.,/])({_DAY})(?:st|nd|rd|th)?\s(of\s)?({MONTH})\.?(?:,?\s(\d{{4}}))?" + _END,
        _day_first,
    ),
    Rule(
        "version",
        r"\b(?:v|V)(\d{1,4}(?:\.\d{1,4}){0,3})(?![^\W_]|\.\d)",
        lambda m: "version " + _parts(m.group(1), "point"),
    ),
    Rule(
        "named version",
        rf"\b({_VERSIONED})\s(\d{{1,4}}(?:\.\d{{1,4}}){{1,3}})(?![^\W_]|\.\d)",
        lambda m: f"{m.group(1)} {_parts(m.group(2), 'point')}",
    ),
    Rule(
        "dotted number",
        r"(?<![\w.])\d{1,4}(?:\.\d{1,4}){2,3}(?![^\W_]|\.\d)",
        lambda m: _parts(m.group(0), "point" if m.group(0).count(".") == 2 else "dot"),
    ),
    Rule(
        "numeric date",
        r"(?<![\w.,/-])(?:(\d{1,2})/(\d{1,2})/(\d{4})|(\d{4})-(\d{2})-(\d{2}))"
        r"(?![^\W_]|[/-]\d|[.,]\d)",
        _numeric_date,
    ),
    Rule(
        "time range",
        rf"(?<![\w.,:]){_HOUR}(?::([0-5]\d))?(?:\s?{_AM_PM})?(?:\s?[-–]\s?|-to-)"
        rf"{_HOUR}(?::([0-5]\d))?\s?{_AM_PM}(?![^\W_])",
        _time_range,
    ),
    Rule(
        "clock range",
        rf"(?<![\w.,:]){_HOUR}:([0-5]\d)(?:\s?[-–]\s?|-to-){_HOUR}:([0-5]\d)"
        r"(?![^\W_]|[:.,/-]\d)",
        _clock_range,
    ),
    Rule(
        "range",
        _NOT_IN_A_NUMBER + _NUMBER + _UNIT_AFTER + _TO + _NUMBER + _UNIT_AFTER + _NUMBER_END,
        _range,
    ),
    Rule(
        "linked numbers",
        _NOT_IN_A_NUMBER + r"(\d{1,15})-(for|in|on|by|of|or|and)-(\d{1,15})" + _NUMBER_END,
        _linked,
    ),
    Rule(
        "mixed number",
        _NOT_IN_A_NUMBER
        + rf"(\d{{1,6}})\s(\d{{1,4}})/({_DENOMINATOR})"
        + _UNIT_AFTER
        + _NUMBER_END,
        _mixed,
    ),
    Rule("number pair", _NOT_IN_A_NUMBER + r"(\d{1,4})/(\d{1,4})" + _NUMBER_END, _pair),
    Rule(
        "clock time",
        r"(?<![\w.,:])(1\d|2[0-3]|0?\d)(?::([0-5]\d))?\s?(am|pm|AM|PM|a\.m\.|p\.m\.)(?![^\W_])",
        lambda m: _clock(m, m.group(1), m.group(2), m.group(3)),
    ),
    Rule(
        "time",
        r"(?<![\w.,:])(1\d|2[0-3]|0?\d):([0-5]\d)(?![^\W_]|[:.,/-]\d)",
        lambda m: _clock(m, m.group(1), m.group(2), None),
    ),
    Rule(
        "feet and inches",
        _NOT_IN_A_NUMBER + rf"(\d{{1,2}})\s?(?:{FOOT})\s(\d{{1,2}})(?:\.(\d))?\s?in" + _END,
        _feet_and_inches,
    ),
    Rule(
        "feet and inches in primes",
        _NOT_IN_A_NUMBER + r"(\d{1,2})['′]\s?(\d{1,2})(?:\.(\d))?(?:[\"″]|'')" + _END,
        _feet_and_inches,
    ),
    Rule(
        "measure",
        _NOT_IN_A_NUMBER + _NUMBER + rf"\s?({_UNIT_SAID})(?![^\W_]|/[^\W\d_])",
        _measure,
    ),
    Rule("roman after a word", rf"\b({ROMAN_CONTEXT})\s([IVXLCDM]+)\b", _roman_after),
    Rule(
        "regnal roman",
        rf"\b({REGNAL_NAMES})\s([IVXLCDM]{{2,}}|I(?=[.,;:!?)]|\s*$))\b",
        _regnal,
    ),
    Rule(
        "abbreviation",
        r"(?<![\w.])(" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")(?=\s|$|[,;:)])",
        _abbreviation,
    ),
    Rule(
        "decimal",
        _NOT_IN_A_NUMBER + r"(\d{1,3}(?:,\d{3})+|\d{1,15})\.(\d{1,15})"
        rf"(?![\w%°/:']|[.,−-]\d|\s?(?:{UNIT})(?![^\W_]))",
        lambda m: _decimal(m.group(1), m.group(2)),
    ),
    Rule(
        "integer",
        r"(?<![\w.,:/$£€¥#+−-])(\d{1,3}(?:,\d{3})+|\d{1,15})"
        rf"(?![\w%°/:']|[.,−-]\d|\s?(?:{UNIT})(?![^\W_]))",
        lambda m: _integer(m.group(1)),
    ),
    Rule(
        "number list",
        r"(?<![\w.,:/$£€¥#+−-])\d{1,15}(?:,\d{1,15})+(?![^\W_]|[.,]\d)",
        lambda m: ", ".join(_integer(n) for n in m.group(0).split(",")),
    ),
)
_COMBINED = re.compile("|".join(f"(?P<r{i}>{rule.pattern})" for i, rule in enumerate(RULES)))
_COMPILED = [re.compile(rule.pattern) for rule in RULES]


def apply_rules(text: str) -> Iterator[tuple[str, bool]]:
    """``text`` in order as ``(piece, said)``: said pieces are final words, the others are as
    written and left to the grammar."""
    position = 0
    for found in _COMBINED.finditer(text):
        index = int(found.lastgroup[1:])
        own = _COMPILED[index].match(text, found.start())
        said = RULES[index].say(own) if own and own.end() == found.end() else None
        if said is None:
            continue
        if found.start() > position:
            yield text[position : found.start()], False
        yield said, True
        position = found.end()
    if position < len(text):
        yield text[position:], False
