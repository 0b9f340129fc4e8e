"""Static bearer tokens in `authorization` metadata, compared in constant time. Each token has a
name (the caller's identity: `caller_identity()` during the call), permissions (calling models,
registering instances, reading the fleet; each method needs one) and an optional model allow-list
(`model_refusal()` during the call). Health and reflection stay open unless configured otherwise."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar

import grpc

from modelwire.core.errors import ModelwireError, PermissionDenied
from modelwire.core.settings import AuthConfig, Permission, TokenGrant
from modelwire.rpc.status import refuse
from modelwire.rpc.wire import WORKER_SERVICE

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_UNAUTHENTICATED = "missing or invalid bearer token: send metadata `authorization: Bearer <token>`"


class Unauthenticated(ModelwireError):
    """No valid bearer token. Raised only here, before a method runs, so never an error kind of
    the call's record (core/errors.py lists those); a registry client maps a controller's answer
    to it (fleet/remote.py)."""

    code: ClassVar[str] = "UNAUTHENTICATED"


_caller: ContextVar[TokenGrant | None] = ContextVar("modelwire_caller", default=None)


def model_calls(method: str) -> Permission | None:
    """What a ModelWorker server's (a worker's, a gateway's) methods need: `generate`, each."""
    return "generate" if method.startswith(f"/{WORKER_SERVICE}/") else None


def caller_identity() -> str | None:
    """The name of the token the current call authenticated with; None without [auth]."""
    grant = _caller.get()
    return grant.name if grant is not None else None


def model_refusal(model: str) -> str | None:
    """Why the current call's token may not use `model`, or None when it may: the one home of the
    `models` allow-list, applied where the model name is in hand (a worker's decoded request, a
    gateway's routing field) and to what ListModels lists. Every model without [auth] or without
    an allow-list; a request naming no model is refused for that, not here."""
    grant = _caller.get()
    if grant is None or grant.models is None or not model or model in grant.models:
        return None
    return f"token {grant.name!r} may not use model {model!r}"


class BearerAuth:
    """The call pipeline's (rpc/call_pipeline.py) first check of a call."""

    def __init__(
        self, config: AuthConfig, permission_of: Callable[[str], Permission | None]
    ) -> None:
        """`permission_of(method)` is what a method needs (None: any valid token)."""
        self._config = config
        self._permission_of = permission_of
        self._grants = [(grant, grant.token.encode()) for grant in config.grants]

    def replace_grants(self, config: AuthConfig) -> None:
        """SIGHUP (app/reload.py): `config`'s tokens replace the running ones in one assignment,
        from the next call on."""
        self._grants = [(grant, grant.token.encode()) for grant in config.grants]

    def protects(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return self._config.protect_health
        if method.startswith(REFLECTION_PREFIXES):
            return self._config.protect_reflection
        return True

    def _grant(self, context: grpc.aio.ServicerContext) -> TokenGrant | None:
        presented = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                presented = value[7:].strip().encode()
        found = None
        for grant, token in self._grants:  # every token is compared, so timing reveals nothing
            if hmac.compare_digest(presented, token) and presented:
                found = grant
        return found

    async def check(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Aborts a call without a valid token, the method's permission, or (for a request that
        names one) a model the token may use; otherwise the token's name is the caller's identity."""
        grant = self._grant(context)
        if grant is None:
            await refuse(context, Unauthenticated(_UNAUTHENTICATED))
            return
        needed = self._permission_of(method)
        if needed is not None and needed not in grant.permissions:
            lacks = f"token {grant.name!r} lacks the {needed!r} permission that {method} needs"
            await refuse(context, PermissionDenied(lacks))
        # The behavior runs in this task after the check: the token's name and models reach it.
        _caller.set(grant)
        # Only a model call's request names the model it uses (a gateway's is bytes: it checks the
        # model it routes on itself).
        refusal = model_refusal(getattr(request, "model", "")) if needed == "generate" else None
        if refusal is not None:
            await refuse(context, PermissionDenied(refusal))
