"""The configuration schema of every process (worker, controller, gateway), as typed dataclasses
that pydantic validates: a mistake names the file, the key and the reason, and an unknown key is a
mistake. Providers declare their own keys the same way (`ModelConfig.options_as`).

Why pydantic: it is already installed (llama-cpp-python's server extra brings it), its dataclasses
stay dataclasses (`dataclasses.replace` works, so CLI overrides and tests stay plain), and its
errors carry the path of the offending key. Values are strict: a string is never read as a number.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from modelwire.core.addresses import EtcdTarget, check_host_port
from modelwire.core.balance import PolicyName
from modelwire.core.types import Capability

T = TypeVar("T")

# Every section's and every provider's own keys: unknown keys refused, values frozen.
SECTION = ConfigDict(extra="forbid", frozen=True)

# How many worker processes share this machine (`--processes`); set for each of them, so providers
# can share the cores out (llama.cpp's threads spin while they wait).
PROCESSES_ENV = "MODELWIRE_PROCESSES"
MIB = 1024 * 1024

PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Port = Annotated[StrictInt, Field(ge=0, le=65535)]
NonNegative = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
AtLeastOne = Annotated[StrictFloat, Field(ge=1, allow_inf_nan=False)]
Seconds = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]

# What a bearer token may do. A token without `permissions` may call models only. `relay`: the
# server believes the caller identity this token's calls relay (a gateway's token at a worker).
# `read_usage`: the usage admin service (GetUsage, `modelwire usage`).
Permission = Literal["generate", "register", "read_fleet", "relay", "read_usage"]
DEFAULT_PERMISSIONS: tuple[Permission, ...] = ("generate",)

# A caller's name and its tenant (a token's, or relayed by a gateway) are at most this many
# characters, all printable, none blank at either end: they go into every log line and, relayed,
# into metadata.
MAX_IDENTITY_CHARS = 128
# The `tenant` metrics label of a call by a tenant this process has no token of (a relayed one),
# and of a call that authenticated no one (no [auth], an open method, a refused token): no tenant
# may take these names, so a label always means one thing.
OTHER_TENANT = "_other"
NO_TENANT = "_none"


def identity_problem(name: str) -> str | None:
    """Why `name` cannot be a caller's or a tenant's name, or None when it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_IDENTITY_CHARS:
        return f"is longer than {MAX_IDENTITY_CHARS} characters"
    if not name.isprintable():
        return "has a control or other unprintable character"
    if name != name.strip():
        return "has whitespace at either end"
    return None


# cl100k against gemma-3's own tokenizer: prose +8%, JSON +14%, code +20%, German −19%, Chinese
# −38%.
DEFAULT_ESTIMATE_MARGIN = 0.2


class ConfigError(Exception):
    """A configuration mistake: `file: key.path: reason`."""


# ---------------------------------------------------------------------------------------------
# Reading


def parse(
    kind: type[T], data: Mapping[str, Any], source: str, where: str = "", base: Path | None = None
) -> T:
    """Validates `data` as `kind`; the first problem becomes a ConfigError naming source and key.
    `base` is the directory relative file names are read from (the configuration file's)."""
    try:
        return TypeAdapter(kind).validate_python(dict(data), context={"base": base or Path.cwd()})
    except ValidationError as invalid:
        raise ConfigError(_describe(invalid, source, where)) from None


def override(section: T, flag: str, **changes: Any) -> T:
    """`section` with a command-line flag's values, validated as the file's are; a bad value is a
    ConfigError naming the flag."""
    try:
        return dataclasses.replace(section, **changes)  # type: ignore[type-var]
    except ValidationError as invalid:
        raise ConfigError(f"{flag}: {_reason(invalid.errors()[0])}") from None


def _describe(invalid: ValidationError, source: str, where: str) -> str:
    error = invalid.errors()[0]
    key = where
    for part in error["loc"]:
        key = f"{key}[{part}]" if isinstance(part, int) else (f"{key}.{part}" if key else str(part))
    return f"{source}: {key or '(top level)'}: {_reason(error)}"


