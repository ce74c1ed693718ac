"""A thread that watches a running server beside a test, as a ``with`` block."""

from __future__ import annotations

import threading
from typing import Self


class Watcher(threading.Thread):
    """Runs ``run`` (which polls until ``done`` is set) for the length of the ``with`` block."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()
