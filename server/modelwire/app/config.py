"""Configuration files of the three processes, read once at start (schema: core/settings.py)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelwire.core.settings import (
    ALL_TENANTS,
    AuthConfig,
    AuthSection,
    ConfigError,
    ControllerFile,
    FailoverConfig,
    GatewayFile,
    HttpConfig,
    ModelConfig,
    ObservabilityConfig,
    Prices,
    QuotaSection,
    RegistrationConfig,
    RegistryAccess,
    RequestLimits,
    RouteConfig,
    TlsConfig,
    TokenGrant,
    TokensFile,
    WorkerFile,
    WorkerServerConfig,
    model_config,
    parse,
)
from modelwire.providers.registry import provider_class

EMBEDDED_MODEL = "gemma-3-270m"
# Pool threads beyond the generation slots, for counting long prompts and loading models.
COUNTING_THREADS = 4


@dataclass(frozen=True)
class Config:
    """A worker's configuration."""

    server: WorkerServerConfig
    models: tuple[ModelConfig, ...]
    auth: AuthConfig | None = None
    tls: TlsConfig | None = None
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    quota: QuotaSection = field(default_factory=QuotaSection)
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    routes: tuple[RouteConfig, ...] = ()
    failover: FailoverConfig = field(default_factory=FailoverConfig)

    def prices(self) -> dict[str, Prices | None]:
        """Each model's prices, by its name (the deployments of a name share them)."""
        prices: dict[str, Prices | None] = {}
        for model in self.models:
            if prices.get(model.name) is None:
                prices[model.name] = model.price_per_million
        return prices

    def blocking_pool_size(self) -> int:
        return self.server.blocking_threads or _pool_slots(self.models) + COUNTING_THREADS


def embedded_default() -> Config:
    """No configuration: the local gemma-3-270m that a registry package ships, no key, no network.
    Its provider is imported here, so a remote-only install (no llama-cpp-python) is told at once
    what to install or configure."""
    model = ModelConfig(
        name=EMBEDDED_MODEL,
        provider="llamacpp",
        context_length=2048,
        max_concurrency=1,
        max_queue=32,
        source="the embedded default model (served when no [[models]] are configured)",
    )
    provider_class(model)
    return Config(server=WorkerServerConfig(), models=(model,))


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path) -> Config:
    source = str(path)
    file = parse(WorkerFile, _read(path), source, base=path.parent)
    models = [
        model_config(table, source, f"models[{index}]", path.parent)
        for index, table in enumerate(file.models)
    ]
    for model in models:
        provider_class(model)  # an unknown provider fails here, before anything loads
    _check_deployments(source, models)
    models = models or list(embedded_default().models)
    _check_routes(source, file.routes, models)
    _check_blocking_threads(source, file.server, models)
    for index, rule in enumerate(file.quota.rules):
        if rule.deployment is not None and not any(
            (m.name, m.deployment) == (rule.model, rule.deployment) for m in models
        ):
            raise ConfigError(
                f"{source}: quota.rules[{index}].deployment: model {rule.model!r} has no "
                f"deployment {rule.deployment!r} here"
            )
        if file.auth is None and rule.tenant != ALL_TENANTS:
            raise ConfigError(
                f"{source}: quota.rules[{index}].tenant: a rule over tenants needs [auth] (without "
                'it no call has a tenant): add [auth], or make it tenant = "all"'
            )
    return Config(
        server=file.server,
        models=tuple(models),
        auth=read_auth(file.auth, source),
        tls=file.tls,
        observability=file.observability,
        limits=file.limits,
        quota=file.quota,
        registry=file.registry,
        registration=file.registration,
        http=file.http,
        routes=file.routes,
        failover=file.failover,
    )


