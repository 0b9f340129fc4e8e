"""`--processes N`: N worker processes on one port (SO_REUSEPORT), supervised by this one.

Children are fresh interpreters, not forks (gRPC's threads do not survive fork). The parent:
- binds the metrics port before any child starts, so a taken port fails the start with no child;
- gives each child a lifeline, its stdin: when the parent dies, even by SIGKILL, the pipe closes
  and the child drains and exits (app/server.py watches it), so no orphan keeps serving;
- restarts a child that dies while serving, after dropping its live gauges from the aggregate,
  and gives up (stopping the others and exiting non-zero) when children keep dying;
- forwards SIGTERM/SIGINT so every child drains, and exits with the worst child's exit code;
- forwards SIGHUP to every child that serves, and each reloads its tokens and certificates
  (app/reload.py); a child still starting (it may not handle SIGHUP yet) is left out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque

from prometheus_client import multiprocess

from modelwire.app.config import Config
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import PROCESSES_ENV, ConfigError
from modelwire.observe.metrics import MULTIPROC_ENV, serve_metrics

logger = logging.getLogger(__name__)

CHILD_FLAG = "--child"
RESTART_DELAY_S = 1.0
# Exit codes of a child that stopped because it was told to (SIGTERM, SIGINT, or its
# KeyboardInterrupt).
_STOPPED_AS_ASKED = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 130})
# More deaths than this within the window mean a child cannot serve: stop instead of looping.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def supervise(config: Config, argv: list[str]) -> int:
    if config.server.port == 0:
        raise ConfigError("--processes: several processes need a fixed port, not 0")
    metrics_dir = None
    try:
        if config.observability.metrics_port is not None:
            metrics_dir = tempfile.mkdtemp(prefix="modelwire-metrics-")
            os.environ[MULTIPROC_ENV] = metrics_dir
            try:
                serve_metrics(
                    None, config.observability.metrics_host, config.observability.metrics_port
                )
            except OSError as error:
                raise StartupFailure(
                    "observability.metrics_port: cannot listen on "
                    f"{config.observability.metrics_host}:{config.observability.metrics_port}: "
                    f"{error.strerror}"
                ) from None
        return asyncio.run(Supervisor(config.server.processes, argv, metrics_dir).run())
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(self, count: int, argv: list[str], metrics_dir: str | None) -> None:
        self._count = count
        self._argv = argv
        self._metrics_dir = metrics_dir
        self._env = dict(os.environ, **{PROCESSES_ENV: str(count)})
        self._children: list[asyncio.subprocess.Process] = []
        self._stopping = asyncio.Event()
        self._deaths: deque[float] = deque(maxlen=MAX_RESTARTS + 1)
        # Children that said they serve: they reload on SIGHUP; one still starting would die of it.
        self._serving: set[int] = set()
        # The tasks reading each child's stdout: held here, since the event loop keeps only a weak
        # reference to a task and may collect one still running.
        self._drains: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            announcements = [await self._start_child() for _ in range(self._count)]
        except StartupFailure:
            if self._stopping.is_set():  # a signal during the start: the children stopped as asked
                await self._wait_all()
                return 0
            self._stop(signal.SIGTERM)
            await self._wait_all()
            raise
        print(
            f"{announcements[0]} ({self._count} processes: "
            f"{', '.join(str(c.pid) for c in self._children)})",
            flush=True,
        )
        return await self._watch()

    async def _start_child(self) -> str:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modelwire.app.cli",
            *self._argv,
            CHILD_FLAG,
            env=self._env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._children.append(child)
        assert child.stdout is not None
        announcement = (await child.stdout.readline()).decode().strip()
        if not announcement:
            code = await child.wait()
            self._children.remove(child)
            self._forget(child)
            raise StartupFailure(
                f"worker process {child.pid} exited during its start (exit code {code}); its log "
                "says why"
            )
        self._serving.add(child.pid)
        # Nothing else is expected on stdout, but a full pipe would block the child: keep reading.
        drain = asyncio.create_task(_drain(child.stdout))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)
        return announcement

    async def _watch(self) -> int:
        """Waits for children to exit; replaces one that died while the worker serves."""
        codes: list[int] = []
        while self._children:
            waits = {asyncio.create_task(child.wait()): child for child in self._children}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                child = waits[task]
                self._children.remove(child)
                self._forget(child)
                code = task.result()
                if self._stopping.is_set():
                    codes.append(0 if code in _STOPPED_AS_ASKED else code)
                elif not await self._replace(child.pid, code):
                    codes.append(1)
        return max(codes, key=abs, default=0)

    def _forget(self, child: asyncio.subprocess.Process) -> None:
        """A dead child's live gauges (in flight, queued) leave the aggregate."""
        self._serving.discard(child.pid)
        if self._metrics_dir is not None:
            multiprocess.mark_process_dead(child.pid)  # type: ignore[no-untyped-call]

    async def _replace(self, pid: int, code: int) -> bool:
        """Starts a child in place of `pid`; a replacement that dies during its start counts as
        one more death. False once deaths exceed the budget (the others are then stopped)."""
        while True:
            now = time.monotonic()
            self._deaths.append(now)
            if len(self._deaths) > MAX_RESTARTS and now - self._deaths[0] < RESTART_WINDOW_S:
                logger.error(
                    "worker process %d exited (code %d): %d deaths within %.0fs, giving up and "
                    "stopping the others",
                    pid,
                    code,
                    len(self._deaths),
                    RESTART_WINDOW_S,
                )
                self._stop(signal.SIGTERM)
                return False
            logger.error(
                "worker process %d exited (code %d) while serving; starting another", pid, code
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), RESTART_DELAY_S)
                return True  # asked to stop meanwhile: nothing to replace
            except TimeoutError:
                pass
            try:
                await self._start_child()
            except StartupFailure as error:
                if self._stopping.is_set():
                    return True
                logger.error("%s", error)
                continue
            logger.warning("worker process %d replaced by %d", pid, self._children[-1].pid)
            return True

    def _reload(self) -> None:
        """Each serving child reloads and logs what it reloaded; a child still starting is left
        out (it reads the configuration file as it is now anyway)."""
        children = [c for c in self._children if c.returncode is None and c.pid in self._serving]
        if self._stopping.is_set() or not children:
            logger.warning("SIGHUP while no worker process serves (starting or draining): ignored")
            return
        pids = ", ".join(str(child.pid) for child in children)
        logger.info("SIGHUP: forwarded to worker processes %s", pids)
        for child in children:
            child.send_signal(signal.SIGHUP)

    def _stop(self, signum: int) -> None:
        self._stopping.set()
        for child in self._children:
            if child.returncode is None:
                child.send_signal(signum)

    async def _wait_all(self) -> None:
        await asyncio.gather(*(child.wait() for child in self._children))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
