"""TOML configuration: read once at start; every mistake names the file, the key and the reason."""

from __future__ import annotations

import tomllib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelwire.core.config import REQUIRED, ConfigError, ModelConfig, Table
from modelwire.proxy.registry import provider_class
from modelwire.worker.validation import RequestLimits

EMBEDDED_MODEL = "gemma-3-270m"


MIB = 1024 * 1024
# Pool threads beyond the generation slots, for counting long prompts and loading models.
COUNTING_THREADS = 4


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    grace_period_s: float = 10.0
    # None: a thread per slot of every blocking model plus COUNTING_THREADS (Config.blocking_pool_size).
    blocking_threads: int | None = None
    # Processes sharing the port (SO_REUSEPORT); more than one only when asked for.
    processes: int = 1
    max_receive_message_bytes: int = 4 * MIB
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float = 30.0


@dataclass(frozen=True)
class TokenGrant:
    """One bearer token; `models` None means every model. The token never appears in a repr."""

    name: str
    token: str = field(repr=False)
    models: frozenset[str] | None = None


@dataclass(frozen=True)
class AuthConfig:
    grants: tuple[TokenGrant, ...]
    protect_health: bool = False
    protect_reflection: bool = False


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    tracing: bool = False
    otlp_endpoint: str | None = None
    log_format: str = "json"


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]
    auth: AuthConfig | None = None
    tls: TlsConfig | None = None
    observability: ObservabilityConfig = ObservabilityConfig()
    limits: RequestLimits = RequestLimits()

    def blocking_pool_size(self) -> int:
        return self.server.blocking_threads or _pool_slots(self.models) + COUNTING_THREADS


def embedded_default() -> Config:
    """No configuration: the local gemma-3-270m that a registry package ships, no key, no network."""
    return Config(
        server=ServerConfig(),
        models=(ModelConfig(name=EMBEDDED_MODEL, provider="llamacpp", context_length=2048, max_concurrency=1, max_queue=32),),
    )


def _parse_model(table: Table) -> ModelConfig:
    config = ModelConfig(
        name=table.str("name", REQUIRED),
        provider=table.str("provider", REQUIRED),
        context_length=table.int("context_length", None, minimum=1),
        max_output_tokens=table.int("max_output_tokens", None, minimum=1),
        max_concurrency=table.int("max_concurrency", 4, minimum=1),
        max_queue=table.int("max_queue", 16, minimum=0),
        provider_options=table,
    )
    if not config.name.strip():
        raise table.error("name", "must not be empty")
    return config


def load_config(path: Path) -> Config:
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    root = Table(data, "", source)
    server_table = root.sub("server")
    defaults = ServerConfig()
    server = ServerConfig(
        host=server_table.str("host", defaults.host),
        port=server_table.int("port", defaults.port, minimum=0),
        grace_period_s=server_table.float("grace_period_s", defaults.grace_period_s, minimum=0),
        blocking_threads=server_table.int("blocking_threads", None, minimum=1),
        processes=server_table.int("processes", defaults.processes, minimum=1),
        max_receive_message_bytes=server_table.int("max_receive_message_bytes", defaults.max_receive_message_bytes, minimum=1024),
        keepalive_time_s=server_table.float("keepalive_time_s", defaults.keepalive_time_s, minimum=1),
        keepalive_timeout_s=server_table.float("keepalive_timeout_s", defaults.keepalive_timeout_s, minimum=1),
        max_connection_age_s=server_table.float("max_connection_age_s", None, minimum=1),
        max_connection_age_grace_s=server_table.float("max_connection_age_grace_s", defaults.max_connection_age_grace_s, minimum=0),
    )
    server_table.reject_unknown()
    models = [_parse_model(table) for table in root.tables("models")] or list(embedded_default().models)
    auth = _parse_auth(root.sub("auth"), path.parent) if "auth" in data else None
    tls = _parse_tls(root.sub("tls"), path.parent) if "tls" in data else None
    observability = _parse_observability(root.sub("observability"))
    limits = _parse_limits(root.sub("limits"))
    root.reject_unknown()
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise root.error("models", f"model name {duplicates[0]!r} is configured twice")
    _check_blocking_threads(server_table, server, models)
    return Config(server=server, models=tuple(models), auth=auth, tls=tls, observability=observability, limits=limits)


