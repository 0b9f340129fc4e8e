"""Provider name (the `provider` config key) → ProxyLLMClient subclass, imported on first use.

A provider's module is imported only when a configured model names it: llamacpp needs
llama-cpp-python (the `local` extra, a ~6 minute build), which a remote-only install
(`make install LOCAL=0`) does not have, and its openai, anthropic and echo models must not need it.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from modelwire.core.settings import ModelConfig
from modelwire.providers.base import ProxyLLMClient


class BuiltIn(NamedTuple):
    module: str
    cls: str
    # What its imports need beyond modelwire's own dependencies, and how to install that.
    needs: str = "modelwire's dependencies"
    install: str = "reinstall modelwire from the checkout (`make install`)"


BUILT_IN: dict[str, BuiltIn] = {
    "llamacpp": BuiltIn(
        "modelwire.providers.llama.client",
        "LlamaCppClient",
        "llama-cpp-python (the `local` extra)",
        "from the checkout, `make install` builds and installs it (about 6 minutes on 2 cores the "
        "first time). Without it, serve openai, anthropic or echo models from a --config file "
        "(a remote-only install, `make install LOCAL=0`; docs/configuration.md)",
    ),
    "openai": BuiltIn("modelwire.providers.openai.client", "OpenAIClient"),
    "anthropic": BuiltIn("modelwire.providers.anthropic.client", "AnthropicClient"),
    "echo": BuiltIn("modelwire.providers.echo", "EchoClient"),
}

# The provider classes imported so far, by name; a test registers its own provider here.
PROVIDERS: dict[str, type[ProxyLLMClient]] = {}


def provider_class(model: ModelConfig) -> type[ProxyLLMClient]:
    """The model's provider class, importing its module on first use; a provider that is unknown
    or whose dependencies are not installed is a configuration error naming the install step."""
    name = model.provider
    if name in PROVIDERS:
        return PROVIDERS[name]
    if name not in BUILT_IN:
        known = ", ".join(sorted(BUILT_IN.keys() | PROVIDERS.keys()))
        raise model.error("provider", f"unknown provider {name!r}; known: {known}")
    PROVIDERS[name] = _import(model, BUILT_IN[name])
    return PROVIDERS[name]


def _import(model: ModelConfig, built_in: BuiltIn) -> type[ProxyLLMClient]:
    try:
        module = importlib.import_module(built_in.module)
    except ModuleNotFoundError as missing:
        if missing.name is None or missing.name.partition(".")[0] == "modelwire":
            raise
        raise model.error(
            "provider",
            f"provider {model.provider!r} needs {built_in.needs}, which is not installed "
            f"(no Python module {missing.name!r}): {built_in.install}",
        ) from None
    cls: type[ProxyLLMClient] = getattr(module, built_in.cls)
    return cls
