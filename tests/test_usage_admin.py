"""UsageAdmin.GetUsage at a worker with [quota] rules, and `modelwire usage`: a tenant's counters
after its calls (requests, spend equal to the access lines' costs, when each window resets), the
tenant filter, the `read_usage` permission apart from `generate` both ways, a store that cannot be
reached, and the command line as a real process (its text, its JSON, its errors)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli_process import run_cli
from conftest import running_worker
from fake_upstream import load_toml_config
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.v1 import usage_pb2

CALLER = "alice-token-0123456789abcdef"
OTHER = "bob-token-0123456789abcdefgh"
ADMIN = "admin-token-0123456789abcdef"
TOKENS = f"""
[[tokens]]
name = "alice"
token = "{CALLER}"
tenant = "team-a"

[[tokens]]
name = "bob"
token = "{OTHER}"
tenant = "team-b"

[[tokens]]
name = "admin"
token = "{ADMIN}"
permissions = ["read_usage"]
"""

# Rule 0: team-a alone; rule 1: every caller together; rule 2: each tenant on its own (the tenants
# only the tokens name, admin and team-b, come from the tokens file).
CONFIG = """
[server]
grace_period_s = 1.0

[auth]
tokens_file = "{tokens}"

[[models]]
name = "echo"
provider = "echo"
chunks = 2
chunk_text = "hello "
price_per_million = {{ input = 2.5, output = 10.0 }}

[quota]
default_output_reservation = 50

[[quota.rules]]
tenant = "team-a"
requests_per_minute = 5
budget_per_day = 1.0

[[quota.rules]]
tenant = "all"
tokens_per_minute = 100000
concurrent_calls = 10

