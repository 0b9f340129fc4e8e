"""Providers: one ProxyLLMClient subclass per provider, laid out by family (http/ is what the HTTP
ones share), each imported only when a configured model names it (registry.py)."""

from modelwire.providers.base import ProxyLLMClient
from modelwire.providers.registry import provider_class

__all__ = ["ProxyLLMClient", "provider_class"]
