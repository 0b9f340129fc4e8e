"""The Redis test server (tests/redis_server.py) itself, through redis-py's asyncio client: plain,
with an ACL user or a requirepass password, over TLS, and killed then restarted with its append-only
file."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

import redis_server
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("redis-certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory)], check=True, capture_output=True
    )
    return directory


@asynccontextmanager
async def client(url: str, **options: object) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.from_url(url, **options)
    try:
        yield connection
    finally:
        await connection.aclose()


async def test_a_plain_server_sets_and_gets() -> None:
    with redis_server.redis_server() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        async with client(server.url) as plain:
            assert await plain.set("greeting", "hello")
            assert await plain.get("greeting") == b"hello"


async def test_an_acl_user_logs_in_and_a_wrong_password_or_none_is_refused() -> None:
    with redis_server.redis_server(username="modelwire", password="s3cret p@ss/:") as server:
        assert server.url == (f"redis://modelwire:s3cret%20p%40ss%2F%3A@127.0.0.1:{server.port}/0")
        async with client(server.url) as user:
            assert await user.set("k", "v")
            assert await user.acl_whoami() == "modelwire"
        wrong = server.url.replace("s3cret", "wrong")
        async with client(wrong) as refused:
            with pytest.raises(AuthenticationError):
                await refused.ping()
        # The default user is off: no password, no commands.
        async with client(f"redis://127.0.0.1:{server.port}/0") as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.get("k")


async def test_a_password_alone_is_the_default_users() -> None:
    with redis_server.redis_server(password="only-a-password") as server:
        assert server.url == f"redis://:only-a-password@127.0.0.1:{server.port}/0"
        async with client(server.url) as default:
            assert await default.acl_whoami() == "default"
        async with client(server.url.replace("only-a", "not-the")) as refused:
            with pytest.raises(AuthenticationError):
                await refused.ping()


async def test_tls_with_the_throwaway_ca(certs: Path) -> None:
    with redis_server.redis_server(certs=certs, username="u", password="p") as server:
        assert server.url == f"rediss://u:p@127.0.0.1:{server.port}/0"
        async with client(server.url, ssl_ca_certs=str(certs / "ca.pem")) as tls:
            assert await tls.set("secure", "yes")
            assert await tls.get("secure") == b"yes"
        # The port speaks TLS only.
        async with client(server.url.replace("rediss://", "redis://")) as plain:
            with pytest.raises(RedisConnectionError):
                await plain.ping()


async def test_a_killed_server_refuses_then_restarts_with_what_it_acknowledged() -> None:
    with redis_server.redis_server(appendonly=True) as server:
        port, url = server.port, server.url
        async with client(url) as before:
            assert await before.set("survives", "the kill")
        server.kill()
        async with client(url) as during:
            with pytest.raises(RedisConnectionError):
                await during.ping()
        server.restart()
        assert (server.port, server.url) == (port, url)
        async with client(url) as after:
            assert await after.get("survives") == b"the kill"


async def test_without_appendonly_a_restart_starts_empty() -> None:
    with redis_server.redis_server() as server:
        async with client(server.url) as before:
            assert await before.set("lost", "on kill")
        server.restart()
        async with client(server.url) as after:
            assert await after.get("lost") is None
            assert await after.config_get("save") == {"save": ""}


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    server = RedisServer(certs=tmp_path / "no-certs-here")
    try:
        with pytest.raises(
            RuntimeError,
            match=r"(?s)redis-server exited with 1: .*Failed to load certificate: .*no-certs-here",
        ):
            server.start()
    finally:
        server.close()


def test_a_missing_redis_server_fails_naming_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELWIRE_REDIS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"`make redis` installs .*apt-get install"):
        RedisServer()
    monkeypatch.setenv("MODELWIRE_REDIS", "/named/by/make/redis-server")
    assert redis_server.redis_binary() == "/named/by/make/redis-server"
