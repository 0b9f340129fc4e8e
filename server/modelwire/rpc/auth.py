"""Static bearer tokens in `authorization` metadata, compared in constant time. Each token has a
name (the caller's identity: `caller_identity()` during the call), permissions (calling models,
registering instances, reading the fleet; each method needs one) and an optional model allow-list
(`model_refusal()` during the call). Health and reflection stay open unless configured otherwise.

Who called (`call_identity()`, and the call's record: its access line and metrics label) is the
token's name and tenant, or, for a token with the `relay` permission (a gateway's), the caller and
tenant its call relays in CALLER_KEY and TENANT_KEY. A relayed identity from any other token, or
at a server without [auth], is refused PERMISSION_DENIED at every server (worker, gateway,
controller): a client that sends one is hostile or a relay without the permission, and either
should hear it. Open methods (health, reflection) need no identity and ignore one. The relayed value
is a network peer's text: one of each key at most, percent-encoded UTF-8 in canonical form, and its
decoded name held to the tokens file's rules (`identity_problem`), or the call is refused."""

from __future__ import annotations

import hmac
import string
import urllib.parse
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from modelwire.core.errors import FieldViolation, InvalidRequest, ModelwireError, PermissionDenied
from modelwire.core.settings import (
    ALL_TENANTS,
    EACH_TENANT,
    MAX_IDENTITY_CHARS,
    NO_TENANT,
    OTHER_TENANT,
    AuthConfig,
    Permission,
    TokenGrant,
    identity_problem,
)
from modelwire.observe.call_record import current_call
from modelwire.rpc.status import refuse
from modelwire.rpc.wire import CALLER_KEY, TENANT_KEY, USAGE_SERVICE, WORKER_SERVICE, Metadata

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_UNAUTHENTICATED = "missing or invalid bearer token: send metadata `authorization: Bearer <token>`"
_UNAUTHENTICATED_HTTP = (
    "missing or invalid API key: send the header `Authorization: Bearer <token>` or "
    "`x-api-key: <token>`"
)


def bearer_token(authorization: str) -> str:
    """The token of an `authorization` value `Bearer <token>` (any case); "" for anything else."""
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


class Unauthenticated(ModelwireError):
    """No valid bearer token. Raised only here, before a method runs, so never an error kind of
    the call's record (core/errors.py lists those); a registry client maps a controller's answer
    to it (fleet/remote.py)."""

    code: ClassVar[str] = "UNAUTHENTICATED"


_caller: ContextVar[TokenGrant | None] = ContextVar("modelwire_caller", default=None)

# What passes unencoded on the wire: printable ASCII but `%`. Every other character is its UTF-8
# bytes as %XX, so a name of MAX_IDENTITY_CHARS characters takes at most this many on the wire.
_PLAIN = "".join(c for c in string.printable if c.isprintable() and c != "%")
_MAX_ENCODED_CHARS = MAX_IDENTITY_CHARS * 4 * 3


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the current call is for: `relayed_by` names the relay token that said so, if one did."""

    caller: str
    tenant: str
    relayed_by: str | None = None


_identity: ContextVar[Identity | None] = ContextVar("modelwire_identity", default=None)


def call_identity() -> Identity | None:
    """Who the current call is for; None without [auth] (or before authentication)."""
    return _identity.get()


def relayed_metadata(identity: Identity) -> Metadata:
    """`identity` as a relay sends it on."""
    return (
        (CALLER_KEY, urllib.parse.quote(identity.caller, safe=_PLAIN)),
        (TENANT_KEY, urllib.parse.quote(identity.tenant, safe=_PLAIN)),
    )


def _decoded(key: str, value: str | bytes) -> str:
    """A relayed name as sent, checked: a malformed one is the relay's bug, refused by name."""
    problem = None
    name = ""
    if not isinstance(value, str) or len(value) > _MAX_ENCODED_CHARS:
        problem = "is not a text value of at most the encoded length of a name"
    else:
        try:
            name = urllib.parse.unquote(value, errors="strict")
        except UnicodeDecodeError:
            problem = "is not percent-encoded UTF-8"
        else:
            if urllib.parse.quote(name, safe=_PLAIN) != value:
                problem = (
                    "is not in canonical percent-encoding "
                    "(only `%` and non-printable-ASCII encoded)"
                )
            else:
                problem = identity_problem(name)
    if problem is not None:
        raise InvalidRequest([FieldViolation(f"metadata {key}", problem)])
    return name