def _type_name(value: object) -> str:
    return {str: "str", int: "int", float: "float", bool: "bool", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _reason(error: Mapping[str, Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = _type_name(value)
    if kind in ("missing", "missing_argument"):
        return "is required"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return "is not a known key (see docs/configuration.md)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return (
            f"must be a finite number, got {value!r}"
            if kind == "finite_number"
            else f"must be a number, got {got}"
        )
    if kind == "string_type":
        return f"must be a string, got {got}"
    if kind == "bool_type":
        return f"must be true or false, got {got}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return (
            f"must be at least {bound}, got {value}"
            if kind == "greater_than_equal"
            else f"must be more than {bound}, got {value}"
        )
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}, got {value}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {value!r}"
    if kind in ("dataclass_type", "dict_type", "model_type"):
        return f"must be a table, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"must be an array, got {got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def key_pair(key_file: Path | None, info: ValidationInfo) -> Path | None:
    """The key must be a PEM private key of the certificate read as `cert_file`, checked at start:
    gRPC would only say "cannot listen" (a server) or fail every call (a client)."""
    cert_file = info.data.get("cert_file")
    if key_file is None or cert_file is None:
        return key_file
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert_file, key_file, password=b""
        )
    except ssl.SSLError as error:
        raise ValueError(
            f"{key_file} is not the private key of the certificate in {cert_file}, or one of them "
            f"is not PEM ({error.reason or error})"
        ) from None
    return key_file


def ca_bundle(ca_file: Path | None) -> Path | None:
    """A CA bundle must hold PEM certificates."""
    if ca_file is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=ca_file)
        except ssl.SSLError as error:
            raise ValueError(
                f"{ca_file} holds no PEM certificate ({error.reason or error})"
            ) from None
    return ca_file


def existing_file(value: object, info: ValidationInfo) -> Path | None:
    """A file named relative to the configuration file; it must exist at start, not at first use."""
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a string (a file name), got {_type_name(value)}")
    base: Path = (info.context or {}).get("base", Path.cwd())
    path = (base / value).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def set_env(value: str | None) -> str | None:
    """The name of an environment variable that must hold a value (a secret) at start."""
    if value is not None and not os.environ.get(value):
        raise ValueError(f"environment variable {value} is not set or empty")
    return value


# ---------------------------------------------------------------------------------------------
# Sections every process has


@dataclass(config=SECTION)
class ServerConfig:
    host: StrictStr = "127.0.0.1"
    port: Port = 50051
    grace_period_s: NonNegative = 10.0
    # Between NOT_SERVING (and leaving the registry) and refusing new calls, for balancers that
    # poll.
    drain_delay_s: NonNegative = 0.0
    # A listener on a non-loopback address needs [auth], unless this says the network is trusted.
    allow_unauthenticated: StrictBool = False
    max_receive_message_bytes: Annotated[StrictInt, Field(ge=1024)] = 4 * MIB
    keepalive_time_s: AtLeastOne = 60.0
    keepalive_timeout_s: AtLeastOne = 20.0
    max_connection_age_s: AtLeastOne | None = None
    max_connection_age_grace_s: NonNegative = 30.0

    @field_validator("max_connection_age_grace_s")
    @classmethod
    def _grace_needs_age(cls, value: float, info: ValidationInfo) -> float:
        if value != 30.0 and info.data.get("max_connection_age_s") is None:
            raise ValueError("has no effect without max_connection_age_s")
        return value


@dataclass(config=SECTION)
class HttpConfig:
    """`[http]`: the HTTP facades (OpenAI's and Anthropic's APIs, docs/api.md#http-facades) on a
    port of their own, off unless `port` is set. The same rules as the gRPC port: beyond loopback
    only with [auth] or `[server] allow_unauthenticated`; TLS from [tls]; requests bounded by
    `[server] max_receive_message_bytes`."""

    port: Port | None = None
    # None: [server] host.
    host: StrictStr | None = None


@dataclass(config=SECTION)
class WorkerServerConfig(ServerConfig):
    # None: a thread per slot of every blocking model plus COUNTING_THREADS.
    blocking_threads: PositiveInt | None = None
    # Processes sharing the port (SO_REUSEPORT); more than one only when asked for.
    processes: PositiveInt = 1


