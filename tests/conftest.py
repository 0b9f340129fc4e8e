"""Shared fixtures: workers run in-process on 127.0.0.1 with an OS-chosen port, on the session
loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

import pytest

from blocking_provider import PROVIDER, BlockingTestClient
from fake_upstream import FakeUpstream, fake_upstream
from modelwire.app.config import Config, embedded_default
from modelwire.app.server import Worker, build_worker
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.providers import registry
from modelwire.quota.store import MemoryStore
from modelwire.worker.admission import Admission


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_worker(config: Config) -> AsyncIterator[Worker]:
    """A started worker on 127.0.0.1 and a free port; drained on exit."""
    config = replace(config, server=replace(config.server, host="127.0.0.1", port=0))
    worker = await build_worker(config)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.drain()


async def admission_reaches(gate: Admission, in_flight: int, queued: int) -> None:
    """Returns once the model's admission counters read so; they change on the loop, and a slot
    goes back only after its thread has stopped."""
    changed = asyncio.Event()
    previous = gate.observer

    def observe(model: str, running: int, waiting: int) -> None:
        if previous is not None:
            previous(model, running, waiting)
        changed.set()

    gate.observer = observe
    try:
        while (gate.in_flight, gate.queued) != (in_flight, queued):
            changed.clear()
            await asyncio.wait_for(changed.wait(), 30)
    finally:
        gate.observer = previous


def hold_quota_clock(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holds the worker's in-process quota counters' clock still for the test, so a per-minute
    window cannot start again between two calls whose counts the test compares."""
    store = worker.limiter._store
    assert isinstance(store, MemoryStore)
    now = time.time()
    monkeypatch.setattr(store, "_clock", lambda: now)


WorkerFactory = Callable[[Config], AbstractAsyncContextManager[Worker]]


@pytest.fixture
def worker_factory() -> WorkerFactory:
    return running_worker


@pytest.fixture(scope="session")
async def embedded_worker() -> AsyncIterator[Worker]:
    """The embedded default (gemma-3-270m through llamacpp), shared by the tests that only read."""
    config = embedded_default()
    config = replace(
        config,
        server=ServerConfig(grace_period_s=1.0),
        models=(replace(config.models[0], max_concurrency=2),),
    )
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
def blocking_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes `provider = "blocking-test"` (tests/blocking_provider.py) configurable in this test."""
    monkeypatch.setitem(registry.PROVIDERS, PROVIDER, BlockingTestClient)
    BlockingTestClient.instances.clear()


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeUpstream]:
    """The scripted OpenAI/Anthropic upstream (fake_upstream.py), one per test module."""
    async with fake_upstream() as upstream:
        yield upstream
