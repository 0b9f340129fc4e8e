"""The `modelwire` command line as a child process, started the one way the tests need it."""

import asyncio
import sys
from typing import Any

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


async def start_cli(
    *args: str, stdout: int = PIPE, stderr: int, **kwargs: Any
) -> asyncio.subprocess.Process:
    """`python -m modelwire.app.cli *args` with this interpreter, so this venv's install runs.

    stderr has no default: an unread pipe can fill and stall the child, so each caller says."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelwire.app.cli", *args, stdout=stdout, stderr=stderr, **kwargs
    )


async def first_line(process: asyncio.subprocess.Process, timeout: float) -> str:
    """The process's first stdout line (its announcement), waiting at most `timeout` seconds."""
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), timeout)).decode()