def _check_deployments(source: str, models: Sequence[ModelConfig]) -> None:
    """Tables sharing a name are deployments of one model: each names its deployment, no two the
    same, and they agree on the prices (a model's calls are priced one way, whoever answers)."""
    by_name: dict[str, list[ModelConfig]] = {}
    for model in models:
        by_name.setdefault(model.name, []).append(model)
    for name, group in by_name.items():
        if len(group) == 1:
            continue
        for model in group:
            if model.deployment is None:
                raise ConfigError(
                    f"{source}: {model.where}.deployment: model name {name!r} is configured "
                    f"{len(group)} times: give each table a `deployment` name of its own"
                )
        labels = [model.deployment for model in group]
        for model in group:
            if labels.count(model.deployment) > 1:
                raise ConfigError(
                    f"{source}: {model.where}.deployment: model {name!r} has two deployments "
                    f"named {model.deployment!r}"
                )
        priced = [model for model in group if model.price_per_million is not None]
        for model in priced[1:]:
            if model.price_per_million != priced[0].price_per_million:
                raise ConfigError(
                    f"{source}: {model.where}.price_per_million: differs from "
                    f"{priced[0].where}'s: the deployments of {name!r} are priced once (the "
                    "others may leave the prices out)"
                )


def _check_routes(
    source: str, routes: Sequence[RouteConfig], models: Sequence[ModelConfig]
) -> None:
    """A route's name is its own (no model's, no other route's) and its members are models
    configured here (a route of routes would hide the order of its attempts)."""
    names = {model.name for model in models}
    seen: set[str] = set()
    for index, route in enumerate(routes):
        where = f"{source}: routes[{index}]"
        if route.name in names:
            raise ConfigError(f"{where}.name: {route.name!r} is a model's name")
        if route.name in seen:
            raise ConfigError(f"{where}.name: route {route.name!r} is configured twice")
        seen.add(route.name)
        for number, member in enumerate(route.models):
            if member not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(
                    f"{where}.models[{number}]: {member!r} is not a model served here "
                    f"(served: {known}); a route's members are models, not routes"
                )


def load_controller_config(path: Path) -> ControllerFile:
    config = parse(ControllerFile, _read(path), str(path), base=path.parent)
    if config.registry.controller is not None:
        raise ConfigError(
            f"{path}: registry.controller: a controller keeps its instances in memory or in etcd, "
            "not in another controller"
        )
    return config


def load_gateway_config(path: Path) -> GatewayFile:
    return parse(GatewayFile, _read(path), str(path), base=path.parent)


def read_auth(section: AuthSection | None, source: str) -> AuthConfig | None:
    """`[auth]` with its tokens read: from `tokens_file` (names, permissions, model allow-lists)
    and from `tokens_env` (comma-separated)."""
    if section is None:
        return None
    grants: list[TokenGrant] = []
    if section.tokens_file is not None:
        grants += parse(TokensFile, _read(section.tokens_file), str(section.tokens_file)).tokens
    if section.tokens_env is not None:
        values = [
            token.strip() for token in os.environ[section.tokens_env].split(",") if token.strip()
        ]
        grants += [
            parse(
                TokenGrant,
                {
                    "name": f"{section.tokens_env}[{index}]",
                    "token": token,
                    "permissions": list(section.tokens_env_permissions),
                },
                source,
                f"auth.tokens_env[{index}]",
            )
            for index, token in enumerate(values)
        ]
    if not grants:
        raise ConfigError(
            f"{source}: auth.tokens_file: auth needs tokens: set tokens_file, tokens_env or both"
        )
    if len({grant.token for grant in grants}) != len(grants):
        raise ConfigError(f"{source}: auth: the same token comes from tokens_file and tokens_env")
    return AuthConfig(
        grants=tuple(grants),
        protect_health=section.protect_health,
        protect_reflection=section.protect_reflection,
        tokens_file=section.tokens_file,
    )


def _pool_slots(models: Sequence[ModelConfig]) -> int:
    """Threads that running generations can hold: each blocking provider's call keeps one to its
    end."""
    return sum(model.max_concurrency for model in models if provider_class(model).runs_on_pool)


def _check_blocking_threads(
    source: str, server: WorkerServerConfig, models: Sequence[ModelConfig]
) -> None:
    """With fewer threads than slots an admitted call would wait for a thread while counted as
    running, and long prompts of every model (counted on the pool) would wait behind generations."""
    slots = _pool_slots(models)
    if server.blocking_threads is not None and slots and server.blocking_threads <= slots:
        raise ConfigError(
            f"{source}: server.blocking_threads: must exceed the local models' max_concurrency in "
            f"all ({slots}): one thread per running generation and at least one for counting long "
            f"prompts; got {server.blocking_threads}"
        )