@dataclass(config=SECTION)
class TokenGrant:
    """One bearer token; `models` None means every model. The token never appears in a repr.
    `name` is the caller's identity; tokens sharing a `tenant` are one tenant (its metrics label,
    and later its limits); a token without one is a tenant of its own, under its name."""

    name: StrictStr
    token: StrictStr = dataclasses.field(repr=False)
    models: frozenset[StrictStr] | None = None
    permissions: frozenset[Permission] = frozenset(DEFAULT_PERMISSIONS)
    tenant: StrictStr | None = None

    @field_validator("name", "tenant")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        problem = identity_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def tenant_name(self) -> str:
        return self.tenant if self.tenant is not None else self.name

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if len(value) < 16:
            raise ValueError("must be at least 16 characters (a guessable token is no protection)")
        return value

    @model_validator(mode="after")
    def _models_for_model_calls(self) -> TokenGrant:
        """An allow-list on a token that may call no model could never take effect."""
        if self.models is not None and "generate" not in self.permissions:
            raise ValueError(
                f'token {self.name!r}: `models` has no effect without the "generate" permission: '
                "remove it, or add the permission"
            )
        if self.tenant_name in (OTHER_TENANT, NO_TENANT):
            raise ValueError(
                f"token {self.name!r}: tenant {self.tenant_name!r} is the metrics label of calls "
                "outside every tenant: give the token another `tenant`"
            )
        if self.tenant_name in (ALL_TENANTS, EACH_TENANT):
            raise ValueError(
                f"token {self.name!r}: tenant {self.tenant_name!r} is what a quota rule says for "
                "every tenant: give the token another `tenant`"
            )
        return self


@dataclass(config=SECTION)
class TokensFile:
    tokens: tuple[TokenGrant, ...] = ()

    @field_validator("tokens")
    @classmethod
    def _distinct(cls, value: tuple[TokenGrant, ...]) -> tuple[TokenGrant, ...]:
        if len({grant.token for grant in value}) != len(value):
            raise ValueError("the same token is listed twice")
        if len({grant.name for grant in value}) != len(value):
            raise ValueError("the same name is given to two tokens (a name is an identity)")
        declared = {grant.tenant: grant.name for grant in value if grant.tenant is not None}
        for grant in value:
            if grant.tenant is None and grant.name in declared:
                # Silently one tenant (and later one budget) with the tokens that declared it.
                raise ValueError(
                    f"token {grant.name!r} has no tenant, and its name is the tenant of token "
                    f"{declared[grant.name]!r}: set its `tenant` (to {grant.name!r} to join it)"
                )
        return value


@dataclass(config=SECTION)
class AuthSection:
    """`[auth]` as written; `AuthConfig` is what it means once the tokens are read."""

    tokens_file: Path | None = None
    tokens_env: StrictStr | None = None
    tokens_env_permissions: frozenset[Permission] = frozenset(DEFAULT_PERMISSIONS)
    protect_health: StrictBool = False
    protect_reflection: StrictBool = False

    _tokens_file = field_validator("tokens_file", mode="before")(existing_file)
    _tokens_env = field_validator("tokens_env")(set_env)


@dataclass(frozen=True)
class AuthConfig:
    grants: tuple[TokenGrant, ...]
    protect_health: bool = False
    protect_reflection: bool = False
    # Where the grants with names of their own came from, for a process to name in its refusals.
    tokens_file: Path | None = None


@dataclass(config=SECTION)
class TlsConfig:
    """A server's certificate; with `client_ca_file`, clients must present one it signed (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    _files = field_validator("cert_file", "key_file", "client_ca_file", mode="before")(
        existing_file
    )
    _pair = field_validator("key_file")(key_pair)
    _ca = field_validator("client_ca_file")(ca_bundle)


@dataclass(config=SECTION)
class ClientTlsConfig:
    """How a client verifies a server (`ca_file`) and, for mTLS, proves itself (`cert_file`,
    `key_file`)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # The name the server's certificate must carry, when it is not the host dialled.
    server_name: StrictStr | None = None

    _files = field_validator("ca_file", "cert_file", "key_file", mode="before")(existing_file)
    _pair = field_validator("key_file")(key_pair)
    _ca = field_validator("ca_file")(ca_bundle)

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together (a client certificate and its key)"
            )


