"""Keeps a call's request text out of log lines and error messages.

Upstreams echo what they were sent (a FastAPI 422 carries the offending `input`, a 400 may quote a
message), and an unexpected exception may carry a prompt in its text. The service remembers the
request's texts for the call (a context variable: each gRPC call runs in a task of its own) and
every place that logs or returns such foreign text passes it through `scrub` first.

No library does this: it is a longest-common-substring search, kept cheap for the error path. A
copy of 2·CHUNK−1 or more characters of a request text always contains one whole CHUNK-aligned
piece of it (CHUNK = 12: any copy of 23 characters). The message (cut to MAX_SCRUBBED) has its
windows indexed once; each distinct piece of each request text is looked up once (a 1 MiB request
is about 87,000 lookups); a hit is taken only while its window holds an unmasked character and is
widened over the common run only across unmasked ones, so each character is masked once and
repeated text costs no more than random text. Texts shorter than that are masked where they
occur whole.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from contextvars import ContextVar

CHUNK = 12
# Texts shorter than this are too common to mask ("Hi" would blank every "Hi" in a message).
MIN_MASKED = 6
# A message longer than this is cut before it is scrubbed, so the scrub's cost has a bound.
MAX_SCRUBBED = 16 * 1024
MASK = "[request text]"

_texts: ContextVar[tuple[str, ...]] = ContextVar("modelwire_request_texts", default=())


def remember_request_text(texts: Iterable[str]) -> None:
    """The texts of the current call (every string its caller gave: messages, tools, schemas,
    grammars, image URLs, stop strings, a prompt, embedding inputs), kept as they are: every call
    pays only for this tuple, and the error path alone sorts them out."""
    _texts.set(tuple(texts))


def _worth_masking(text: str) -> bool:
    """Long enough to be the caller's, and with a letter or digit (whitespace and punctuation
    would only mask indentation)."""
    return len(text) >= MIN_MASKED and any(c.isalnum() for c in text)


def _forms(text: str) -> list[str]:
    """`text` as sent and as JSON encoders quote it: Python's (both ways), Go's (`<`, `>`, `&` as
    `\\u003c`…) and PHP's (`/` as `\\/`); and as HTML error pages escape it: Python's and
    Django's (`&amp;`, `&lt;`, `&quot;`, `&#x27;`), Go's and Jinja's (`&#34;`, `&#39;`),
    text-only escaping that leaves quotes as they are, and a page quoting the JSON body."""
    plain = json.dumps(text, ensure_ascii=False)[1:-1]
    go = plain.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    escaped = html.escape(text)
    numeric = escaped.replace("&quot;", "&#34;").replace("&#x27;", "&#39;")
    # As sent first, then the escaped forms: each only adds what the earlier ones left unmasked.
    forms = (
        text,
        plain,
        json.dumps(text)[1:-1],
        go,
        plain.replace("/", "\\/"),
        escaped,
        numeric,
        html.escape(text, quote=False),
        html.escape(plain),
    )
    return list(dict.fromkeys(forms))


def scrub(text: str) -> str:
    """`text` (cut to MAX_SCRUBBED) with every run it shares with the current call's request texts
    masked. Linear in the message and in the request: windows are indexed once, each distinct
    piece of a request text is looked up once, and a run is widened only over what is not masked."""
    texts = [candidate for candidate in _texts.get() if _worth_masking(candidate)]
    if not texts or len(text) < MIN_MASKED:
        return text
    if len(text) > MAX_SCRUBBED:
        text = text[: MAX_SCRUBBED - 1] + "…"
    windows: dict[str, list[int]] = {}
    for index in range(len(text) - CHUNK + 1):
        windows.setdefault(text[index : index + CHUNK], []).append(index)
    masked = bytearray(len(text))
    for candidate in texts:
        for form in _forms(candidate):
            if len(form) < 2 * CHUNK - 1:
                _mark_whole(text, form, masked)
            else:
                _mark_runs(text, form, windows, masked)
    return masked_text(text, masked, MASK)


def masked_text(text: str, masked: bytearray, mark: str) -> str:
    """`text` with each run of characters flagged in `masked` replaced by one `mark`."""
    if not any(masked):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not masked[index]:
            out.append(char)
        elif index == 0 or not masked[index - 1]:
            out.append(mark)
    return "".join(out)


def _mark_whole(text: str, secret: str, masked: bytearray) -> None:
    start = text.find(secret)
    while start >= 0:
        masked[start : start + len(secret)] = b"\x01" * len(secret)
        start = text.find(secret, start + 1)


def _mark_runs(text: str, secret: str, windows: dict[str, list[int]], masked: bytearray) -> None:
    seen: set[str] = set()
    for offset in range(0, len(secret) - CHUNK + 1, CHUNK):
        piece = secret[offset : offset + CHUNK]
        if piece in seen:
            continue
        seen.add(piece)
        for where in windows.get(piece, ()):
            if masked.find(0, where, where + CHUNK) < 0:
                continue  # every character of this window is masked already
            left, source = where, offset
            while (
                left > 0
                and source > 0
                and not masked[left - 1]
                and text[left - 1] == secret[source - 1]
            ):
                left, source = left - 1, source - 1
            right, source = where + CHUNK, offset + CHUNK
            while (
                right < len(text)
                and source < len(secret)
                and not masked[right]
                and text[right] == secret[source]
            ):
                right, source = right + 1, source + 1
            masked[left:right] = b"\x01" * (right - left)
