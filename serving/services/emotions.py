"""The emotion, tone and effect markers OpenAudio S1 understands (from the upstream README).

Markers are written in parentheses inside the text, e.g. ``(excited) We won!``; emotions go at
the start of a sentence, tones and effects anywhere.
"""

from __future__ import annotations

_LISTS = {
    "emotion": "angry, sad, excited, surprised, satisfied, delighted, scared, worried, upset, "
    "nervous, frustrated, depressed, empathetic, embarrassed, disgusted, moved, proud, relaxed, "
    "grateful, confident, interested, curious, confused, joyful",
    "advanced_emotion": "disdainful, unhappy, anxious, hysterical, indifferent, impatient, guilty, "
    "scornful, panicked, furious, reluctant, keen, disapproving, negative, denying, astonished, "
    "serious, sarcastic, conciliative, comforting, sincere, sneering, hesitating, yielding, "
    "painful, awkward, amused",
    "tone": "in a hurry tone, shouting, screaming, whispering, soft tone",
    "effect": "laughing, chuckling, sobbing, crying loudly, sighing, panting, groaning, "
    "crowd laughing, background laughter, audience laughing",
}

MARKERS: dict[str, tuple[str, ...]] = {
    category: tuple(name.strip() for name in names.split(",")) for category, names in _LISTS.items()
}
