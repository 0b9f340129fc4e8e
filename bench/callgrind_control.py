"""callgrind_control, the one way the bench's callgrind harnesses (callgrind.py from outside,
inprocess.py and coalesce_cost.py from inside the process measured) start, zero and dump counts.
Always with the pid: other sessions may run callgrind too."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def control(pid: int, *what: str) -> None:
    subprocess.run(["callgrind_control", *what, str(pid)], check=True, capture_output=True)


@contextmanager
def counted(name: str) -> Iterator[None]:
    """Counts this process's instructions over the block (started with `--instr-atstart=no`) and
    dumps them as `name`, the dump's `desc: Trigger: dump <name>` line."""
    pid = os.getpid()
    control(pid, "--instr=on")
    control(pid, "--zero")
    yield
    control(pid, f"--dump={name}")
    control(pid, "--instr=off")
