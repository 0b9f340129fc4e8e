"""Cuts generated text at the first stop string without ever emitting a part of one."""

from __future__ import annotations


class StopStringFilter:
    """Feed deltas in, get safe deltas out: text that might begin a stop string is held back."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._longest = max((len(stop) for stop in stops), default=0)
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        self._pending += delta
        cut = min(
            (i for i in (self._pending.find(stop) for stop in self._stops) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._held_back_length()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_back_length(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of some stop
        string."""
        for length in range(min(self._longest - 1, len(self._pending)), 0, -1):
            tail = self._pending[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
