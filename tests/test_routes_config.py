"""Deployments, routes, failover and the gateway's policy as configured (app/config.py,
core/settings.py): what is accepted, and each mistake refused naming the file, the key and the
reason. Then quota rules over one deployment: which counters a call to a deployment is checked
against (quota/counters.py), and the limiter telling a deployment's own limit (AccountLimited: the
call moves on) from a tenant's or the model's (QuotaExceeded: the caller is refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwire.app.config import load_config, load_gateway_config
from modelwire.core.errors import AccountLimited, QuotaExceeded
from modelwire.core.settings import ConfigError, Prices, QuotaRule, QuotaSection
from modelwire.core.types import Usage
from modelwire.quota.counters import call_counters
from modelwire.quota.limiter import Limiter
from modelwire.quota.store import MemoryStore


def write(tmp_path: Path, text: str, name: str = "modelwire.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model(name: str, deployment: str | None = None, extra: str = "") -> str:
    """One [[models]] table of the echo provider (no upstream, nothing to load)."""
    table = f'[[models]]\nname = "{name}"\nprovider = "echo"\n'
    if deployment is not None:
        table += f'deployment = "{deployment}"\n'
    return table + extra


# Two deployments of "a" and one model "b": what the route and quota cases are written over.
SERVED = model("a", "east") + model("a", "west") + model("b")


# ---------------------------------------------------------------------------------------------
# Accepted


def test_deployments_of_one_name_load_with_their_weights_and_one_price(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            model("a", "east", "weight = 3\n")
            + model("a", "west", "weight = 1000\nprice_per_million = { input = 1.5, output = 2 }\n")
            + model("b", extra="weight = 1\n"),
        )
    )
    assert [(m.name, m.deployment, m.weight) for m in config.models] == [
        ("a", "east", 3),
        ("a", "west", 1000),
        ("b", None, 1),
    ]
    # One table gave the price, the other left it out: the model's calls are priced one way.
    assert config.prices() == {"a": Prices(input=1.5, output=2.0), "b": None}


def test_deployments_may_repeat_the_same_price(tmp_path: Path) -> None:
    price = "price_per_million = { input = 1.0, output = 4.0 }\n"
    config = load_config(write(tmp_path, model("a", "east", price) + model("a", "west", price)))
    assert config.prices() == {"a": Prices(input=1.0, output=4.0)}


def test_a_single_table_may_name_its_deployment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, model("a", "only")))
    assert [(m.name, m.deployment) for m in config.models] == [("a", "only")]


def test_routes_and_failover_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            SERVED
            + '[[routes]]\nname = "fast"\nmodels = ["b", "a"]\nattempt_timeout_s = 2.5\n'
            + '[[routes]]\nname = "solo"\nmodels = ["a"]\n'
            + '[failover]\npolicy = "fixed_order"\nattempt_timeout_s = 7\n'
            + "[failover.breaker]\nconsecutive_failures = 3\nfailure_rate = 1.0\nmin_calls = 8\n"
            + "window_s = 12.5\nopen_s = 4\n",
        )
    )
    assert [(r.name, r.models, r.attempt_timeout_s) for r in config.routes] == [
        ("fast", ("b", "a"), 2.5),
        ("solo", ("a",), None),
    ]
    assert (config.failover.policy, config.failover.attempt_timeout_s) == ("fixed_order", 7)
    breaker = config.failover.breaker
    assert (
        breaker.consecutive_failures,
        breaker.failure_rate,
        breaker.min_calls,
        breaker.window_s,
        breaker.open_s,
    ) == (3, 1.0, 8, 12.5, 4)


def test_failover_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, model("a")))
    assert config.routes == ()
    assert (config.failover.policy, config.failover.attempt_timeout_s) == ("least_loaded", None)
    breaker = config.failover.breaker
    assert (
        breaker.consecutive_failures,
        breaker.failure_rate,
        breaker.min_calls,
        breaker.window_s,
        breaker.open_s,
    ) == (5, 0.5, 20, 60.0, 30.0)


@pytest.mark.parametrize("policy", ["least_loaded", "weighted", "fixed_order"])
def test_every_failover_policy_is_accepted(tmp_path: Path, policy: str) -> None:
    config = load_config(write(tmp_path, model("a") + f'[failover]\npolicy = "{policy}"\n'))
    assert config.failover.policy == policy


def test_a_quota_rule_may_limit_one_configured_deployment(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nmodel = "a"\ndeployment = "west"\n'
            + "requests_per_minute = 60\ntokens_per_minute = 1000\nbudget_per_day = 5.0\n",
        )
    )
    [rule] = config.quota.rules
    assert (rule.tenant, rule.model, rule.deployment) == ("all", "a", "west")
    assert rule.limits == {
        "requests_per_minute": 60,
        "tokens_per_minute": 1000,
        "budget_per_day": 5.0,
    }


# ---------------------------------------------------------------------------------------------
# Refused: the file, the key path, the reason


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        # Several tables of one name: each names its deployment, no two the same, one price.
        pytest.param(
            model("a") + model("a"),
            "models[0].deployment",
            "model name 'a' is configured 2 times: give each table a `deployment` name of its own",
            id="shared-name-without-deployment",
        ),
        pytest.param(
            model("a", "east") + model("a") + model("a", "west"),
            "models[1].deployment",
            "model name 'a' is configured 3 times",
            id="one-of-three-without-deployment",
        ),
        pytest.param(
            model("a", "east") + model("a", "east"),
            "models[0].deployment",
            "model 'a' has two deployments named 'east'",
            id="deployment-named-twice",
        ),
        pytest.param(
            model("a", "east", "price_per_million = { input = 1.0 }\n")
            + model("a", "west", "price_per_million = { input = 2.0 }\n"),
            "models[1].price_per_million",
            "differs from models[0]'s: the deployments of 'a' are priced once (the others may "
            "leave the prices out)",
            id="different-prices",
        ),
        pytest.param(
            model("a", "east", "weight = 0\n"),
            "models[0].weight",
            "must be at least 1, got 0",
            id="weight-0",
        ),
        pytest.param(
            model("b") + model("a", "east", "weight = 1001\n"),
            "models[1].weight",
            "must be at most 1000, got 1001",
            id="weight-1001",
        ),
        pytest.param(
            model("a", "east", 'weight = "2"\n'),
            "models[0].weight",
            "must be an integer, got str",
            id="weight-string",
        ),
        pytest.param(
            model("a", "east\\u0007"),
            "models[0].deployment",
            "must be a printable, non-empty name",
            id="deployment-unprintable",
        ),
        pytest.param(
            model("a", " "),
            "models[0].deployment",
            "must be a printable, non-empty name",
            id="deployment-blank",
        ),
        # Routes: a name of their own, members that are models served here.
        pytest.param(
            SERVED + '[[routes]]\nname = "a"\nmodels = ["b"]\n',
            "routes[0].name",
            "'a' is a model's name",
            id="route-named-as-a-model",
        ),
        pytest.param(
            SERVED
            + '[[routes]]\nname = "r"\nmodels = ["a"]\n'
            + '[[routes]]\nname = "r"\nmodels = ["b"]\n',
            "routes[1].name",
            "route 'r' is configured twice",
            id="route-named-twice",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = ["a", "nope"]\n',
            "routes[0].models[1]",
            "'nope' is not a model served here (served: a, b); a route's members are models, "
            "not routes",
            id="route-member-not-served",
        ),
        pytest.param(
            SERVED
            + '[[routes]]\nname = "r1"\nmodels = ["a"]\n'
            + '[[routes]]\nname = "r2"\nmodels = ["b", "r1"]\n',
            "routes[1].models[1]",
            "'r1' is not a model served here (served: a, b); a route's members are models, "
            "not routes",
            id="route-member-is-a-route",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = ["east"]\n',
            "routes[0].models[0]",
            "'east' is not a model served here",
            id="route-member-is-a-deployment",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = []\n',
            "routes[0].models",
            "names no model: a route tries at least one",
            id="route-without-members",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\n',
            "routes[0].models",
            "is required",
            id="route-members-missing",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = ["a", "b", "a"]\n',
            "routes[0].models",
            "names 'a' twice",
            id="route-member-repeated",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = ["a"]\nattempt_timeout_s = 0\n',
            "routes[0].attempt_timeout_s",
            "must be more than 0",
            id="route-attempt-timeout-0",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = " "\nmodels = ["a"]\n',
            "routes[0].name",
            "must be a printable, non-empty name",
            id="route-name-blank",
        ),
        pytest.param(
            SERVED + '[[routes]]\nname = "r"\nmodels = ["a"]\nweight = 2\n',
            "routes[0].weight",
            "is not a known key",
            id="route-unknown-key",
        ),
        # [failover] and its breaker.
        pytest.param(
            '[failover]\npolicy = "random"\n',
            "failover.policy",
            "must be one of 'least_loaded', 'weighted' or 'fixed_order', got 'random'",
            id="failover-policy",
        ),
        pytest.param(
            "[failover]\nattempt_timeout_s = 0\n",
            "failover.attempt_timeout_s",
            "must be more than 0",
            id="failover-attempt-timeout-0",
        ),
        pytest.param(
            "[failover.breaker]\nconsecutive_failures = 0\n",
            "failover.breaker.consecutive_failures",
            "must be at least 1, got 0",
            id="breaker-consecutive-0",
        ),
        pytest.param(
            "[failover.breaker]\nfailure_rate = 0\n",
            "failover.breaker.failure_rate",
            "must be more than 0",
            id="breaker-rate-0",
        ),
        pytest.param(
            "[failover.breaker]\nfailure_rate = 1.5\n",
            "failover.breaker.failure_rate",
            "must be at most 1.0, got 1.5",
            id="breaker-rate-above-1",
        ),
        pytest.param(
            "[failover.breaker]\nmin_calls = 0\n",
            "failover.breaker.min_calls",
            "must be at least 1, got 0",
            id="breaker-min-calls-0",
        ),
        pytest.param(
            "[failover.breaker]\nwindow_s = 0\n",
            "failover.breaker.window_s",
            "must be more than 0",
            id="breaker-window-0",
        ),
        pytest.param(
            "[failover.breaker]\nopen_s = -1\n",
            "failover.breaker.open_s",
            "must be more than 0",
            id="breaker-open-negative",
        ),
        pytest.param(
            "[failover.breaker]\nhalf_open_calls = 2\n",
            "failover.breaker.half_open_calls",
            "is not a known key",
            id="breaker-unknown-key",
        ),
        # Quota rules naming a deployment.
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "*"\nmodel = "a"\ndeployment = "east"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[0]",
            "a deployment's limits are its provider account's: give the rule tenant = \"all\" and "
            "the deployment's model",
            id="quota-deployment-each-tenant",
        ),
        pytest.param(
            "[auth]\ntokens_env = 'MODELWIRE_TEST_ROUTES_TOKENS'\n"
            + SERVED
            + '[[quota.rules]]\ntenant = "team-a"\nmodel = "a"\ndeployment = "east"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[0]",
            "a deployment's limits are its provider account's",
            id="quota-deployment-one-tenant",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\ndeployment = "east"\nrequests_per_minute = 1\n',
            "quota.rules[0]",
            "a deployment's limits are its provider account's",
            id="quota-deployment-every-model",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nmodel = "a"\ndeployment = "east"\n'
            + "requests_per_minute = 1\nconcurrent_calls = 2\n",
            "quota.rules[0]",
            "concurrent_calls of a deployment is its max_concurrency in [[models]]",
            id="quota-deployment-concurrent-calls",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nmodel = "a"\ndeployment = "north"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[0].deployment",
            "model 'a' has no deployment 'north' here",
            id="quota-deployment-not-configured",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nrequests_per_minute = 5\n'
            + '[[quota.rules]]\ntenant = "all"\nmodel = "b"\ndeployment = "east"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[1].deployment",
            "model 'b' has no deployment 'east' here",
            id="quota-deployment-of-another-model",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nmodel = "b"\ndeployment = "b"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[0].deployment",
            "model 'b' has no deployment 'b' here",
            id="quota-deployment-of-a-model-without-deployments",
        ),
        pytest.param(
            SERVED
            + '[[quota.rules]]\ntenant = "all"\nmodel = "zz"\ndeployment = "east"\n'
            + "requests_per_minute = 1\n",
            "quota.rules[0].deployment",
            "model 'zz' has no deployment 'east' here",
            id="quota-deployment-of-an-unknown-model",
        ),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str, reason: str
) -> None:
    monkeypatch.setenv("MODELWIRE_TEST_ROUTES_TOKENS", "t" * 32)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message.removeprefix(f"{path}: {key}: "), message


# ---------------------------------------------------------------------------------------------
# The gateway's policy


@pytest.mark.parametrize("policy", ["least_loaded", "weighted", "fixed_order"])
def test_the_gateway_reads_its_policy(tmp_path: Path, policy: str) -> None:
    config = load_gateway_config(write(tmp_path, f'[gateway]\npolicy = "{policy}"\n'))
    assert config.gateway.policy == policy


def test_the_gateway_policy_defaults_to_least_loaded(tmp_path: Path) -> None:
    assert load_gateway_config(write(tmp_path, "[gateway]\n")).gateway.policy == "least_loaded"
    assert load_gateway_config(write(tmp_path, "")).gateway.policy == "least_loaded"


def test_an_unknown_gateway_policy_is_refused_naming_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\npolicy = "round_robin"\n', "gateway.toml")
    with pytest.raises(ConfigError) as refused:
        load_gateway_config(path)
    assert str(refused.value) == (
        f"{path}: gateway.policy: must be one of 'least_loaded', 'weighted' or 'fixed_order', "
        "got 'round_robin'"
    )


# ---------------------------------------------------------------------------------------------
# Counters of a call to a deployment

EAST = QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=2)
MODEL_WIDE = QuotaRule(tenant="all", model="a", requests_per_minute=10)
TENANT = QuotaRule(tenant="team-a", requests_per_minute=5)
RULES = (EAST, MODEL_WIDE, TENANT)


def test_a_deployment_rule_counts_only_calls_to_its_deployment() -> None:
    east = call_counters(RULES, "team-a", "a", "east")
    assert [(c.rule, c.deployment, c.limit) for c in east] == [
        (0, "east", 2),
        (1, None, 10),
        (2, None, 5),
    ]
    assert len({c.key for c in east}) == 3  # three counters, none shared
    west = call_counters(RULES, "team-a", "a", "west")
    assert [(c.rule, c.deployment) for c in west] == [(1, None), (2, None)]
    unnamed = call_counters(RULES, "team-a", "a")
    assert [(c.rule, c.deployment) for c in unnamed] == [(1, None), (2, None)]
    # The model-wide and the tenant's counters are the same whichever deployment answers.
    assert [c.key for c in east[1:]] == [c.key for c in west] == [c.key for c in unnamed]
    # Another model's deployment of the same name is not counted by the rule.
    assert [c.rule for c in call_counters(RULES, "team-a", "b", "east")] == [2]


def test_each_deployment_has_counters_of_its_own() -> None:
    west_rule = QuotaRule(tenant="all", model="a", deployment="west", requests_per_minute=2)
    [east] = call_counters((EAST, west_rule), None, "a", "east")
    [west] = call_counters((EAST, west_rule), None, "a", "west")
    assert (east.rule, east.deployment) == (0, "east")
    assert (west.rule, west.deployment) == (1, "west")
    assert east.key != west.key
    # A model named like a model and its deployment together is still another subject.
    [lookalike] = call_counters(
        (QuotaRule(tenant="all", model="a@east", requests_per_minute=2),), None, "a@east"
    )
    assert lookalike.key != east.key


def test_two_rules_over_one_deployment_share_a_counter_and_the_tighter_wins() -> None:
    looser = QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=9)
    [counter] = call_counters((looser, EAST), None, "a", "east")
    assert (counter.rule, counter.limit, counter.deployment) == (1, 2, "east")


# ---------------------------------------------------------------------------------------------
# The limiter: a deployment's limit moves the call on, a tenant's or the model's refuses it

# Inside one minute on a clock that stays put: no window starts again mid-test.
STILL = 1_700_000_040.0


def limiter(*rules: QuotaRule) -> Limiter:
    return Limiter(QuotaSection(rules=rules), {}, MemoryStore(clock=lambda: STILL))


async def reserve(subject: Limiter, deployment: str | None, tokens: int = 10) -> None:
    await subject.reserve("team-a", "a", tokens, Usage(tokens, 0), deployment)


async def test_only_a_full_deployment_rule_refuses_with_account_limited() -> None:
    subject = limiter(
        QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=1),
        QuotaRule(tenant="team-a", requests_per_minute=100),
        QuotaRule(tenant="all", model="a", requests_per_minute=100),
    )
    await reserve(subject, "east")
    with pytest.raises(AccountLimited) as refused:
        await reserve(subject, "east")
    assert isinstance(refused.value, QuotaExceeded)
    [violation] = refused.value.violations
    assert (violation.rule, violation.tenant, violation.model, violation.deployment) == (
        0,
        "all",
        "a",
        "east",
    )
    assert (violation.limit_name, violation.limit) == ("requests_per_minute", 1)
    assert "deployment 'east'" in str(refused.value)
    assert refused.value.retry_after_s is not None
    # The other deployment, and the model called without one, still have room.
    await reserve(subject, "west")
    await reserve(subject, None)


async def test_a_call_alone_over_a_deployment_limit_is_account_limited_without_a_retry() -> None:
    subject = limiter(
        QuotaRule(tenant="all", model="a", deployment="east", tokens_per_minute=50),
        QuotaRule(tenant="team-a", tokens_per_minute=1000),
    )
    with pytest.raises(AccountLimited) as refused:
        await reserve(subject, "east", tokens=100)
    assert refused.value.retry_after_s is None
    assert refused.value.violations[0].deployment == "east"
    await reserve(subject, "west", tokens=100)


async def test_a_full_tenant_rule_refuses_with_quota_exceeded_even_with_the_deployment_full() -> (
    None
):
    subject = limiter(
        QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=1),
        QuotaRule(tenant="team-a", requests_per_minute=1),
    )
    await reserve(subject, "east")
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(subject, "east")
    assert type(refused.value) is QuotaExceeded  # not AccountLimited: moving on cannot help
    assert [(v.rule, v.deployment) for v in refused.value.violations] == [(0, "east"), (1, None)]
    assert refused.value.violations[0].deployment == "east"
    with pytest.raises(QuotaExceeded) as elsewhere:
        await reserve(subject, "west")
    assert type(elsewhere.value) is QuotaExceeded
    assert [(v.rule, v.deployment) for v in elsewhere.value.violations] == [(1, None)]


async def test_a_full_tenant_rule_alone_refuses_with_quota_exceeded() -> None:
    subject = limiter(
        QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=100),
        QuotaRule(tenant="team-a", requests_per_minute=1),
    )
    await reserve(subject, "east")
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(subject, "east")
    assert type(refused.value) is QuotaExceeded
    assert [(v.rule, v.tenant, v.deployment) for v in refused.value.violations] == [
        (1, "team-a", None)
    ]


async def test_a_full_model_wide_rule_refuses_with_quota_exceeded() -> None:
    subject = limiter(
        QuotaRule(tenant="all", model="a", deployment="east", requests_per_minute=1),
        QuotaRule(tenant="all", model="a", requests_per_minute=1),
    )
    await reserve(subject, "east")
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(subject, "east")
    assert type(refused.value) is QuotaExceeded
    assert [(v.rule, v.deployment) for v in refused.value.violations] == [(0, "east"), (1, None)]
