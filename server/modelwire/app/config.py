"""TOML configuration: read once at start; every mistake names the file, the key and the reason."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from modelwire.core.config import REQUIRED, ConfigError, ModelConfig, Table

EMBEDDED_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    grace_period_s: float = 10.0
    blocking_threads: int = 8


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]


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
    server = ServerConfig(
        host=server_table.str("host", ServerConfig.host),
        port=server_table.int("port", ServerConfig.port, minimum=0),
        grace_period_s=server_table.float("grace_period_s", ServerConfig.grace_period_s, minimum=0),
        blocking_threads=server_table.int("blocking_threads", ServerConfig.blocking_threads, minimum=1),
    )
    server_table.reject_unknown()
    models = [_parse_model(table) for table in root.tables("models")]
    root.reject_unknown()
    if not models:
        return Config(server=server, models=embedded_default().models)
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise root.error("models", f"model name {duplicates[0]!r} is configured twice")
    return Config(server=server, models=tuple(models))
