"""A real Redis server for tests, on 127.0.0.1 with a free port and a temporary directory: plain or
TLS, open or with a password (an ACL user, or `requirepass`), with or without an append-only file.
It can be killed and started again on the same port and directory, keeping what the append-only
file holds.

`make test` installs Debian's redis-server package when no redis-server is on PATH (mk/redis.mk)
and names it in MODELWIRE_REDIS; run by hand, the tests take that, else a `redis-server` on PATH.
Without either they fail, naming the step: a missing tool never skips a test."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from conftest import free_port


def redis_binary() -> str:
    found = os.environ.get("MODELWIRE_REDIS") or shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError(
            "redis-server not found: `make redis` installs Debian's redis-server package (`make "
            "test` does that first), or as root: apt-get install -y --no-install-recommends "
            "redis-server"
        )
    return found


def _command(*words: str) -> bytes:
    """One command in RESP, the protocol's array of bulk strings."""
    encoded = [word.encode() for word in words]
    return b"".join(
        [f"*{len(encoded)}\r\n".encode()]
        + [b"$%d\r\n%s\r\n" % (len(word), word) for word in encoded]
    )


def _exchange(connection: socket.socket, commands: list[bytes]) -> bytes:
    """Sends the commands and reads until there is one reply line per command (or it hangs up)."""
    connection.sendall(b"".join(commands))
    replies = b""
    while replies.count(b"\r\n") < len(commands):
        chunk = connection.recv(4096)
        if not chunk:
            break
        replies += chunk
    return replies


class RedisServer:
    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        username: str | None = None,
        certs: Path | None = None,
    ) -> None:
        """`appendonly`: every write is in the append-only file before it is acknowledged
        (appendfsync always), so a kill loses nothing and `restart()` reads it back; without it
        nothing is persisted. `password` alone: `requirepass` (the default user's password);
        with `username`: the only user who can log in is that ACL user, with every permission.
        `certs` (scripts/make_certs.sh output): the port speaks TLS only, with server.pem, and
        does not ask clients for a certificate."""
        if username is not None and password is None:
            raise ValueError("an ACL user needs a password")
        self.binary = redis_binary()
        self.appendonly = appendonly
        self.password = password
        self.username = username
        self.certs = certs
        self.host = "127.0.0.1"
        self._port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="modelwire-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """redis:// (rediss:// with TLS), with user:password@ when a password is set, database 0."""
        scheme = "rediss" if self.certs is not None else "redis"
        credentials = ""
        if self.password is not None:
            user = quote(self.username, safe="") if self.username is not None else ""
            credentials = f"{user}:{quote(self.password, safe='')}@"
        return f"{scheme}://{credentials}{self.host}:{self.port}/0"

    def _arguments(self) -> list[str]:
        arguments = ["--bind", self.host, "--dir", str(self.root)]
        if self.certs is None:
            arguments += ["--port", str(self.port)]
        else:
            arguments += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.certs / "server.pem"),
                "--tls-key-file",
                str(self.certs / "server.key"),
                "--tls-ca-cert-file",
                str(self.certs / "ca.pem"),
                "--tls-auth-clients",
                "no",
            ]
        if self.appendonly:
            arguments += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        else:
            arguments += ["--save", "", "--appendonly", "no"]
        if self.username is not None:
            arguments += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
            arguments += ["--user", "default", "off"]
        elif self.password is not None:
            arguments += ["--requirepass", self.password]
        return arguments

    def start(self, timeout: float = 20.0) -> None:
        """Starts it and returns once it answers PING (after AUTH when it has a password)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        log = open(self.root / "redis.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, *self._arguments()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready(timeout)

    def _ping(self) -> bytes:
        """Its replies to (AUTH and) PING over a fresh connection."""
        commands = [_command("PING")]
        if self.password is not None:
            user = [self.username] if self.username is not None else []
            commands.insert(0, _command("AUTH", *user, self.password))
        with socket.create_connection((self.host, self.port), timeout=1) as raw:
            if self.certs is None:
                return _exchange(raw, commands)
            context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
            with context.wrap_socket(raw, server_hostname=self.host) as tls:
                return _exchange(tls, commands)

    def _wait_ready(self, timeout: float) -> None:
        """Ready when it answers PING (polling an external process, bounded)."""
        ready = (b"+OK\r\n" if self.password is not None else b"") + b"+PONG\r\n"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"redis-server exited with {code}: {self.log()[-2000:]}")
            try:
                replies = self._ping()
            except OSError:  # not listening yet (ssl.SSLError is an OSError)
                replies = b""
            if replies == ready:
                return
            if replies.startswith(b"-") and b"-LOADING" not in replies:
                self.kill()
                raise RuntimeError(f"redis-server answered {replies!r}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server not ready after {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash: only what the append-only file holds survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, a clean shutdown (killed if it takes longer than `timeout`); the directory
        stays, for `restart()`."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Killed if it still runs, then started on the same port and directory."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextmanager
def redis_server(
    *,
    appendonly: bool = False,
    password: str | None = None,
    username: str | None = None,
    certs: Path | None = None,
) -> Iterator[RedisServer]:
    """A started RedisServer (the constructor's options), killed and its directory removed on exit;
    in a fixture: `with redis_server() as server: yield server`."""
    with RedisServer(
        appendonly=appendonly, password=password, username=username, certs=certs
    ) as server:
        yield server