@dataclass(config=SECTION)
class ObservabilityConfig:
    metrics_port: Port | None = None
    metrics_host: StrictStr = "127.0.0.1"
    tracing: StrictBool = False
    otlp_endpoint: StrictStr | None = None
    log_format: Literal["json", "text"] = "json"
    # The share of successful calls whose access line is written (docs/operations.md#access-log);
    # a refused, failed or slow call's always is, and metrics count every call.
    access_log_sample_rate: Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)] = 1.0
    # A call this slow to its answer (unary) or its first message (a stream) is always logged.
    access_log_slow_s: Seconds = 1.0

    @field_validator("otlp_endpoint")
    @classmethod
    def _needs_tracing(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("tracing"):
            raise ValueError("has no effect without tracing = true")
        if value is not None and not _installed(OTLP_EXPORTER):
            raise ValueError(
                "needs the OTLP exporter (the `tracing` extra), which is not installed: from the "
                "checkout, `.venv/bin/pip install -e '.[tracing]'`"
            )
        return value


# What exports spans to `otlp_endpoint` (observe/tracing.py): checked when the configuration is
# read, not after the models have loaded.
OTLP_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@dataclass(config=SECTION)
class RegistryAccess:
    """How this process reaches the fleet's registry: a controller, or etcd directly."""

    controller: StrictStr | None = None
    etcd: StrictStr | None = None
    # A bearer token for the controller, in this environment variable.
    token_env: StrictStr | None = None
    # etcd's own authentication: a user, its password in this environment variable.
    etcd_username: StrictStr | None = None
    etcd_password_env: StrictStr | None = None
    tls: ClientTlsConfig | None = None

    _envs = field_validator("token_env", "etcd_password_env")(set_env)

    @field_validator("controller")
    @classmethod
    def _controller_address(cls, value: str | None) -> str | None:
        if value is not None:
            check_host_port(value)
        return value

    @field_validator("etcd")
    @classmethod
    def _one_registry(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("controller") is not None:
            raise ValueError("set controller or etcd, not both")
        if value is not None:
            EtcdTarget.parse(value)
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.controller or self.etcd)

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env) if self.token_env else None

    @property
    def etcd_password(self) -> str | None:
        return os.environ.get(self.etcd_password_env) if self.etcd_password_env else None


# ---------------------------------------------------------------------------------------------
# The worker


@dataclass(config=SECTION)
class RequestLimits:
    """Bounds on a request's shape, checked before any work (`[limits]`)."""

    max_messages: PositiveInt = 4096
    # Characters over all message contents and names: about 250k tokens of English.
    max_request_chars: PositiveInt = 1 << 20
    max_stop_strings: NonNegativeInt = 16
    max_stop_chars: PositiveInt = 256
    # OpenAI's own bounds.
    max_tools: NonNegativeInt = 128
    max_embed_inputs: PositiveInt = 2048


# A quota rule's `tenant` beyond one tenant's name: each tenant separately, or every caller together
# (a provider account's own limits).
EACH_TENANT = "*"
ALL_TENANTS = "all"
# A rule's `model` for every model together.
ANY_MODEL = "*"
PositiveFloat = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
# Budgets and prices in money: at most what the counters hold exactly (docs/configuration.md#quota).
Money = Annotated[StrictFloat, Field(ge=0, le=1e6, allow_inf_nan=False)]


