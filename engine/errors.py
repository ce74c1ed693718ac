"""Who is at fault: the exception types that separate a caller's mistake from a bug.

The service answers a ``RequestError`` with 422 and the CLI exits 2 on any ``UserError``; every
other exception is a bug, so the service answers 500 (with a request id, traceback in the log) and
the CLI keeps the traceback. Subclassing ``ValueError`` keeps older ``except ValueError`` callers
working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the caller can fix; the message says what."""


class RequestError(UserError):
    """One request's input cannot be served (too long, empty, out of range)."""


class ConfigError(UserError):
    """A profile, sweep configuration, environment override or command line is invalid."""


class GenerationCancelled(Exception):  # noqa: N818 - a signal, not a failure
    """The caller stopped the request while it was generating."""
