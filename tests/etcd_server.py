"""A real etcd server for tests, on 127.0.0.1 with free ports and a temporary data directory. It can
be killed and started again, keeping or wiping its data.

`make test` builds etcd from the Go module proxy into .tools/etcd/ (mk/etcd.mk) and names it in
MODELWIRE_ETCD; run by hand, the tests take that build, else an `etcd` on PATH. Without either
they fail, naming the step: a missing tool never skips a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
from aetcd import rpc

from conftest import free_port

BUILT_ETCD = Path(__file__).resolve().parent.parent / ".tools" / "etcd" / "etcd"


def etcd_binary() -> str:
    found = os.environ.get("MODELWIRE_ETCD") or (
        str(BUILT_ETCD) if BUILT_ETCD.exists() else shutil.which("etcd")
    )
    if found is None:
        raise FileNotFoundError(
            "etcd not found: `make etcd` builds it into .tools/etcd/ (`make test` does that "
            "first), or install one on PATH (Debian: apt-get install etcd-server)"
        )
    return found


class EtcdServer:
    def __init__(self, certs: Path | None = None) -> None:
        """With `certs` (scripts/make_certs.sh output) clients speak TLS to it."""
        self.binary = etcd_binary()
        self.certs = certs
        self.port = free_port()
        self.peer_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="modelwire-etcd-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"etcd://{self.endpoint}/{prefix}"

    def _channel(self) -> grpc.Channel:
        if self.certs is None:
            return grpc.insecure_channel(self.endpoint)
        return grpc.secure_channel(
            self.endpoint, grpc.ssl_channel_credentials((self.certs / "ca.pem").read_bytes())
        )

    def start(self, timeout: float = 20.0) -> None:
        client_url = f"{'https' if self.certs else 'http'}://{self.endpoint}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        tls = (
            [
                "--cert-file",
                str(self.certs / "server.pem"),
                "--key-file",
                str(self.certs / "server.key"),
            ]
            if self.certs
            else []
        )
        log = open(self.root / "etcd.log", "ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--name",
                "test",
                "--data-dir",
                str(self.root / "data"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"test={peer_url}",
                "--log-level",
                "warn",
                *tls,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": os.uname().machine},
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Ready when it answers a linearizable read (polling an external process, bounded)."""
        deadline = time.monotonic() + timeout
        with self._channel() as channel:
            kv = rpc.KVStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd exited with {self.process.returncode}: {self.log()[-2000:]}"
                    )
                try:
                    kv.Range(rpc.RangeRequest(key=b"ready"), timeout=0.5)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"etcd not ready after {timeout}s: {self.log()[-2000:]}"
                        ) from None
                    time.sleep(0.05)

    def enable_auth(self, password: str) -> None:
        """etcd's own authentication on, with `root` (the only user) holding `password`."""
        with self._channel() as channel:
            auth = rpc.AuthStub(channel)
            auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
            auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password), timeout=5)
            auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
            auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)

    def keys(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix` and its value, read straight from etcd."""
        with grpc.insecure_channel(self.endpoint) as channel:
            end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            reply = rpc.KVStub(channel).Range(
                rpc.RangeRequest(key=prefix.encode(), range_end=end.encode()), timeout=5
            )
            return {kv.key.decode(): kv.value for kv in reply.kvs}

    def log(self) -> str:
        path = self.root / "etcd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, wipe: bool = False) -> None:
        self.kill()
        if wipe:
            shutil.rmtree(self.root / "data", ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