@dataclass(config=SECTION)
class QuotaRule:
    """One `[[quota.rules]]`: limits on the calls of `tenant` (a name, "*" for each tenant
    separately, "all" for every caller together) to `model` (a name, or "*" for every model
    together). A rule sets at least one limit."""

    tenant: StrictStr
    model: StrictStr = ANY_MODEL
    # The limits of one deployment of `model` (its provider account's own): a call this rule
    # refuses moves on to another deployment or route member instead of being refused.
    deployment: StrictStr | None = None
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    concurrent_calls: PositiveInt | None = None
    budget_per_day: PositiveFloat | None = None
    budget_per_month: PositiveFloat | None = None

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        problem = None if value in (EACH_TENANT, ALL_TENANTS) else identity_problem(value)
        if problem is not None:
            raise ValueError(problem)
        if value in (OTHER_TENANT, NO_TENANT):
            raise ValueError(f"{value!r} is a metrics label, not a tenant")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('must name a model, or be "*" for every model together')
        return value

    @field_validator("budget_per_day", "budget_per_month")
    @classmethod
    def _budget(cls, value: float | None) -> float | None:
        if value is not None and value > 1e6:
            raise ValueError(f"must be at most 1000000 (the counters' exact range), got {value}")
        return value

    @model_validator(mode="after")
    def _limits_something(self) -> QuotaRule:
        if self.deployment is not None and (self.tenant != ALL_TENANTS or self.model == ANY_MODEL):
            raise ValueError(
                "a deployment's limits are its provider account's: give the rule tenant = \"all\" "
                "and the deployment's model"
            )
        if self.deployment is not None and self.concurrent_calls is not None:
            raise ValueError(
                "concurrent_calls of a deployment is its max_concurrency in [[models]]"
            )
        if not self.limits:
            raise ValueError(
                "sets no limit: give it requests_per_minute, tokens_per_minute, "
                "concurrent_calls, budget_per_day or budget_per_month"
            )
        return self

    @property
    def limits(self) -> dict[str, float]:
        """The limits it sets, by key."""
        return {key: value for key in QUOTA_LIMIT_KEYS if (value := getattr(self, key)) is not None}


QUOTA_LIMIT_KEYS = (
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_calls",
    "budget_per_day",
    "budget_per_month",
)


