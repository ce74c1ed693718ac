"""Importing any part of the engine first silences the start-up noise we understand (see quiet)."""

from engine import quiet

quiet.install()
