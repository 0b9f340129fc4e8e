"""Whether the current call's request has reached its provider, for what the call is charged
(worker/metering.py): a call cut off while its HTTP provider was still connecting never reached
anyone and costs no tokens. The worker sets a hook for the call; an HTTP provider calls
`request_sent()` once the upstream has the request's headers (providers/http/client.py). A
context variable, like core/deadline.py, so providers need no parameter and no knowledge of quota.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

_on_sent: ContextVar[Callable[[], None] | None] = ContextVar("modelwire_on_sent", default=None)


def watch_dispatch(on_sent: Callable[[], None]) -> None:
    """`on_sent()` is called when the current call's request reaches its provider."""
    _on_sent.set(on_sent)


def request_sent() -> None:
    hook = _on_sent.get()
    if hook is not None:
        hook()
