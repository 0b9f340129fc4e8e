"""The multi-replica quota recipe of docs/operations.md ("A fleet-wide limit and budget: two
gateways, three workers, etcd, Redis") run on one machine, as the real processes the recipe
starts (`modelwire serve` three times, `modelwire gateway` twice), etcd with TLS and its own
users, Redis with TLS, the recipe's ACL user and its append-only file, all from the recipe's own
text: its ```toml and ```conf blocks, each named by its first comment line.

What running it on one machine changes, and nothing else (in `recipe_fleet`, by `substituted`
and `RecipeRedis`):
- hosts and ports: etcd.example:2379 and redis.example:6379 become the test's etcd and Redis on
  127.0.0.1; `0.0.0.0` becomes 127.0.0.1; each worker's and gateway's port (50051, 50052), the
  workers' metrics_port and Redis's tls-port become free ports; `--advertise wN.example:50051`
  becomes 127.0.0.1 and the worker's port;
- paths: one certificate from scripts/make_certs.sh (it names 127.0.0.1) plays every machine's,
  copied under the recipe's names (worker.pem, gateway.key, ca.pem, ...) into each process's own
  directory, so the files' relative paths stay as written; redis.conf's absolute ones name it;
- the model: `api_base` points at a fake OpenAI upstream (fake_upstream.py), which counts what
  reached the provider;
- the test adds a Redis user of its own (`admin`) to read the counters, and etcd's root user's
  password is the test's.

Asserted: team-a (alice and bob) calling through both gateways and straight at every worker gets
exactly the recipe's requests_per_minute admitted in one minute, fleet-wide, the rest refused
RESOURCE_EXHAUSTED naming the rule; team-b (carol) is unaffected; the provider received exactly the
admitted calls; each admitted call is charged once, at the worker that ran it, saying which gateway
relayed it; team-a's budget counter in Redis is exactly the sum of the costs in the workers' access
lines, and so are the workers' modelwire_cost_total together; `modelwire usage` reads the same; the
recipe's ACL user was never denied anything.

Windows are fixed minutes on Redis's clock: the burst starts only when enough of a minute is left
(read with Redis's TIME), so a boundary never splits its count."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tomllib
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from aetcd import rpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from cli_process import PIPE, first_line, run_cli, start_cli
from conftest import free_port
from etcd_server import EtcdServer
from fake_upstream import FakeUpstream, fake_upstream
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
# The recipe as operators read it; its section is found by its heading.
RECIPE = ROOT / "docs" / "operations.md"
HEADING = "### A fleet-wide limit and budget: two gateways, three workers, etcd, Redis"

WORKER_TOML = "/etc/modelwire/worker.toml"
GATEWAY_TOML = "/etc/modelwire/gateway.toml"
TOKENS_TOML = "/etc/modelwire/tokens.toml"
REDIS_CONF = "/etc/redis/redis.conf"

# The recipe's certificate files, by name, and which of make_certs.sh's each one is here.
CERTIFICATES = {
    "worker.pem": "server.pem",
    "worker.key": "server.key",
    "gateway.pem": "server.pem",
    "gateway.key": "server.key",
    "redis.pem": "server.pem",
    "redis.key": "server.key",
    "ca.pem": "ca.pem",
}
# The recipe's hosts and ports, as its files write them.
RECIPE_ETCD = "etcd.example:2379"
RECIPE_REDIS = "redis.example:6379"
# etcd's role reaches this prefix (the etcd recipe's `grant-permission --prefix=true readwrite`).
ETCD_PREFIX = "modelwire/"

PREFIX = "modelwire:quota:"
NANO = 1_000_000_000
# The burst (about a hundred calls) and what follows it take a few seconds; a minute with less
# than this left is waited out.
MINUTE_NEEDED_S = 25.0
ADMIN = ("admin", "test-admin-password-0123456789")
ETCD_ROOT_PASSWORD = "test-etcd-root-password-0123"
ETCD_USER_PASSWORD = "test-etcd-modelwire-password-0123"
OPENAI_KEY = "sk-test-recipe-0123456789"


# --- the recipe's text ----------------------------------------------------------------------------


def recipe_section(text: str) -> str:
    """The recipe's section of `text`: from its heading to the next heading of its level or
    above (a `#` line inside a code block is a comment, not a heading)."""
    lines = text[text.index(HEADING) :].splitlines(keepends=True)
    fenced = False
    for number, line in enumerate(lines[1:], 1):
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,3} ", line):
            return "".join(lines[:number])
    return "".join(lines)


def recipe_files() -> dict[str, str]:
    """The recipe's configuration files, by the path their first comment line names."""
    section = recipe_section(RECIPE.read_text(encoding="utf-8"))
    files = {}
    for match in re.finditer(r"^```(?:toml|conf)\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        body = match.group(1)
        path = body.split("\n", 1)[0].removeprefix("# ").split()[0]
        files[path] = body
    assert set(files) >= {WORKER_TOML, GATEWAY_TOML, TOKENS_TOML, REDIS_CONF}, sorted(files)
    return files


def substituted(text: str, *pairs: tuple[str, str]) -> str:
    """`text` with each `old` (which must be there exactly once) replaced by its `new`: a recipe
    that no longer says what this mapping expects fails here, naming it."""
    for old, new in pairs:
        assert text.count(old) == 1, f"the recipe no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


# --- etcd and Redis as the recipe runs them -------------------------------------------------------


def etcd_channel(server: EtcdServer, certs: Path) -> grpc.Channel:
    return grpc.secure_channel(
        server.endpoint, grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    )


def recipe_etcd_users(server: EtcdServer, certs: Path) -> None:
    """The etcd recipe's `etcdctl` steps: root, the `modelwire` role over the prefix, the
    `modelwire` user in it, then authentication on."""
    with etcd_channel(server, certs) as channel:
        auth = rpc.AuthStub(channel)
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=ETCD_ROOT_PASSWORD), timeout=5)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="modelwire"), timeout=5)
        end = ETCD_PREFIX[:-1] + chr(ord(ETCD_PREFIX[-1]) + 1)
        permission = rpc.Permission(
            permType=rpc.Permission.READWRITE, key=ETCD_PREFIX.encode(), range_end=end.encode()
        )
        auth.RoleGrantPermission(
            rpc.AuthRoleGrantPermissionRequest(name="modelwire", perm=permission), timeout=5
        )
        auth.UserAdd(
            rpc.AuthUserAddRequest(name="modelwire", password=ETCD_USER_PASSWORD), timeout=5
        )
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="modelwire", role="modelwire"))
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


