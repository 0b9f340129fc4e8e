"""The one place that picks the registry a worker, a gateway or `modelwire instances` talks to."""

from __future__ import annotations

from modelwire.core.settings import RegistryAccess
from modelwire.fleet.registry import RegistryClient


def connect(access: RegistryAccess) -> RegistryClient:
    """etcd when `[registry] etcd` (`--registry etcd://…`) is set, else the controller at
    `[registry] controller` (`--controller`), each with the credentials `access` names."""
    if access.etcd:
        from modelwire.fleet.etcd import EtcdRegistry

        return EtcdRegistry.from_url(access.etcd, access=access)
    if access.controller:
        from modelwire.fleet.remote import RemoteController

        return RemoteController(access.controller, access)
    raise ValueError("neither a controller nor an etcd registry is configured")
