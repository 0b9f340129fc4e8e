"""SIGHUP: read the configuration again and apply what a running process can change — the `[auth]`
tokens, the `[tls]` certificate, key and client CA, and a worker's `[quota]` rules and prices —
then log one line saying what was reloaded and which changed keys need a restart. A configuration
that does not load, or certificates that do not work, leave everything running as it was, and the
line says why: a SIGHUP never stops a process.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from modelwire.core.settings import AuthConfig, TlsConfig
from modelwire.rpc.server import RpcServer

logger = logging.getLogger(__name__)

# Keys of `[auth]` whose change needs a restart: each method's check is chosen once, at start.
_RESTART_AUTH_KEYS = frozenset({"auth.protect_health", "auth.protect_reflection"})
# A worker's keys that a reload applies (the quota's store and its failure mode need a restart).
_RELOADED_QUOTA_KEYS = re.compile(
    r"quota\.rules\b.*|quota\.default_output_reservation|models\[\d+\]\.price_per_million\b.*"
)


class ServerConfigFile(Protocol):
    """What the worker's, controller's and gateway's configurations share for a reload."""

    @property
    def auth(self) -> object | None: ...

    @property
    def tls(self) -> TlsConfig | None: ...


C = TypeVar("C", bound=ServerConfigFile)


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys (`server.port`, `models[0].max_concurrency`) whose values differ; never
    the values themselves (a key may hold a token)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        return [
            key
            for field in dataclasses.fields(old)
            for key in changed_keys(
                getattr(old, field.name), getattr(new, field.name), _join(prefix, field.name)
            )
        ]
    if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
        return [
            key
            for index, pair in enumerate(zip(old, new, strict=True))
            for key in changed_keys(*pair, f"{prefix}[{index}]")
        ]
    return [prefix]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _needs_restart(key: str, running: ServerConfigFile, new: ServerConfigFile) -> bool:
    """Whether a reload cannot apply `key`'s change: all but the tokens, the certificates, a
    worker's quota rules and model prices; of those, switching auth, TLS or client certificates on
    or off."""
    if _RELOADED_QUOTA_KEYS.match(key):
        return False
    if key == "auth" or key.startswith("auth."):
        return (running.auth is None) != (new.auth is None) or key in _RESTART_AUTH_KEYS
    if key == "tls" or key.startswith("tls."):
        if running.tls is None or new.tls is None:
            return running.tls is not new.tls
        return (running.tls.client_ca_file is None) != (new.tls.client_ca_file is None)
    return True


@dataclass
class Reloader(Generic[C]):
    """Called on SIGHUP. `load` reads the configuration as the process did at start (its file
    and its command line's overrides); `auth_of` reads a configuration's tokens."""

    role: str
    rpc: RpcServer
    running: C
    load: Callable[[], C]
    auth_of: Callable[[C], AuthConfig | None]
    # More a process reloads (a worker's quota rules and prices): applies them, returns their names.
    also: Callable[[C], list[str]] | None = None

    def __call__(self) -> None:
        try:
            new = self.load()
            auth = self.auth_of(new)
            restart = [
                key
                for key in changed_keys(self.running, new)
                if _needs_restart(key, self.running, new)
            ]
            reloaded = self._apply(new, auth)
        except Exception as error:  # any reason at all: the process keeps serving as it was
            logger.error(
                "SIGHUP: reload refused, the %s keeps its running configuration: %s",
                self.role,
                error,
                extra={"reloaded": [], "error": type(error).__name__},
            )
            return
        # What the running configuration now holds (prices live in its models: not a section).
        applied = {name: getattr(new, name) for name in reloaded if hasattr(self.running, name)}
        self.running = dataclasses.replace(self.running, **applied)  # type: ignore[type-var]
        logger.info(
            "SIGHUP: %s reloaded %s%s",
            self.role,
            ", ".join(reloaded) or "nothing",
            f"; changed keys that need a restart: {', '.join(restart)}" if restart else "",
            extra={"reloaded": reloaded, "restart_needed": restart},
        )

    def _apply(self, new: C, auth: AuthConfig | None) -> list[str]:
        """The certificates first: they are checked as they are read, and a failure there must
        leave the tokens as they were too."""
        reloaded = []
        if self.rpc.tls is not None and new.tls is not None:
            self.rpc.tls.reload(new.tls)
            reloaded.append("tls")
        if self.rpc.auth is not None and auth is not None:
            self.rpc.auth.replace_grants(auth)
            reloaded.append("auth")
        if self.also is not None:
            reloaded += self.also(new)
        return reloaded
