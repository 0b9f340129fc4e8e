"""Keeps a call's request text out of log lines and error messages.

Upstreams echo what they were sent (a FastAPI 422 carries the offending `input`, a 400 may quote a
message), and an unexpected exception may carry a prompt in its text. The service remembers the
request's texts for the call (a context variable: each gRPC call runs in a task of its own) and
every place that logs or returns such foreign text passes it through `scrub` first.

No library does this: it is a longest-common-substring search, kept cheap for the error path. A
copy of 2·CHUNK−1 or more characters of a request text always contains one whole CHUNK-aligned
piece of it (CHUNK = 12: any copy of 23 characters); each piece is looked up among the message's
windows (a dict: a 1 MiB request costs about 87,000 lookups, only when something is scrubbed), and a
hit is widened to the whole common run and masked. Texts shorter than that are masked where they
occur whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextvars import ContextVar

CHUNK = 12
# Texts shorter than this are too common to mask ("Hi" would blank every "Hi" in a message).
MIN_MASKED = 6
MASK = "[request text]"

_texts: ContextVar[tuple[str, ...]] = ContextVar("modelwire_request_texts", default=())


def remember_request_text(texts: Iterable[str]) -> None:
    """The texts of the current call (message contents, names, stop strings, a prompt)."""
    _texts.set(tuple(text for text in texts if len(text) >= MIN_MASKED))


def scrub(text: str) -> str:
    """`text` with every run it shares with the current call's request texts masked: as sent, and
    as JSON escapes them (a quoted body)."""
    texts = _texts.get()
    if not texts or len(text) < MIN_MASKED:
        return text
    masked = [False] * len(text)
    for candidate in texts:
        for form in {candidate, json.dumps(candidate, ensure_ascii=False)[1:-1], json.dumps(candidate)[1:-1]}:
            _mark(text, form, masked)
    if not any(masked):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not masked[index]:
            out.append(char)
        elif index == 0 or not masked[index - 1]:
            out.append(MASK)
    return "".join(out)


def _mark(text: str, secret: str, masked: list[bool]) -> None:
    if len(secret) < 2 * CHUNK - 1:
        start = text.find(secret)
        while start >= 0:
            masked[start : start + len(secret)] = [True] * len(secret)
            start = text.find(secret, start + 1)
        return
    windows: dict[str, list[int]] = {}
    for index in range(len(text) - CHUNK + 1):
        windows.setdefault(text[index : index + CHUNK], []).append(index)
    for offset in range(0, len(secret) - CHUNK + 1, CHUNK):
        for where in windows.get(secret[offset : offset + CHUNK], ()):
            left, source = where, offset
            while left > 0 and source > 0 and text[left - 1] == secret[source - 1]:
                left, source = left - 1, source - 1
            right, source = where + CHUNK, offset + CHUNK
            while right < len(text) and source < len(secret) and text[right] == secret[source]:
                right, source = right + 1, source + 1
            masked[left:right] = [True] * (right - left)