def _pool_slots(models: Sequence[ModelConfig]) -> int:
    """Threads that running generations can hold: each blocking provider's call keeps one to its end."""
    return sum(model.max_concurrency for model in models if provider_class(model).runs_on_pool)


def _check_blocking_threads(table: Table, server: ServerConfig, models: Sequence[ModelConfig]) -> None:
    """With fewer threads than slots an admitted call would wait for a thread while counted as
    running, and long prompts of every model (counted on the pool) would wait behind generations."""
    slots = _pool_slots(models)
    if server.blocking_threads is not None and slots and server.blocking_threads <= slots:
        raise table.error(
            "blocking_threads",
            f"must exceed the local models' max_concurrency in all ({slots}): one thread per running "
            f"generation and at least one for counting long prompts; got {server.blocking_threads}",
        )


def _parse_limits(table: Table) -> RequestLimits:
    defaults = RequestLimits()
    limits = RequestLimits(
        max_messages=table.int("max_messages", defaults.max_messages, minimum=1),
        max_request_chars=table.int("max_request_chars", defaults.max_request_chars, minimum=1),
        max_stop_strings=table.int("max_stop_strings", defaults.max_stop_strings, minimum=0),
        max_stop_chars=table.int("max_stop_chars", defaults.max_stop_chars, minimum=1),
    )
    table.reject_unknown()
    return limits


def _relative_file(table: Table, key: str, base: Path, required: bool) -> Path | None:
    """Paths in the file are relative to the file; the file must exist at start, not at first use."""
    value: str | None = table.str(key, REQUIRED if required else None)
    if value is None:
        return None
    path = (base / value).expanduser()
    if not path.is_file():
        raise table.error(key, f"no such file: {path}")
    return path


def _parse_auth(table: Table, base: Path) -> AuthConfig:
    grants: list[TokenGrant] = []
    tokens_file = _relative_file(table, "tokens_file", base, required=False)
    if tokens_file is not None:
        grants += _read_token_file(tokens_file)
    tokens_env = table.str("tokens_env", None)
    if tokens_env is not None:
        value = os.environ.get(tokens_env)
        if not value:
            raise table.error("tokens_env", f"environment variable {tokens_env} is not set or empty")
        grants += [TokenGrant(name=f"{tokens_env}[{index}]", token=token.strip()) for index, token in enumerate(value.split(",")) if token.strip()]
    if not grants:
        raise table.error("tokens_file", "auth needs tokens: set tokens_file, tokens_env or both")
    config = AuthConfig(
        grants=tuple(grants),
        protect_health=table.bool("protect_health", False),
        protect_reflection=table.bool("protect_reflection", False),
    )
    table.reject_unknown()
    return config


def _read_token_file(path: Path) -> list[TokenGrant]:
    """`[[tokens]]` tables with `name`, `token` and an optional `models` allow-list."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    root = Table(data, "", source)
    grants = []
    for table in root.tables("tokens"):
        models = table.str_list("models")
        grants.append(
            TokenGrant(
                name=table.str("name", REQUIRED),
                token=table.str("token", REQUIRED),
                models=frozenset(models) if models is not None else None,
            )
        )
        table.reject_unknown()
    root.reject_unknown()
    if len({grant.token for grant in grants}) != len(grants):
        raise root.error("tokens", "the same token is listed twice")
    return grants


def _parse_tls(table: Table, base: Path) -> TlsConfig:
    cert = _relative_file(table, "cert_file", base, required=True)
    key = _relative_file(table, "key_file", base, required=True)
    assert cert is not None and key is not None
    config = TlsConfig(cert_file=cert, key_file=key, client_ca_file=_relative_file(table, "client_ca_file", base, required=False))
    table.reject_unknown()
    return config


def _parse_observability(table: Table) -> ObservabilityConfig:
    defaults = ObservabilityConfig()
    log_format = table.str("log_format", defaults.log_format)
    if log_format not in ("json", "text"):
        raise table.error("log_format", f'must be "json" or "text", got {log_format!r}')
    config = ObservabilityConfig(
        metrics_port=table.int("metrics_port", None, minimum=0),
        metrics_host=table.str("metrics_host", defaults.metrics_host),
        tracing=table.bool("tracing", False),
        otlp_endpoint=table.str("otlp_endpoint", None),
        log_format=log_format,
    )
    table.reject_unknown()
    return config