@dataclass(config=SECTION)
class QuotaSection:
    """`[quota]`: tenants' limits and budgets, checked by the worker before a call reaches its
    provider (quota/limiter.py)."""

    # redis:// or rediss:// (docs/configuration.md#quota); absent: counters live in this process.
    store: StrictStr | None = None
    # The store's password, from this environment variable (a URL's own password also works).
    store_password_env: StrictStr | None = None
    # Verifying a rediss:// store: its CA, and a client certificate for mTLS.
    store_tls: ClientTlsConfig | None = None
    # When the store cannot be reached: "refuse" every limited call (UNAVAILABLE naming the store),
    # or "share": each replica enforces 1/replicas of every limit in its own memory.
    on_store_failure: Literal["refuse", "share"] = "refuse"
    # How many worker processes share the store's limits (every process of every worker).
    replicas: PositiveInt | None = None
    # Output tokens reserved for a call that sets no max_new_tokens (its real use is settled after).
    default_output_reservation: PositiveInt = 1024
    # How long a call holds a concurrent-calls place if its worker dies before it ends.
    call_lease_s: Annotated[StrictFloat, Field(ge=10, le=86400, allow_inf_nan=False)] = 900.0
    # How long one round trip to the store may take before it counts as unreachable.
    store_timeout_s: Annotated[StrictFloat, Field(gt=0, le=30, allow_inf_nan=False)] = 0.5
    rules: tuple[QuotaRule, ...] = ()

    _env = field_validator("store_password_env")(set_env)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is not None:
            store_url_problem(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> QuotaSection:
        if self.on_store_failure == "share" and self.replicas is None:
            raise ValueError(
                'on_store_failure = "share" needs `replicas`: the number of worker processes '
                "that share the store's limits (each then enforces its share)"
            )
        if self.store is None and (
            self.store_tls is not None
            or self.store_password_env is not None
            or self.on_store_failure != "refuse"
            or self.replicas is not None
        ):
            raise ValueError(
                "store_tls, store_password_env, on_store_failure and replicas have no effect "
                "without `store`"
            )
        if self.store_tls is not None and not (self.store or "").startswith("rediss://"):
            raise ValueError("store_tls needs a rediss:// store")
        if self.store_tls is not None and self.store_tls.server_name is not None:
            # redis-py checks the certificate against the URL's host only: another name could
            # only switch the check off.
            raise ValueError(
                "store_tls.server_name is not supported: put the name the store's certificate "
                "carries in the store URL (the host dialled is the name checked)"
            )
        return self


def store_url_problem(url: str) -> None:
    """Raises ValueError naming what is wrong with a store URL (never echoing a password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            "must be a redis://HOST:PORT/DB or rediss://HOST:PORT/DB URL "
            f"(got scheme {parts.scheme!r})"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("names no host")
    if port is None:
        raise ValueError("names no port (Redis listens on 6379 by default: say so)")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"database must be a number, got {database!r}")
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment: set TLS and passwords with their own keys")


@dataclass(config=SECTION)
class Prices:
    """A model's prices per million tokens (`price_per_million`), in the currency of the budgets.
    Cached input and cache writes are prompt tokens read from or written to the provider's prompt
    cache; unset, they cost what input costs. At most six decimals: costs are exact integers."""

    input: Money = 0.0
    output: Money = 0.0
    cached_input: Money | None = None
    cache_write: Money | None = None

    @field_validator("input", "output", "cached_input", "cache_write")
    @classmethod
    def _six_decimals(cls, value: float | None) -> float | None:
        if value is not None and round(value, 6) != value:
            raise ValueError(f"has more than six decimals ({value!r}): costs are counted exactly")
        return value


@dataclass(config=SECTION)
class RegistrationConfig:
    """How a worker announces itself in the registry (`[registration]`)."""

    advertise: StrictStr | None = None
    weight: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    labels: dict[StrictStr, StrictStr] = dataclasses.field(default_factory=dict)
    # A loopback advertise address is refused with a remote registry (nobody else can dial it).
    allow_loopback: StrictBool = False


@dataclass(config=SECTION)
class ModelConfig:
    """Keys every model has; the provider's own keys stay in `options`, read by `options_as`."""

    name: StrictStr
    provider: StrictStr
    # Several [[models]] may share a `name` when each names its deployment (an account, a region,
    # a hosted and a local copy): calls to the name go to one of them
    # (docs/configuration.md#deployments-routes-and-breakers).
    deployment: StrictStr | None = None
    # A deployment's share of its model's calls, relative to the others' (`[failover] policy`).
    weight: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    context_length: PositiveInt | None = None
    max_output_tokens: PositiveInt | None = None
    max_concurrency: PositiveInt = 4
    max_queue: NonNegativeInt = 16
    # How far a token count that is not exact may be off, either way, as a fraction (see
    # docs/configuration.md#context-checks-on-estimated-counts).
    estimate_margin: Annotated[StrictFloat, Field(ge=0, lt=1, allow_inf_nan=False)] = (
        DEFAULT_ESTIMATE_MARGIN
    )
    # What the model accepts, replacing its provider's defaults
    # (docs/configuration.md#capabilities).
    capabilities: tuple[Capability, ...] | None = None
    # What its tokens cost (docs/configuration.md#quota); unset: its calls cost nothing.
    price_per_million: Prices | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Where the table came from, so a provider's errors name it: `file` and `models[i]`.
    source: StrictStr = "<defaults>"
    where: StrictStr = "models[0]"
    base: StrictStr = "."

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, value: str | None) -> str | None:
        """It goes into log lines and metrics labels as it is."""
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("must be a printable, non-empty name")
        return value

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capability_names(cls, value: object) -> object:
        if not isinstance(value, (list, tuple)):
            return value
        names = {capability.value: capability for capability in Capability}
        unknown = [item for item in value if not isinstance(item, str) or item not in names]
        if unknown:
            raise ValueError(f"unknown capability {unknown[0]!r}; known: {', '.join(names)}")
        if len(set(value)) != len(value):
            raise ValueError("names a capability twice")
        return tuple(names[item] for item in value)

    def capabilities_within(
        self, default: tuple[Capability, ...], supported: frozenset[Capability]
    ) -> tuple[Capability, ...]:
        """The configured capabilities, or the provider's `default`; a capability the provider
        cannot translate is a configuration error, not a promise ListModels would break."""
        if self.capabilities is None:
            return default
        beyond = [
            capability.value for capability in self.capabilities if capability not in supported
        ]
        if beyond:
            known = ", ".join(
                capability.value for capability in Capability if capability in supported
            )
            raise self.error(
                "capabilities",
                f"provider {self.provider!r} cannot honour {', '.join(beyond)} (it can: {known})",
            )
        return self.capabilities

    def options_as(self, kind: type[T]) -> T:
        """The provider's keys, validated by its own schema; unknown keys are errors."""
        return parse(kind, self.options, self.source, self.where, Path(self.base))

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}.{key}: {reason}")


