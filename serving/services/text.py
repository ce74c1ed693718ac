"""A request's text checked as the service accepts it: not empty, not over ``MAX_TEXT_CHARS``,
and something to say (the engine's text front-end, ``engine.text``, decides what that is)."""

from __future__ import annotations

from engine.text.sentences import speakable
from serving.errors import InvalidInput


def check_text(text: str, max_chars: int) -> str:
    """The stripped text, or a 4xx for empty, unspeakable or overlong input."""
    text = (text or "").strip()
    if not text:
        raise InvalidInput("text is empty")
    if len(text) > max_chars:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {max_chars} (MAX_TEXT_CHARS)"
        )
    if not speakable(text):
        raise InvalidInput(
            "text has nothing to speak: only spaces, control characters or invisible "
            "(zero-width, format) characters"
        )
    return text