[[quota.rules]]
tenant = "*"
requests_per_minute = 100
"""

ADMIN_ENV = "MODELWIRE_TEST_USAGE_TOKEN"
KIND = usage_pb2.LimitKind
# The counters' clock, held a quarter second past 30 s into a minute: no window turns mid-test, and
# each counter resets at a known time (the command line rounds it up: 29.75 s is "30s").
NOW = time.time() // 60 * 60 + 30.25
DAY_ENDS_IN = 86400 - NOW % 86400


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    async with running_worker(load_toml_config(tmp_path, CONFIG.format(tokens=tokens))) as running:
        running.limiter._store._clock = lambda: NOW
        yield running


def client(worker: Worker, token: str) -> ModelWorkerClient:
    return ModelWorkerClient(worker.address, token=token, timeout=10)


async def two_calls(worker: Worker) -> None:
    """Two generations by team-a, settled in the counters."""
    async with client(worker, CALLER) as caller:
        for _ in range(2):
            await caller.generate("echo", "hello there")
    while worker.limiter._tasks:  # the settles run after the calls
        await asyncio.gather(*worker.limiter._tasks)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]
    return [line for line in lines if str(line["method"]).endswith("/Generate")]


def access_costs(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(line["cost"]) for line in access_lines(caplog)]


def rows(response: usage_pb2.GetUsageResponse) -> list[tuple[int, str, str]]:
    return [(rule.rule, rule.tenant, rule.model) for rule in response.rules]


def seconds(limit: usage_pb2.LimitUsage) -> float | None:
    return limit.resets_in.ToNanoseconds() / 1e9 if limit.HasField("resets_in") else None


async def test_get_usage_shows_a_tenants_requests_and_spend_against_each_rule(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    await two_calls(worker)
    async with client(worker, ADMIN) as admin:
        usage = await admin.usage()
    costs = access_costs(caplog)
    assert len(costs) == 2 and all(cost > 0 for cost in costs)

    assert (usage.store, usage.store_available) == ("memory", True)
    # Every tenant the tokens name gets rule 2's counters, not only the rules' team-a.
    assert rows(usage) == [
        (0, "team-a", "*"),
        (1, "all", "*"),
        (2, "admin", "*"),
        (2, "team-a", "*"),
        (2, "team-b", "*"),
    ]
    team_a = usage.rules[0]
    requests, budget = team_a.limits
    assert (requests.kind, requests.used, requests.limit) == (
        KIND.LIMIT_KIND_REQUESTS_PER_MINUTE,
        2,
        5,
    )
    assert budget.kind == KIND.LIMIT_KIND_BUDGET_PER_DAY and budget.limit == 1.0
    assert budget.used == pytest.approx(sum(costs), abs=1e-9)
    assert (seconds(requests), seconds(budget)) == (29.75, DAY_ENDS_IN)

    tokens, concurrent = usage.rules[1].limits
    assert tokens.kind == KIND.LIMIT_KIND_TOKENS_PER_MINUTE and tokens.used > 0
    # Concurrent calls free as calls end: no window, so no reset time (unset, not zero).
    assert (concurrent.kind, concurrent.used, concurrent.limit) == (
        KIND.LIMIT_KIND_CONCURRENT_CALLS,
        0,
        10,
    )
    assert seconds(concurrent) is None
    assert [rule.limits[0].used for rule in usage.rules[2:]] == [0, 2, 0]


async def test_the_tenant_filter_and_a_name_that_is_no_tenant(worker: Worker) -> None:
    await two_calls(worker)
    async with client(worker, ADMIN) as admin:
        team_b = await admin.usage("team-b")
        team_a = await admin.usage("team-a")
        with pytest.raises(ModelwireCallError) as refused:
            await admin.usage(" team-a")
    assert rows(team_b) == [(1, "all", "*"), (2, "team-b", "*")]
    assert team_b.rules[1].limits[0].used == 0
    assert rows(team_a) == [(0, "team-a", "*"), (1, "all", "*"), (2, "team-a", "*")]
    assert team_a.rules[0].limits[0].used == 2
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in refused.value.violations] == ["tenant"]
    assert "whitespace" in refused.value.field_violations["tenant"]


async def test_read_usage_and_generate_are_separate_permissions(worker: Worker) -> None:
    async with client(worker, CALLER) as caller:
        with pytest.raises(ModelwireCallError) as reading:
            await caller.usage()
    async with client(worker, ADMIN) as admin:
        with pytest.raises(ModelwireCallError) as generating:
            await admin.generate("echo", "hello")
    assert reading.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "token 'alice' lacks the 'read_usage' permission" in reading.value.message
    assert "UsageAdmin/GetUsage" in reading.value.message
    assert generating.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "token 'admin' lacks the 'generate' permission" in generating.value.message


async def test_a_store_that_cannot_be_reached_is_unavailable_not_internal(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*_: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(worker.limiter._store, "read", unreachable)
    async with client(worker, ADMIN) as admin:
        with pytest.raises(ModelwireCallError) as refused:
            await admin.usage()
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert "the quota store memory cannot be reached" in refused.value.message
    assert refused.value.retry_after_s == 1.0


# --- `modelwire usage`, a real process ----------------------------------------------------------


async def usage_cli(*args: str) -> tuple[int, str, str]:
    """`modelwire usage ARGS` in a child process; the worker keeps serving on this loop."""
    done = await asyncio.to_thread(run_cli, "usage", *args, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def test_the_usage_command_prints_each_rules_counters(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    await two_calls(worker)
    spent = sum(access_costs(caplog))
    tokens = sum(line["prompt_tokens"] + line["completion_tokens"] for line in access_lines(caplog))
    assert f"{spent:.6f}" != "0.000000" and tokens > 0
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    target = ("--worker", worker.address, "--token-env", ADMIN_ENV)

    code, out, err = await usage_cli(*target)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "store: memory (available)",
        "rule 0\ttenant=team-a\tmodel=*\trequests_per_minute=2/5 (resets in 30s)"
        f"\tbudget_per_day={spent:.6f}/1.000000 (resets in {math.ceil(DAY_ENDS_IN)}s)",
        f"rule 1\ttenant=all\tmodel=*\ttokens_per_minute={tokens}/100000 (resets in 30s)"
        "\tconcurrent_calls=0/10",
        "rule 2\ttenant=admin\tmodel=*\trequests_per_minute=0/100 (resets in 30s)",
        "rule 2\ttenant=team-a\tmodel=*\trequests_per_minute=2/100 (resets in 30s)",
        "rule 2\ttenant=team-b\tmodel=*\trequests_per_minute=0/100 (resets in 30s)",
    ]

    code, out, err = await usage_cli(*target, "--tenant", "team-b")
    assert (code, err) == (0, "")
    assert [line.split("\t")[:2] for line in out.splitlines()[1:]] == [
        ["rule 1", "tenant=all"],
        ["rule 2", "tenant=team-b"],
    ]

    code, out, err = await usage_cli(*target, "--tenant", "team-a", "--json")
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert (answer["store"], answer["store_available"]) == ("memory", True)
    first = answer["rules"][0]
    assert (first["rule"], first["tenant"], first["model"]) == (0, "team-a", "*")
    requests, budget = first["limits"]
    assert (requests["kind"], requests["used"], requests["limit"]) == ("requests_per_minute", 2, 5)
    assert requests["resets_in_s"] == 29.75
    assert budget["kind"] == "budget_per_day"
    assert budget["used"] == pytest.approx(spent, abs=1e-9)
    assert answer["rules"][1]["limits"][1] == {
        "kind": "concurrent_calls",
        "used": 0,
        "limit": 10,
        "resets_in_s": None,
    }


async def test_the_usage_command_says_what_is_wrong_without_a_traceback(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = ("--worker", worker.address, "--token-env", ADMIN_ENV)
    # Each problem is one message on stderr (no traceback) and a non-zero exit.
    monkeypatch.setenv(ADMIN_ENV, "not-a-token-of-this-worker")
    assert await usage_cli(*target) == (
        1,
        "",
        "modelwire: UNAUTHENTICATED: missing or invalid bearer token: send metadata "
        "`authorization: Bearer <token>`\n",
    )

    monkeypatch.setenv(ADMIN_ENV, CALLER)
    assert await usage_cli(*target) == (
        1,
        "",
        "modelwire: PERMISSION_DENIED: token 'alice' lacks the 'read_usage' permission that "
        "/modelwire.v1.UsageAdmin/GetUsage needs\n",
    )

    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    assert await usage_cli(*target, "--tenant", "team-a ") == (
        1,
        "",
        "modelwire: INVALID_ARGUMENT\n"
        "  tenant: has whitespace at either end: not a tenant's name\n",
    )

    monkeypatch.delenv(ADMIN_ENV)
    assert await usage_cli(*target) == (
        2,
        "",
        f"modelwire: --token-env {ADMIN_ENV}: environment variable {ADMIN_ENV} is not set or "
        "empty\n",
    )