def registered_instances(server: EtcdServer, certs: Path) -> int:
    """How many keys the workers hold under the prefix, read as etcd's root."""
    with etcd_channel(server, certs) as channel:
        token = (
            rpc.AuthStub(channel)
            .Authenticate(
                rpc.AuthenticateRequest(name="root", password=ETCD_ROOT_PASSWORD), timeout=5
            )
            .token
        )
        end = ETCD_PREFIX[:-1] + chr(ord(ETCD_PREFIX[-1]) + 1)
        reply = rpc.KVStub(channel).Range(
            rpc.RangeRequest(key=ETCD_PREFIX.encode(), range_end=end.encode(), count_only=True),
            metadata=(("token", token),),
            timeout=5,
        )
        return int(reply.count)


class RecipeRedis(RedisServer):
    """redis-server with the recipe's redis.conf lines as its command line (redis-server takes
    any configuration line as `--name value…`), TLS paths and port mapped, and the test's own
    admin user added. The helper's start, readiness (AUTH as the recipe's user, then PING) and
    kill stay as they are."""

    def __init__(self, conf: str, certs: Path) -> None:
        lines = [
            line.split()
            for line in conf.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        (user,) = [words for words in lines if words[0] == "user" and words[1] != "default"]
        (password,) = [word[1:] for word in user if word.startswith(">")]
        super().__init__(username=user[1], password=password, certs=certs)
        self.recipe_lines = lines

    def _arguments(self) -> list[str]:
        assert self.certs is not None
        arguments = ["--dir", str(self.root)]
        for words in self.recipe_lines:
            if words[0] == "bind":
                words = ["bind", self.host]
            elif words[0] == "tls-port":
                words = ["tls-port", str(self.port)]
            elif words[0] in ("tls-cert-file", "tls-key-file", "tls-ca-cert-file"):
                words = [words[0], str(self.certs / CERTIFICATES[Path(words[1]).name])]
            arguments += ["--" + words[0], *words[1:]]
        return [*arguments, "--user", ADMIN[0], "on", f">{ADMIN[1]}", "~*", "&*", "+@all"]

    def admin_client(self) -> aioredis.Redis:
        assert self.certs is not None
        return aioredis.from_url(
            f"rediss://{ADMIN[0]}:{ADMIN[1]}@{self.host}:{self.port}/0",
            ssl_ca_certs=str(self.certs / "ca.pem"),
            decode_responses=True,
        )


async def store_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def minute_with_room(client: aioredis.Redis, need_s: float) -> int:
    """The current minute on Redis's clock (the clock the quota scripts use), once at least
    `need_s` of it is left: a burst that straddled a minute's top would be counted in two."""
    while True:
        now = await store_now(client)
        left = 60 - now % 60
        if left >= need_s:
            return int(now // 60)
        await asyncio.sleep(min(left + 0.01, 0.5))


async def counted(client: aioredis.Redis, pattern: str) -> dict[str, int]:
    """Every counter whose key matches `pattern` (after PREFIX), by key (the admin client decodes
    replies: keys are str)."""
    return {
        str(key): int(await client.get(key) or 0) for key in await client.keys(PREFIX + pattern)
    }


# --- the processes --------------------------------------------------------------------------------


@dataclass
class Process:
    """A modelwire process; its stderr (the JSON log) is read all along into `lines`."""

    name: str
    process: asyncio.subprocess.Process
    address: str
    metrics_port: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.other.append(raw.decode(errors="replace"))

    def calls(self) -> list[dict[str, Any]]:
        """Its access lines of model calls."""
        return [
            line
            for line in self.lines
            if str(line.get("method", "")).startswith("/modelwire.v1.ModelWorker/")
        ]


async def start(
    name: str,
    announcement: str,
    address: str,
    env: dict[str, str],
    *args: str,
    metrics_port: int | None = None,
) -> Process:
    process = await start_cli(*args, stderr=PIPE, env=env)
    started = Process(name, process, address, metrics_port)
    started.reader = asyncio.create_task(started.read_log())
    try:
        line = await first_line(process, 60)
    except TimeoutError:
        line = ""
    if not line.startswith(announcement):
        process.kill()
        await process.wait()
        await started.reader
        raise AssertionError(f"{name} did not start: {line!r} {started.lines} {started.other}")
    return started


async def stop(started: Process) -> None:
    if started.process.returncode is None:
        started.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(started.process.wait(), 15)
        except TimeoutError:
            started.process.kill()
            await started.process.wait()
    if started.reader is not None:
        await started.reader


def directory_for(root: Path, name: str, certs: Path, files: dict[str, str]) -> Path:
    """A process's /etc/modelwire/: its files, and the certificates under the recipe's names."""
    directory = root / name
    directory.mkdir()
    for recipe_name, ours in CERTIFICATES.items():
        shutil.copy(certs / ours, directory / recipe_name)
    for file_name, text in files.items():
        (directory / file_name).write_text(text, encoding="utf-8")
        tomllib.loads(text)  # still TOML after the mapping
    return directory


# --- calls ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    door: str
    tenant: str
    code: grpc.StatusCode
    message: str = ""
    quota_failure: error_details_pb2.QuotaFailure | None = None
    retry_s: float | None = None


async def serving(address: str, certs: Path) -> None:
    """Waits until `address` says SERVING on its health service (a gateway: once it holds the
    instance table), as a balancer in front of it would."""
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    async with grpc.aio.secure_channel(address, credentials) as channel, asyncio.timeout(20):
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.05)


async def call(
    stub: pb_grpc.ModelWorkerStub, door: str, token: str, tenant: str, model: str
) -> Outcome:
    request = pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content="Say hello.")]
    )
    try:
        await stub.Generate(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        failure, retry = None, None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                failure = error_details_pb2.QuotaFailure()
                detail.Unpack(failure)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry = info.retry_delay.ToNanoseconds() / 1e9
        return Outcome(door, tenant, error.code(), error.details() or "", failure, retry)
    return Outcome(door, tenant, grpc.StatusCode.OK)


def metric_samples(port: int) -> dict[str, float]:
    """A worker's /metrics, sample line → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def nano(cost: float) -> int:
    return round(Decimal(repr(cost)) * NANO)


# --- the fleet ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    workers: list[Process]
    gateways: list[Process]
    redis: RecipeRedis
    certs: Path
    worker_config: dict[str, Any]
    tokens: dict[str, dict[str, Any]]


@asynccontextmanager
async def recipe_fleet(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Fleet]:
    """The recipe's etcd, Redis, three workers and two gateways, started as it says (mapped as
    the module says); every process stopped on exit."""
    files = recipe_files()
    worker_text, gateway_text = files[WORKER_TOML], files[GATEWAY_TOML]
    worker, gateway = tomllib.loads(worker_text), tomllib.loads(gateway_text)
    tokens = {entry["name"]: entry for entry in tomllib.loads(files[TOKENS_TOML])["tokens"]}
    certs = tmp_path / "certs"
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(certs)], check=True, capture_output=True
    )
    async with AsyncExitStack() as stack:
        etcd = EtcdServer(certs)
        stack.callback(etcd.close)
        etcd.start()
        recipe_etcd_users(etcd, certs)
        redis = RecipeRedis(files[REDIS_CONF], certs)
        stack.callback(redis.close)
        redis.start()
        assert worker["quota"]["store"] == f"rediss://{redis.username}@{RECIPE_REDIS}/0"

        env = {
            **os.environ,
            worker["registry"]["etcd_password_env"]: ETCD_USER_PASSWORD,
            worker["quota"]["store_password_env"]: str(redis.password),
            worker["models"][0]["api_key_env"]: OPENAI_KEY,
        }
        hosts = [('host = "0.0.0.0"', 'host = "127.0.0.1"'), (RECIPE_ETCD, etcd.endpoint)]
        starting = []
        for name in ("w1", "w2", "w3"):
            port, metrics = free_port(), free_port()
            text = substituted(
                worker_text,
                *hosts,
                ("port = 50051", f"port = {port}"),
                ("metrics_port = 9464", f"metrics_port = {metrics}"),
                (RECIPE_REDIS, f"{redis.host}:{redis.port}"),
                ('provider = "openai"\n', f'provider = "openai"\napi_base = "{upstream.url}/v1"\n'),
            )
            files_here = {"worker.toml": text, "tokens.toml": files[TOKENS_TOML]}
            directory = directory_for(tmp_path, name, certs, files_here)
            # .venv/bin/modelwire serve --config /etc/modelwire/worker.toml \
            #   --advertise wN.example:50051
            starting.append(
                start(
                    name,
                    "modelwire serving ",
                    f"127.0.0.1:{port}",
                    env,
                    "serve",
                    "--config",
                    str(directory / "worker.toml"),
                    "--advertise",
                    f"127.0.0.1:{port}",
                    metrics_port=metrics,
                )
            )
        results = await asyncio.gather(*starting, return_exceptions=True)
        workers = [result for result in results if isinstance(result, Process)]
        for started in workers:
            stack.push_async_callback(stop, started)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        # Gateways read the instances etcd holds when they start: all three, then.
        async with asyncio.timeout(20):
            while await asyncio.to_thread(registered_instances, etcd, certs) < len(workers):
                await asyncio.sleep(0.1)

        gateways = []
        token_env = gateway["gateway"]["workers"]["token_env"]
        for name in ("gw1", "gw2"):
            port = free_port()
            text = substituted(gateway_text, *hosts, ("port = 50052", f"port = {port}"))
            files_here = {"gateway.toml": text, "tokens.toml": files[TOKENS_TOML]}
            directory = directory_for(tmp_path, name, certs, files_here)
            # .venv/bin/modelwire gateway --config /etc/modelwire/gateway.toml, with this
            # gateway's own token in MODELWIRE_GATEWAY_TOKEN
            started = await start(
                name,
                "modelwire gateway on ",
                f"127.0.0.1:{port}",
                {**env, token_env: tokens[name]["token"]},
                "gateway",
                "--config",
                str(directory / "gateway.toml"),
            )
            stack.push_async_callback(stop, started)
            gateways.append(started)
        for started in gateways:
            await serving(started.address, certs)
        yield Fleet(workers, gateways, redis, certs, worker, tokens)


# --- the test -------------------------------------------------------------------------------------


async def test_the_recipe_admits_team_a_exactly_its_limit_and_charges_each_call_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About a hundred calls, 24 at a time, round both gateways and the three workers: team-a's
    (alice, bob) half as many again as its requests_per_minute, and a dozen of team-b's (carol)."""
    async with fake_upstream() as upstream, recipe_fleet(tmp_path, upstream) as fleet:
        config, tokens = fleet.worker_config, fleet.tokens
        model = config["models"][0]["name"]
        (team_a_rule,) = [
            (index, rule)
            for index, rule in enumerate(config["quota"]["rules"])
            if rule["tenant"] == "team-a"
        ]
        rule_index, limit = team_a_rule[0], team_a_rule[1]["requests_per_minute"]
        team_a = [name for name, token in tokens.items() if token.get("tenant") == "team-a"]
        team_b = [name for name, token in tokens.items() if token.get("tenant") == "team-b"]
        assert sorted(team_a) == ["alice", "bob"] and team_b == ["carol"]

        doors = {process.name: process.address for process in fleet.gateways + fleet.workers}
        credentials = grpc.ssl_channel_credentials((fleet.certs / "ca.pem").read_bytes())
        channels = {
            name: grpc.aio.secure_channel(address, credentials) for name, address in doors.items()
        }
        stubs = {name: pb_grpc.ModelWorkerStub(channel) for name, channel in channels.items()}
        admin = fleet.redis.admin_client()
        try:
            # Half as many again as team-a may make, round the doors, and a dozen of team-b's
            # among them.
            plan = [
                (list(doors)[i % len(doors)], team_a[i % len(team_a)], "team-a")
                for i in range(limit * 3 // 2)
            ]
            for i in range(12):
                plan.insert(i * 8 + 3, (list(doors)[i % len(doors)], "carol", "team-b"))
            gate = asyncio.Semaphore(24)

            async def one(door: str, caller: str, tenant: str) -> Outcome:
                async with gate:
                    token = tokens[caller]["token"]
                    return await call(stubs[door], door, token, tenant, model)

            minute = await minute_with_room(admin, MINUTE_NEEDED_S)
            outcomes = await asyncio.gather(*(one(*planned) for planned in plan))
            assert int(await store_now(admin) // 60) == minute, "the burst outlasted its minute"

            admitted = [o for o in outcomes if o.tenant == "team-a" and o.code.name == "OK"]
            refused = [o for o in outcomes if o.tenant == "team-a" and o.code.name != "OK"]
            assert len(admitted) == limit, [(o.door, o.code.name, o.message) for o in outcomes]
            assert len(refused) == len(plan) - 12 - limit
            for outcome in refused:
                assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
                assert outcome.quota_failure is not None, outcome
                (violation,) = outcome.quota_failure.violations
                assert violation.subject == "tenant:team-a"
                assert violation.quota_metric == "requests_per_minute"
                assert violation.quota_id == f"rule-{rule_index}"
                assert violation.quota_value == limit
                assert outcome.retry_s is not None and 0 < outcome.retry_s <= 60
            # Refusals came through each gateway as well as straight from the workers.
            assert {o.door for o in refused} == set(doors)
            assert all(o.code == grpc.StatusCode.OK for o in outcomes if o.tenant == "team-b")
            # The provider saw exactly the admitted calls.
            assert len(upstream.exchanges) == limit + 12

            # Every reservation settled (the workers settle in the background after the call).
            async with asyncio.timeout(10):
                while await admin.keys(PREFIX + "call:*"):
                    await asyncio.sleep(0.05)
            assert await counted(admin, "r:team-a:*") == {f"{PREFIX}r:team-a:@any:{minute}": limit}
            assert await counted(admin, "r:team-b:*") == {f"{PREFIX}r:team-b:@any:{minute}": 12}

            # Each admitted call was charged once, at the worker that ran it, naming the gateway
            # that relayed it (none for a call straight at a worker).
            def charged_lines() -> dict[str, list[dict[str, Any]]]:
                return {
                    worker.name: [
                        line for line in worker.calls() if "cost" in line and line["code"] == "OK"
                    ]
                    for worker in fleet.workers
                }

            # A worker writes a call's line as the call ends, its log is read as it comes.
            served = sum(outcome.code == grpc.StatusCode.OK for outcome in outcomes)
            async with asyncio.timeout(10):
                while sum(map(len, charged_lines().values())) < served:
                    await asyncio.sleep(0.05)
            charged = charged_lines()
            assert sum(map(len, charged.values())) == served
            team_a_lines = [
                line for lines in charged.values() for line in lines if line["tenant"] == "team-a"
            ]
            assert len(team_a_lines) == limit
            assert len({line["request_id"] for line in team_a_lines}) == limit
            assert {line["caller"] for line in team_a_lines} == set(team_a)
            through = {door: 0 for door in doors}
            for outcome in admitted:
                through[outcome.door] += 1
            for gateway in fleet.gateways:
                relayed = [line for line in team_a_lines if line.get("relayed_by") == gateway.name]
                assert len(relayed) == through[gateway.name], gateway.name
                # A gateway counts nothing: its lines carry no charge.
                assert not [line for line in gateway.calls() if "cost" in line]
            direct = [line for line in team_a_lines if "relayed_by" not in line]
            assert len(direct) == sum(through[worker.name] for worker in fleet.workers)
            assert all(lines for lines in charged.values()), "a worker ran none of the calls"

            # The budget in Redis is exactly what the access lines charged.
            budget = await counted(admin, "$:team-a:*")
            assert len(budget) == 1, budget
            spent = sum(nano(line["cost"]) for line in team_a_lines)
            assert spent > 0 and list(budget.values()) == [spent]

            # The workers' metrics say the same, and that the store is up.
            metrics = [
                await asyncio.to_thread(metric_samples, worker.metrics_port)
                for worker in fleet.workers
                if worker.metrics_port is not None
            ]
            label = f'modelwire_cost_total{{model="{model}",tenant="team-a"}}'
            assert [sample["modelwire_quota_store_up"] for sample in metrics] == [1.0] * 3
            assert sum(nano(sample.get(label, 0.0)) for sample in metrics) == spent

            # `modelwire usage`, as the recipe checks it, reads the same counters at any worker.
            monkeypatch.setenv("OPS_USAGE_TOKEN", tokens["ops"]["token"])
            shown = await asyncio.to_thread(
                run_cli,
                "usage",
                "--worker",
                fleet.workers[-1].address,
                "--ca-file",
                str(fleet.certs / "ca.pem"),
                "--token-env",
                "OPS_USAGE_TOKEN",
                "--tenant",
                "team-a",
                "--json",
                timeout=30,
            )
            assert shown.returncode == 0, shown.stderr
            report = json.loads(shown.stdout)
            assert report["store_available"] is True
            limits = {
                (rule["rule"], entry["kind"]): entry
                for rule in report["rules"]
                for entry in rule["limits"]
            }
            if int(await store_now(admin) // 60) == minute:
                assert limits[(rule_index, "requests_per_minute")]["used"] == limit
            assert nano(limits[(rule_index, "budget_per_day")]["used"]) == spent

            # The recipe's Redis user was never refused a command or a key. (redis-py names itself
            # with CLIENT SETINFO on connecting and does without when refused: Redis 7.2 and later
            # log that; 7.0, Debian 12's, does not know the command.)
            denied = [
                entry
                for entry in await admin.acl_log()
                if entry.get("username") == fleet.redis.username
                and entry.get("object") != "client|setinfo"
            ]
            assert not denied, denied
        finally:
            await admin.aclose()
            for channel in channels.values():
                await channel.close()
