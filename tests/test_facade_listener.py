"""The HTTP facades' listener keeps the gRPC port's rules: beyond loopback only with [auth] (or
the operator's waiver), HTTPS with the same certificate (a SIGHUP's new one from the next
handshake), `--http-port` on the command line, and processes sharing the HTTP port as they share
the gRPC one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from cli_process import DEVNULL, first_line, start_cli
from conftest import free_port, running_worker
from fake_upstream import load_toml_config
from modelwire.app.config import load_config
from modelwire.app.reload import Reloader
from modelwire.app.server import build_worker
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import TlsConfig

ROOT = Path(__file__).resolve().parents[1]
ECHO = '[[models]]\nname = "echo"\nprovider = "echo"\nchunks = 3\n'
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "Hi"}]}


def routable_ip() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
    return address


def certificates(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory), "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return directory


def post_chat(
    url: str, context: ssl.SSLContext | None = None, key: str | None = None
) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(CHAT).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


async def test_beyond_loopback_without_auth_the_http_port_refuses_to_start(
    tmp_path: Path,
) -> None:
    """The gRPC port on loopback does not make an HTTP port on the network safe."""
    config = load_toml_config(tmp_path, f'[http]\nport = 0\nhost = "{routable_ip()}"\n{ECHO}')
    with pytest.raises(StartupFailure, match="HTTP facade would listen on .* without auth"):
        async with running_worker(config):
            pass


async def test_the_http_port_speaks_tls_with_the_grpc_certificate_and_takes_a_reload(
    tmp_path: Path,
) -> None:
    first, second = certificates(tmp_path / "first"), certificates(tmp_path / "second")
    config = load_toml_config(
        tmp_path,
        f'[tls]\ncert_file = "{first}/server.pem"\nkey_file = "{first}/server.key"\n'
        f"[http]\nport = 0\n{ECHO}",
    )
    trusts_first = ssl.create_default_context(cafile=first / "ca.pem")
    trusts_second = ssl.create_default_context(cafile=second / "ca.pem")
    async with running_worker(config) as worker:
        assert worker.facade is not None
        url = worker.facade.address
        assert url.startswith("https://")
        answer = await asyncio.to_thread(post_chat, url, trusts_first)
        assert answer["object"] == "chat.completion"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(post_chat, url, trusts_second)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
            await asyncio.to_thread(post_chat, url.replace("https://", "http://"))

        assert worker.rpc.tls is not None
        worker.rpc.tls.reload(
            TlsConfig(cert_file=second / "server.pem", key_file=second / "server.key")
        )
        answer = await asyncio.to_thread(post_chat, url, trusts_second)
        assert answer["object"] == "chat.completion", "the next handshake has the new certificate"


async def test_a_sighup_token_reload_reaches_the_http_port(tmp_path: Path) -> None:
    """The HTTP port checks keys against the gRPC port's tokens, so a reload changes both."""
    old, new = "old-token-0123456789abcdef", "new-token-0123456789abcdef"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "old"\ntoken = "{old}"\n', encoding="utf-8")
    text = f'[auth]\ntokens_file = "{tokens}"\n[http]\nport = 0\n{ECHO}'
    config = load_toml_config(tmp_path, text)
    async with running_worker(config) as worker:
        assert worker.facade is not None
        url = worker.facade.address
        assert (await asyncio.to_thread(post_chat, url, None, old))["object"] == "chat.completion"

        tokens.write_text(f'[[tokens]]\nname = "new"\ntoken = "{new}"\n', encoding="utf-8")
        Reloader(
            "worker",
            worker.rpc,
            config,
            lambda: load_config(tmp_path / "modelwire.toml"),
            lambda reloaded: reloaded.auth,
        )()
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(post_chat, url, None, old)
        assert refused.value.code == 401
        assert (await asyncio.to_thread(post_chat, url, None, new))["object"] == "chat.completion"


async def test_the_http_port_serves_new_calls_through_the_drain_delay(tmp_path: Path) -> None:
    """As the gRPC port: balancers that poll get `drain_delay_s` to stop sending."""
    config = load_toml_config(
        tmp_path, f"[server]\ndrain_delay_s = 3\ngrace_period_s = 1\n[http]\nport = 0\n{ECHO}"
    )
    worker = await build_worker(replace(config, server=replace(config.server, port=0)))
    await worker.start()
    assert worker.facade is not None
    url = worker.facade.address
    draining = asyncio.create_task(worker.drain())
    answer = await asyncio.to_thread(post_chat, url)
    assert answer["object"] == "chat.completion", "a call in the drain delay is served"
    await draining
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(post_chat, url)


async def test_two_processes_share_the_http_port_given_on_the_command_line(
    tmp_path: Path,
) -> None:
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f"[server]\nport = {port}\nprocesses = 2\n"
        f"[observability]\nmetrics_port = {metrics_port}\n{ECHO}"
    )
    process = await start_cli(
        "serve", "--config", str(config), "--http-port", str(http_port), stderr=DEVNULL
    )
    try:
        line = await first_line(process, 120)
        assert "(2 processes: " in line, line
        url = f"http://127.0.0.1:{http_port}"
        calls = 12  # each on its own connection: SO_REUSEPORT spreads connections
        answers = await asyncio.gather(*(asyncio.to_thread(post_chat, url) for _ in range(calls)))
        assert all(answer["object"] == "chat.completion" for answer in answers)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        ) as response:
            metrics = response.read().decode()
        assert (
            'modelwire_requests_total{code="OK",method="completions",'
            f'model="echo",tenant="_none"}} {calls}.0' in metrics
        ), "both processes' HTTP calls are counted together"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
