"""Bookkeeping (metrics, the call log) that can never fail the call it describes.

A broken metric (a multiprocess directory removed under a running worker, a full disk) or a log
handler that raises must cost the bookkeeping, not the caller's answer: the failure is logged
once per kind of bookkeeping, and the call goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec

logger = logging.getLogger(__name__)

P = ParamSpec("P")

_reported: set[str] = set()


def never_fails(what: str, action: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
    """Runs `action(*args, **kwargs)`; an exception from it is logged (the first time for `what`)
    and dropped."""
    try:
        action(*args, **kwargs)
    except Exception:
        if what not in _reported:
            _reported.add(what)
            try:
                logger.exception("%s failed; calls go on without it (logged once)", what)
            except Exception:
                pass
