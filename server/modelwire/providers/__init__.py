"""Providers: one ProxyLLMClient subclass per provider family, each imported on first use."""

from modelwire.providers.base import ProxyLLMClient
from modelwire.providers.registry import provider_class

__all__ = ["ProxyLLMClient", "provider_class"]
