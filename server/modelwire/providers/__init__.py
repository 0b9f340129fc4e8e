"""Proxy clients: one ProxyLLMClient subclass per provider; they know only the core."""
