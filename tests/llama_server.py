"""A real OpenAI-compatible server for tests: llama-cpp-python's `[server]` extra on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def llama_server(
    model_path: Path, n_ctx: int = 2048, n_threads: int = 1, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """Starts `python -m llama_cpp.server --chat_format gemma`, yields its `.../v1` base URL once
    GET /v1/models answers (bounded), and terminates it on exit.

    One thread: a 270M model is fast enough with it, and llama.cpp's threads spin-wait, so more
    threads than idle cores (the test process and the worker share the machine) make it slower."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--chat_format",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        *extra_args,
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        "llama_cpp.server exited with "
                        f"{process.returncode}:\n{log.read().decode(errors='replace')}"
                    )
                try:
                    if httpx.get(f"{base}/models", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"llama_cpp.server did not answer within {STARTUP_TIMEOUT_S:g}s"
                    )
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