MODEL_KEYS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) - {
    "options",
    "source",
    "where",
    "base",
}


def model_config(table: Mapping[str, Any], source: str, where: str, base: Path) -> ModelConfig:
    common = {key: value for key, value in table.items() if key in MODEL_KEYS}
    options = {key: value for key, value in table.items() if key not in MODEL_KEYS}
    return parse(
        ModelConfig,
        {**common, "options": options, "source": source, "where": where, "base": str(base)},
        source,
        where,
    )


@dataclass(config=SECTION)
class BreakerConfig:
    """`[failover.breaker]`: when a deployment's circuit opens (worker/breaker.py)."""

    # Upstream failures in a row that open it.
    consecutive_failures: PositiveInt = 5
    # Or this share of the calls that ended within `window_s` failed, once there were `min_calls`.
    failure_rate: Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    min_calls: PositiveInt = 20
    window_s: Seconds = 60.0
    # How long it stays open before one probe call may pass (an upstream's Retry-After, if longer).
    open_s: Seconds = 30.0
    # The longest an upstream's Retry-After keeps it open (a 429 asking for a day is not obeyed).
    max_cooldown_s: Seconds = 300.0


@dataclass(config=SECTION)
class FailoverConfig:
    """`[failover]`: how a model's deployment is picked and when an attempt gives way to the next
    (docs/configuration.md#deployments-routes-and-breakers)."""

    policy: PolicyName = "least_loaded"
    # An attempt's time to its first content (a stream) or to its answer (a unary call) before the
    # call moves on; None: the upstream's own `timeout_s` and the caller's deadline bound it.
    attempt_timeout_s: Seconds | None = None
    breaker: BreakerConfig = dataclasses.field(default_factory=BreakerConfig)


@dataclass(config=SECTION)
class RouteConfig:
    """`[[routes]]`: a name callers use for an ordered list of models, tried in turn."""

    name: StrictStr
    models: tuple[StrictStr, ...]
    # Overrides `[failover] attempt_timeout_s` for this route's attempts.
    attempt_timeout_s: Seconds | None = None

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError("must be a printable, non-empty name")
        return value

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("names no model: a route tries at least one")
        repeated = sorted({model for model in value if value.count(model) > 1})
        if repeated:
            raise ValueError(f"names {repeated[0]!r} twice")
        return value


@dataclass(config=SECTION)
class WorkerFile:
    """A worker's configuration file (`modelwire serve --config`)."""

    server: WorkerServerConfig = dataclasses.field(default_factory=WorkerServerConfig)
    models: tuple[dict[str, Any], ...] = ()
    auth: AuthSection | None = None
    tls: TlsConfig | None = None
    observability: ObservabilityConfig = dataclasses.field(default_factory=ObservabilityConfig)
    limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    quota: QuotaSection = dataclasses.field(default_factory=QuotaSection)
    registry: RegistryAccess = dataclasses.field(default_factory=RegistryAccess)
    registration: RegistrationConfig = dataclasses.field(default_factory=RegistrationConfig)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
    routes: tuple[RouteConfig, ...] = ()
    failover: FailoverConfig = dataclasses.field(default_factory=FailoverConfig)


# ---------------------------------------------------------------------------------------------
# The controller and the gateway


@dataclass(config=SECTION)
class PeerAccess:
    """How a process calls workers (a gateway's calls, health probes): TLS, and its own token."""

    # This process's own bearer token towards workers (and their protected health), from this
    # variable.
    token_env: StrictStr | None = None
    tls: ClientTlsConfig | None = None
    # Send credentials to workers over plaintext, or over TLS verified only by the system's roots.
    allow_unverified_credentials: StrictBool = False

    _env = field_validator("token_env")(set_env)

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env) if self.token_env else None

    @property
    def sends_credentials(self) -> bool:
        return self.token_env is not None

    def __post_init__(self) -> None:
        # Workers are whatever was registered: a credential goes only to a worker whose certificate
        # comes from the operator's own CA, or a registrant could collect it.
        if (
            self.sends_credentials
            and (self.tls is None or self.tls.ca_file is None)
            and not self.allow_unverified_credentials
        ):
            raise ValueError(
                "credentials would go to every registered address unverified (a token holding only "
                "`register` could collect them): set tls.ca_file to the CA of the workers' "
                "certificates, or allow_unverified_credentials = true on a network where every "
                "registrant is trusted"
            )