def relayed_claim(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, str] | None:
    """The caller and tenant `metadata` relays (the tenant defaults to the caller, as a token's
    does), or None when it relays none. InvalidRequest: a key repeated (which one would be meant?),
    a tenant without a caller, or a value that is not a name."""
    values: dict[str, list[str | bytes]] = {}
    for key, value in metadata or ():
        if key in (CALLER_KEY, TENANT_KEY):
            values.setdefault(key, []).append(value)
    if not values:
        return None
    for key, sent in values.items():
        if len(sent) > 1:
            raise InvalidRequest(
                [FieldViolation(f"metadata {key}", f"is sent {len(sent)} times; send it once")]
            )
    if CALLER_KEY not in values:
        raise InvalidRequest(
            [FieldViolation(f"metadata {TENANT_KEY}", f"is relayed without {CALLER_KEY}")]
        )
    caller = _decoded(CALLER_KEY, values[CALLER_KEY][0])
    tenant = _decoded(TENANT_KEY, values[TENANT_KEY][0]) if TENANT_KEY in values else caller
    if tenant in (OTHER_TENANT, NO_TENANT):
        reserved = f"is {tenant!r}, the metrics label of calls outside every tenant"
        raise InvalidRequest([FieldViolation(f"metadata {TENANT_KEY}", reserved)])
    if tenant in (ALL_TENANTS, EACH_TENANT):
        reserved = f"is {tenant!r}, what a quota rule says for every tenant"
        raise InvalidRequest([FieldViolation(f"metadata {TENANT_KEY}", reserved)])
    return caller, tenant


def forged_identity(holder: str | None) -> PermissionDenied:
    """The refusal of a relayed identity from a caller who may not relay one."""
    who = (
        f"token {holder!r} lacks"
        if holder is not None
        else "this server has no [auth], so no caller has"
    )
    return PermissionDenied(
        f"{who} the 'relay' permission that relaying a caller's identity ({CALLER_KEY}, "
        f"{TENANT_KEY}) needs; only a gateway's token is given it"
    )


