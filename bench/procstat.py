"""What the server processes cost, read from /proc: CPU seconds, RSS, peak RSS; and how busy the
machine is besides us (other engineers' test suites share these cores)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid`."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    found += [int(child) for child in handle.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return found


def tree(pids: Iterable[int]) -> list[int]:
    """The given processes and all their descendants (e.g. --processes children, LiteLLM
    workers)."""
    seen: list[int] = []
    pending = list(pids)
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.append(pid)
        pending += children(pid)
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    """Peak RSS of the process over its life so far (VmHWM)."""
    return _status_kib(pid, "VmHWM") / 1024


@dataclass
class Snapshot:
    at: float
    cpu: dict[int, float]


class ProcessGroup:
    """The server-side processes of one target; CPU is summed over the tree, as is RSS."""

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)

    def pids(self) -> list[int]:
        return tree(self.roots)

    def snapshot(self) -> Snapshot:
        return Snapshot(time.monotonic(), {pid: cpu_seconds(pid) for pid in self.pids()})

    def cpu_since(self, before: Snapshot) -> float:
        after = self.snapshot()
        return sum(cpu - before.cpu.get(pid, 0.0) for pid, cpu in after.cpu.items())

    def rss_mib(self) -> float:
        return sum(rss_mib(pid) for pid in self.pids())

    def hwm_mib(self) -> float:
        """Sum of each process's own peak: an upper bound of the group's peak."""
        return sum(hwm_mib(pid) for pid in self.pids())


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, wall seconds × CPUs) since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, already counted in user
    return (total - idle) / TICKS, total / TICKS


def loadavg1() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def busy_cores(window_s: float = 1.0) -> float:
    """How many cores were busy over the next `window_s` (everything on the machine)."""
    busy0, _ = machine_busy_seconds()
    time.sleep(window_s)
    busy1, _ = machine_busy_seconds()
    return (busy1 - busy0) / window_s


def wait_for_load(
    max_load: float,
    timeout_s: float,
    say: callable = print,  # type: ignore[valid-type]
) -> float:
    """Waits (bounded) until the 1-minute load average is below `max_load`; returns the last one."""
    deadline = time.monotonic() + timeout_s
    load = loadavg1()
    while load >= max_load and time.monotonic() < deadline:
        say(
            f"waiting for a quieter machine: load average {load:.2f} ≥ {max_load} "
            f"({deadline - time.monotonic():.0f}s left)"
        )
        time.sleep(5)
        load = loadavg1()
    return load


def wait_for_idle(max_busy_cores: float, timeout_s: float, window_s: float = 0.5) -> float:
    """Waits (bounded) until other processes use less than `max_busy_cores`, measured over a short
    window. Unlike the load average this does not remember the previous measurement's own load."""
    deadline = time.monotonic() + timeout_s
    busy = busy_cores(window_s)
    while busy >= max_busy_cores and time.monotonic() < deadline:
        busy = busy_cores(window_s)
    return busy
