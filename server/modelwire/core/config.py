"""Typed reading of configuration tables, shared by the loader and the providers' own keys."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


_REQUIRED = object()
REQUIRED: Any = _REQUIRED


class ConfigError(Exception):
    pass


# How many worker processes share this machine (`--processes`); set for each of them, so providers
# can share the cores out (llama.cpp's threads spin while they wait).
PROCESSES_ENV = "MODELWIRE_PROCESSES"


class Table:
    """A TOML table that knows where it came from, so errors can say `file: models[0].port: reason`."""

    def __init__(self, data: Mapping[builtins.str, Any], path: builtins.str, source: builtins.str) -> None:
        self._data = data
        self._path = path
        self._source = source
        self._read: set[builtins.str] = set()

    def error(self, key: builtins.str, reason: builtins.str) -> ConfigError:
        where = f"{self._path}.{key}" if self._path else key
        return ConfigError(f"{self._source}: {where}: {reason}")

    def _get(self, key: builtins.str, kind: type | tuple[type, ...], kind_name: builtins.str, default: Any) -> Any:
        self._read.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self._data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"must be {kind_name}, got {type(value).__name__}")
        return value

    def str(self, key: builtins.str, default: Any = None) -> Any:
        return self._get(key, str, "a string", default)

    def bool(self, key: builtins.str, default: bool) -> bool:
        value: bool = self._get(key, bool, "true or false", default)
        return value

    def int(self, key: builtins.str, default: Any, minimum: int | None = None) -> Any:
        value = self._get(key, int, "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def float(self, key: builtins.str, default: Any, minimum: float | None = None) -> Any:
        value = self._get(key, (int, float), "a number", default)
        if value is not None and minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return None if value is None else float(value)

    def str_map(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self._get(key, dict, "a table of strings", {})
        for name, item in value.items():
            if not isinstance(item, str):
                raise self.error(f"{key}.{name}", "must be a string")
        return dict(value)

    def str_list(self, key: builtins.str) -> builtins.list[builtins.str] | None:
        value = self._get(key, builtins.list, "an array of strings", None)
        if value is None:
            return None
        if not all(isinstance(item, builtins.str) for item in value):
            raise self.error(key, "must be an array of strings")
        return [builtins.str(item) for item in value]

    def sub(self, key: builtins.str) -> Table:
        return Table(self._get(key, dict, "a table", {}), f"{self._path}.{key}" if self._path else key, self._source)

    def tables(self, key: builtins.str) -> builtins.list[Table]:
        """An array of tables such as [[models]]."""
        items = self._get(key, list, "an array of tables", [])
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{index}]", "must be a table")
        return [Table(item, f"{key}[{index}]", self._source) for index, item in enumerate(items)]

    def reject_unknown(self, also_known: frozenset[builtins.str] = frozenset()) -> None:
        unknown = sorted(set(self._data) - self._read - also_known)
        if unknown:
            raise self.error(unknown[0], "is not a known key (see docs/configuration.md)")




@dataclass(frozen=True)
class ModelConfig:
    """Keys every model has; `provider_options` holds the rest, parsed by the provider."""

    name: str
    provider: str
    context_length: int | None = None
    max_output_tokens: int | None = None
    max_concurrency: int = 4
    max_queue: int = 16
    provider_options: Table = field(default_factory=lambda: Table({}, "", "<defaults>"))

    def reject_unknown_options(self) -> None:
        """Called once the provider has read its own keys: anything left over is a typo."""
        self.provider_options.reject_unknown(also_known=COMMON_MODEL_KEYS)


COMMON_MODEL_KEYS = frozenset({"name", "provider", "context_length", "max_output_tokens", "max_concurrency", "max_queue"})
