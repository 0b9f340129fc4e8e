"""A provider whose every call a test scripts, for the attack tests (test_attack_coalesce.py,
test_attack_cuts.py): echo's metadata and counting; each call plays the next script queued in
`Scripted.plays`, or gives echo's answer when none is queued. How each scripted stream ended is
counted in `Scripted.ends` ("finished", or the exception's name), and `Scripted.ended` is set."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import ClassVar

import pytest

from modelwire.core.types import ModelOutput, ModelRequest, merge_outputs
from modelwire.providers import registry
from modelwire.providers.echo import EchoClient

MODEL = "scripted"
PROVIDER = "scripted"

Play = Callable[[ModelRequest], AsyncIterator[ModelOutput]]


class Scripted(EchoClient):
    provider = PROVIDER
    plays: ClassVar[deque[Play]] = deque()
    ends: ClassVar[list[str]] = []
    ended: ClassVar[asyncio.Event | None] = None

    async def generate(self, request: ModelRequest) -> ModelOutput:
        if not Scripted.plays:
            return await super().generate(request)
        play = Scripted.plays.popleft()
        return merge_outputs([output async for output in play(request)])

    async def generate_stream(self, request: ModelRequest) -> AsyncGenerator[ModelOutput, None]:
        if not Scripted.plays:
            async for output in super().generate_stream(request):
                yield output
            return
        play = Scripted.plays.popleft()
        how = "finished"
        try:
            async with aclosing(play(request)) as outputs:  # type: ignore[type-var]
                async for output in outputs:
                    yield output
        except BaseException as error:
            how = type(error).__name__
            raise
        finally:
            Scripted.ends.append(how)
            if Scripted.ended is not None:
                Scripted.ended.set()


def install_scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers the provider for one test, with nothing queued or counted."""
    monkeypatch.setitem(registry.PROVIDERS, PROVIDER, Scripted)
    Scripted.plays.clear()
    Scripted.ends.clear()
    Scripted.ended = asyncio.Event()
