"""The `modelwire` command line as a child process, started the one way the tests need it."""

import asyncio
import subprocess
import sys
from typing import Any

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
CLI = (sys.executable, "-m", "modelwire.app.cli")


async def start_cli(
    *args: str, stdout: int = PIPE, stderr: int, **kwargs: Any
) -> asyncio.subprocess.Process:
    """`python -m modelwire.app.cli *args` with this interpreter, so this venv's install runs.

    stderr has no default: an unread pipe can fill and stall the child, so each caller says."""
    return await asyncio.create_subprocess_exec(*CLI, *args, stdout=stdout, stderr=stderr, **kwargs)


async def first_line(process: asyncio.subprocess.Process, timeout: float) -> str:
    """The process's first stdout line (its announcement), waiting at most `timeout` seconds."""
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), timeout)).decode()


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m modelwire.app.cli *args` run to its end, stdout and stderr captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
