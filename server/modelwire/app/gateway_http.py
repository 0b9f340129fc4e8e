"""A gateway's HTTP facades (`[http]`): OpenAI's and Anthropic's APIs in front of its fleet, each
call routed by the gateway's own forwarding (gateway/fleet_models.py)."""

from __future__ import annotations

from modelwire.core.settings import AuthConfig, GatewayFile, RequestLimits
from modelwire.facade.server import HttpFacade
from modelwire.gateway.fleet_models import FleetModels
from modelwire.gateway.server import Gateway
from modelwire.observe.call_observer import UNKNOWN_MODEL


def gateway_facade(
    gateway: Gateway, config: GatewayFile, auth: AuthConfig | None
) -> HttpFacade | None:
    """The facade on `config.http`'s port (None when it has none), sharing the gateway's tokens,
    metrics and certificate (a SIGHUP's new certificate reaches it too)."""
    if config.http.port is None:
        return None
    router = gateway.router

    def model_label(model: str) -> str:
        return model if model in router.known_models() else UNKNOWN_MODEL

    facade = HttpFacade(
        role="gateway",
        http=config.http,
        server=config.server,
        backend=FleetModels(gateway),
        metrics=gateway.rpc.metrics,
        sampling=gateway.rpc.sampling,
        auth=gateway.rpc.auth,
        auth_config=auth,
        tls=config.tls,
        model_label=model_label,
        # A gateway has no [limits] of its own (its workers enforce theirs): the defaults bound
        # what its facade translates.
        limits=RequestLimits(),
    )
    if gateway.rpc.tls is not None:
        gateway.rpc.tls.followers.append(facade.reload_tls)
    return facade
