"""Bounded LRU caches with hit/miss counters: reference codes, semantic tokens, prompt KV state."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

import torch

log = logging.getLogger(__name__)
V = TypeVar("V")


class LRUCache(Generic[V]):
    """Thread-safe LRU of at most ``limit`` entries (0 disables it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: str, value: V) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {
            "entries": len(self._items),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
        }


class ReferenceCodeCache(LRUCache[torch.Tensor]):
    """Reference VQ codes keyed by the SHA-256 of the audio bytes, optionally mirrored on disk."""

    def __init__(self, limit: int, directory: Path | None = None) -> None:
        super().__init__(limit)
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key_for(audio_bytes: bytes) -> str:
        return hashlib.sha256(audio_bytes).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        value = super().get(key)
        if (
            value is None
            and self.directory is not None
            and (self.directory / f"{key}.pt").is_file()
        ):
            value = torch.load(self.directory / f"{key}.pt", weights_only=True)
            with self._lock:
                self.misses -= 1
                self.hits += 1
            super().put(key, value)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        super().put(key, value)
        if self.directory is not None:
            tmp = self.directory / f"{key}.pt.tmp"
            torch.save(value, tmp)
            tmp.replace(self.directory / f"{key}.pt")


class PrefixKVCache(LRUCache[list[tuple[torch.Tensor, torch.Tensor]]]):
    """Slow-transformer K/V of a voice prompt prefix (reference text + codes), bounded in bytes.

    A saved voice's prompt prefix is the same on every request, so its K/V state is computed once
    and copied back into the cache per request: prefill then runs over the new text only.
    """

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(limit=1 if limit_bytes > 0 else 0)
        self.limit_bytes = limit_bytes
        self.bytes = 0

    @staticmethod
    def key_for(prefix: torch.Tensor) -> str:
        return hashlib.sha256(prefix.cpu().numpy().tobytes()).hexdigest()

    @staticmethod
    def size_of(state: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return sum(t.numel() * t.element_size() for pair in state for t in pair)

    def put(self, key: str, value: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        size = self.size_of(value)
        if size > self.limit_bytes:
            return
        with self._lock:
            if key in self._items:
                self.bytes -= self.size_of(self._items.pop(key))
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.limit_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= self.size_of(old)

    def clear(self) -> None:
        super().clear()
        self.bytes = 0

    def stats(self) -> dict[str, float]:
        return super().stats() | {"bytes": self.bytes, "limit_bytes": self.limit_bytes}
