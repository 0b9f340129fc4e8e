"""`--processes N`: N worker processes on one port (SO_REUSEPORT), supervised by this one.

Children are fresh interpreters, not forks (gRPC's threads do not survive fork). The parent
forwards SIGTERM/SIGINT so every child drains, serves the aggregate of the children's metrics
(prometheus-client multiprocess mode), and exits with the worst child's exit code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from types import FrameType

from modelwire.app.config import Config
from modelwire.core.config import ConfigError
from modelwire.observe.metrics import MULTIPROC_ENV, serve_metrics

PROCESSES_ENV = "MODELWIRE_PROCESSES"
CHILD_FLAG = "--child"


def supervise(config: Config, argv: list[str]) -> int:
    count = config.server.processes
    if config.server.port == 0:
        raise ConfigError("--processes: several processes need a fixed port, not 0")
    env = dict(os.environ, **{PROCESSES_ENV: str(count)})
    metrics_dir = None
    if config.observability.metrics_port is not None:
        metrics_dir = tempfile.mkdtemp(prefix="modelwire-metrics-")
        env[MULTIPROC_ENV] = os.environ[MULTIPROC_ENV] = metrics_dir
    children = [
        subprocess.Popen([sys.executable, "-m", "modelwire.app.cli", *argv, CHILD_FLAG], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        announcements = [child.stdout.readline().strip() for child in children if child.stdout is not None]
        if all(announcements):
            if metrics_dir is not None and config.observability.metrics_port is not None:
                serve_metrics(None, config.observability.metrics_host, config.observability.metrics_port)
            print(f"{announcements[0]} ({count} processes: {', '.join(str(c.pid) for c in children)})", flush=True)
        else:
            forward(signal.SIGTERM, None)
        codes = [child.wait() for child in children]
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return max(codes, key=abs)