@dataclass(config=SECTION)
class ControllerSection:
    """`[controller]`: how the controller keeps its fleet."""

    ttl_s: Annotated[StrictFloat, Field(ge=1, le=3600, allow_inf_nan=False)] = 15.0
    # Follow each instance's health Watch (so a draining or killed worker leaves at once).
    probe_health: StrictBool = True
    # Registered addresses on loopback, link-local or unix sockets are refused unless allowed:
    # true for a fleet on one machine (the default when the controller listens on loopback).
    allow_private_addresses: StrictBool | None = None
    max_weight: Annotated[StrictInt, Field(ge=1)] = 100
    # How the health prober reaches workers (TLS, a token for protected health).
    workers: PeerAccess = dataclasses.field(default_factory=PeerAccess)


@dataclass(config=SECTION)
class ControllerFile:
    server: ServerConfig = dataclasses.field(default_factory=lambda: ServerConfig(port=50050))
    auth: AuthSection | None = None
    tls: TlsConfig | None = None
    observability: ObservabilityConfig = dataclasses.field(default_factory=ObservabilityConfig)
    # The backing store: etcd (with its credentials), or memory when not set.
    registry: RegistryAccess = dataclasses.field(default_factory=RegistryAccess)
    controller: ControllerSection = dataclasses.field(default_factory=ControllerSection)


@dataclass(config=SECTION)
class WorkerAccess(PeerAccess):
    """`[gateway.workers]`: how the gateway calls workers and their health service."""

    # Pass each caller's `authorization` on to the worker instead (and then no token of our own).
    forward_authorization: StrictBool = False

    @property
    def sends_credentials(self) -> bool:
        return self.token_env is not None or self.forward_authorization

    @field_validator("forward_authorization")
    @classmethod
    def _one_credential(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("token_env") is not None:
            raise ValueError(
                "forwarding callers' credentials and sending our own token exclude each other"
            )
        return value


@dataclass(config=SECTION)
class GatewaySection:
    workers: WorkerAccess = dataclasses.field(default_factory=WorkerAccess)
    # A worker that has no connection within this is skipped for the call (another one is tried).
    connect_timeout_s: Annotated[StrictFloat, Field(gt=0, le=60, allow_inf_nan=False)] = 2.0
    keepalive_time_s: Annotated[StrictFloat, Field(ge=1, allow_inf_nan=False)] = 10.0
    keepalive_timeout_s: Annotated[StrictFloat, Field(ge=1, allow_inf_nan=False)] = 5.0
    # Retries may add at most this share of calls (after a burst of 10), so a sick fleet is not
    # hammered by its own gateway.
    retry_budget_ratio: Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)] = 0.2
    # A model served within this long answers UNAVAILABLE (retry), not NOT_FOUND, while it has no
    # instance.
    recently_served_s: NonNegative = 300.0
    # For this long after each snapshot of the instance table (a start, a registry restart), a model
    # nobody serves answers UNAVAILABLE too: workers re-register within one heartbeat interval.
    settle_s: NonNegative = 10.0
    # How one instance of a model is picked (core/balance.py).
    policy: PolicyName = "least_loaded"


@dataclass(config=SECTION)
class GatewayFile:
    server: ServerConfig = dataclasses.field(default_factory=lambda: ServerConfig(port=50052))
    auth: AuthSection | None = None
    tls: TlsConfig | None = None
    observability: ObservabilityConfig = dataclasses.field(default_factory=ObservabilityConfig)
    registry: RegistryAccess = dataclasses.field(default_factory=RegistryAccess)
    gateway: GatewaySection = dataclasses.field(default_factory=GatewaySection)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
