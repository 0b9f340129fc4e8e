"""The one place that picks the registry a worker, a gateway or `modelwire instances` talks to."""

from __future__ import annotations

from modelwire.fleet.registry import RegistryClient


def connect(controller: str | None, registry: str | None) -> RegistryClient:
    """The one place that picks the registry a worker, a gateway or `modelwire instances` talks to:
    etcd when `--registry etcd://…` is given, else the controller at `--controller`."""
    if registry:
        from modelwire.fleet.etcd import EtcdRegistry

        return EtcdRegistry.from_url(registry)
    if controller:
        from modelwire.fleet.remote import RemoteController

        return RemoteController(controller)
    raise ValueError("neither --controller nor --registry is given")
