"""Cleaning: strip, drop empty or out-of-range texts, drop exact duplicates; every drop counted by reason."""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable

from .params import CleanParams


class Dropped(Exception):
    """A record is dropped for ``reason`` (a cleaning decision, not a data error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Cleaner:
    """Applies ``CleanParams`` and counts what it drops (``dropped/<reason>`` in the summary)."""

    def __init__(self, params: CleanParams):
        self.params = params
        self.dropped: Counter[str] = Counter()
        self._seen: dict[str, set[Hashable]] = {}

    def text(self, value: str, field: str, required: bool = True) -> str:
        """The cleaned text of ``field``; raises Dropped when a required text is empty or out of range."""
        if self.params.strip:
            value = value.strip()
        if not required:
            return value
        if not value.strip():
            raise Dropped(f"empty_{field}")
        low = self.params.min_chars.get(field)
        if low is not None and len(value) < low:
            raise Dropped(f"{field}_too_short")
        high = self.params.max_chars.get(field)
        if high is not None and len(value) > high:
            raise Dropped(f"{field}_too_long")
        return value

    def optional(self, value: str) -> str:
        return value.strip() if self.params.strip else value

    def is_duplicate(self, key: Hashable, scope: str = "") -> bool:
        """True when ``key`` was seen before in ``scope`` and dedupe is on (the caller drops the record)."""
        if not self.params.dedupe:
            return False
        seen = self._seen.setdefault(scope, set())
        if key in seen:
            return True
        seen.add(key)
        return False

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def summary(self) -> dict[str, Any]:
        return {f"dropped/{reason}": n for reason, n in sorted(self.dropped.items())}