def claims_identity(metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
    return any(key in (CALLER_KEY, TENANT_KEY) for key, _value in metadata or ())


def is_open_by_nature(method: str) -> bool:
    """Health and reflection: no identity is needed to answer them, so none is checked."""
    return method.startswith((HEALTH_PREFIX, *REFLECTION_PREFIXES))


def model_calls(method: str) -> Permission | None:
    """What a ModelWorker server's (a worker's, a gateway's) methods need: `generate`, each."""
    return "generate" if method.startswith(f"/{WORKER_SERVICE}/") else None


def worker_calls(method: str) -> Permission | None:
    """What a worker's methods need: `generate` for ModelWorker's, `read_usage` for UsageAdmin's
    (what tenants have used is not a caller's to read: a model token does not reach it)."""
    if method.startswith(f"/{USAGE_SERVICE}/"):
        return "read_usage"
    return model_calls(method)


def caller_identity() -> str | None:
    """The name of the token the current call authenticated with; None without [auth]."""
    grant = _caller.get()
    return grant.name if grant is not None else None


def caller_token() -> str | None:
    """The token the current call authenticated with (a gateway's HTTP facade passes it on when
    `[gateway.workers] forward_authorization` says so); None without [auth]."""
    grant = _caller.get()
    return grant.token if grant is not None else None


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
        self,
        config: AuthConfig,
        permission_of: Callable[[str], Permission | None],
    ) -> None:
        """`permission_of(method)` is what a method needs (None: any valid token)."""
        self._config = config
        self._permission_of = permission_of
        self._named: frozenset[str] = frozenset()
        self.replace_grants(config)

    def replace_grants(self, config: AuthConfig) -> None:
        """SIGHUP (app/reload.py): `config`'s tokens (and so its tenants, the metrics labels)
        replace the running ones in one assignment, from the next call on."""
        self._grants, self._tenants = (
            [(grant, grant.token.encode()) for grant in config.grants],
            frozenset(grant.tenant_name for grant in config.grants),
        )

    def name_tenants(self, tenants: frozenset[str] | set[str]) -> None:
        """Tenants this process knows beyond its tokens' (the worker's quota rules name them), so
        relayed calls of theirs get a label of their own."""
        self._named = frozenset(tenants)

    def tenants(self) -> frozenset[str]:
        """The tenants of the running tokens (a reload's from the next call on)."""
        return self._tenants

    def tenant_label(self, tenant: str) -> str:
        """`tenant` as a metrics label: bounded by the tokens file and the quota rules whatever a
        relay sends."""
        return tenant if tenant in self._tenants or tenant in self._named else OTHER_TENANT

    def protects(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return self._config.protect_health
        if method.startswith(REFLECTION_PREFIXES):
            return self._config.protect_reflection
        return True

    def _grant(self, context: grpc.aio.ServicerContext) -> TokenGrant | None:
        presented = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                presented = bearer_token(value)
        return self._grant_of(presented)

    def _grant_of(self, presented: str) -> TokenGrant | None:
        found = None
        given = presented.encode()
        for grant, token in self._grants:  # every token is compared, so timing reveals nothing
            if hmac.compare_digest(given, token) and given:
                found = grant
        return found

    def admit(self, presented: str, needed: Permission) -> None:
        """An HTTP facade call's check (facade/server.py), as `check` is a gRPC call's, raising its
        refusal: a valid token with the `needed` permission, whose name and tenant are then the
        call's identity. HTTP callers relay no identity: only a gateway's gRPC calls do."""
        grant = self._grant_of(presented)
        if grant is None:
            raise Unauthenticated(_UNAUTHENTICATED_HTTP)
        self._identify(Identity(grant.name, grant.tenant_name))
        if needed not in grant.permissions:
            raise PermissionDenied(f"token {grant.name!r} lacks the {needed!r} permission")
        _caller.set(grant)

    async def check(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Aborts a call without a valid token, the method's permission, or (for a request that
        names one) a model the token may use; otherwise the token's name is the caller's
        identity."""
        grant = self._grant(context)
        if grant is None:
            await refuse(context, Unauthenticated(_UNAUTHENTICATED))
            return
        # The token is known: every refusal from here on is logged under its name.
        self._identify(Identity(grant.name, grant.tenant_name))
        needed = self._permission_of(method)
        if needed is not None and needed not in grant.permissions:
            lacks = f"token {grant.name!r} lacks the {needed!r} permission that {method} needs"
            await refuse(context, PermissionDenied(lacks))
        # The behavior runs in this task after the check: the token's name and models reach it.
        _caller.set(grant)
        if "relay" in grant.permissions:
            try:
                claim = relayed_claim(context.invocation_metadata())
            except InvalidRequest as malformed:
                await refuse(context, malformed)
                return
            if claim is not None:
                self._identify(Identity(*claim, relayed_by=grant.name))
        elif claims_identity(context.invocation_metadata()):
            await refuse(context, forged_identity(grant.name))
        # Only a model call's request names the model it uses (a gateway's is bytes: it checks the
        # model it routes on itself).
        refusal = model_refusal(getattr(request, "model", "")) if needed == "generate" else None
        if refusal is not None:
            await refuse(context, PermissionDenied(refusal))

    def _identify(self, identity: Identity) -> None:
        _identity.set(identity)
        record = current_call()
        if record is not None:
            record.caller, record.tenant = identity.caller, identity.tenant
            record.relayed_by = identity.relayed_by
            record.tenant_label = self.tenant_label(identity.tenant)
