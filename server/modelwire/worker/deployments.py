"""What a name a caller sends stands for: a model (its deployments) or a route (its members, in
order), and how each shows in ListModels."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from modelwire.core.settings import DEFAULT_ESTIMATE_MARGIN, BreakerConfig, RouteConfig
from modelwire.core.types import ModelMetadata
from modelwire.providers.base import ProxyLLMClient
from modelwire.worker.admission import Admission
from modelwire.worker.breaker import Breaker

# ListModels' `provider` of a route, and the metadata keys naming a target's parts.
ROUTE_PROVIDER = "route"
ROUTE_KEY = "route"
DEPLOYMENTS_KEY = "deployments"


@dataclass(eq=False)
class ServedModel:
    """One deployment of a model: its provider's client, its admission, its circuit breaker."""

    metadata: ModelMetadata
    client: ProxyLLMClient
    admission: Admission
    estimate_margin: float = DEFAULT_ESTIMATE_MARGIN
    # Its name among its model's deployments (None: the model's only one).
    deployment: str | None = None
    weight: int = 1
    breaker: Breaker = field(default_factory=lambda: Breaker(BreakerConfig()))
    # When the deployment policy last chose it (core/balance.py).
    picked_at: float = 0.0

    @property
    def model(self) -> str:
        return self.metadata.model

    @property
    def label(self) -> str:
        """Its deployment's name, or its model's when it is the only one."""
        return self.deployment if self.deployment is not None else self.metadata.model


@dataclass(frozen=True)
class Target:
    """A name callers use: its candidates, model by model in the order they are tried."""

    name: str
    members: tuple[tuple[str, tuple[ServedModel, ...]], ...]
    metadata: ModelMetadata
    route: bool = False
    # An attempt's time to first content (a stream) or to its answer (unary); None: unbounded.
    attempt_timeout_s: float | None = None

    @property
    def single(self) -> bool:
        """Nothing to choose between: a model (not a route) with one deployment."""
        return not self.route and len(self.members[0][1]) == 1

    @property
    def deployments(self) -> tuple[ServedModel, ...]:
        return tuple(served for _, group in self.members for served in group)


def build_targets(
    served: Sequence[ServedModel], routes: Sequence[RouteConfig], attempt_timeout_s: float | None
) -> dict[str, Target]:
    """Each model name (with its deployments), then each route."""
    groups: dict[str, list[ServedModel]] = {}
    for deployment in served:
        groups.setdefault(deployment.model, []).append(deployment)
    # A model with one deployment has nothing to move on to: no attempt timeout cuts it short.
    targets = {
        name: Target(
            name,
            ((name, tuple(group)),),
            _model_metadata(group),
            False,
            attempt_timeout_s if len(group) > 1 else None,
        )
        for name, group in groups.items()
    }
    for route in routes:
        members = tuple((model, tuple(groups[model])) for model in route.models)
        timeout = (
            route.attempt_timeout_s if route.attempt_timeout_s is not None else attempt_timeout_s
        )
        targets[route.name] = Target(
            route.name,
            members,
            _route_metadata(route, [targets[model].metadata for model in route.models]),
            True,
            timeout,
        )
    return targets


def _model_metadata(group: Sequence[ServedModel]) -> ModelMetadata:
    """A model's deployments as one: what each accepts (the capabilities they share), the longest
    context any holds (a prompt too long for one moves on to another)."""
    if len(group) == 1:
        return group[0].metadata
    first = group[0].metadata
    providers = sorted({served.metadata.provider for served in group})
    return replace(
        _merged(first, [served.metadata for served in group]),
        provider=",".join(providers),
        metadata={**first.metadata, DEPLOYMENTS_KEY: name_list(s.label for s in group)},
    )


def _route_metadata(route: RouteConfig, members: Sequence[ModelMetadata]) -> ModelMetadata:
    return replace(
        _merged(members[0], members),
        model=route.name,
        provider=ROUTE_PROVIDER,
        metadata={ROUTE_KEY: name_list(route.models)},
        prices=None,
    )


def name_list(names: Iterable[str]) -> str:
    """Names comma-separated, each percent-encoded but for "/" (a name may hold a comma)."""
    return ",".join(urllib.parse.quote(name, safe="/") for name in names)


def _merged(first: ModelMetadata, all_metadata: Sequence[ModelMetadata]) -> ModelMetadata:
    shared = set(first.capabilities)
    for metadata in all_metadata[1:]:
        shared &= set(metadata.capabilities)
    return replace(
        first,
        context_length=max(m.context_length for m in all_metadata),
        max_output_tokens=max(m.max_output_tokens for m in all_metadata),
        capabilities=tuple(c for c in first.capabilities if c in shared),
    )
