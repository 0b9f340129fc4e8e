"""`make bench-route`: what a route, a model's deployments and one failover cost a call.

The worker of bench/run.py's "modelwire → HTTP upstream" row (`provider = "openai"` against
bench/instant_upstream.py, one process), four ways, each its own `modelwire serve`:

  plain        calls to model `oa`, its only deployment: a call with no choice, so the failover
               code records no attempt and consults no breaker (the baseline)
  route        calls to route `chat` = [`oa`, `backup`], whose first member `oa` answers: the
               route's bookkeeping (a candidate picked, the breaker asked and told, an attempt
               recorded, the attempts trailer, note_answered_by), no second attempt
  deployments  calls to model `oa` with two deployments (`a`, `b`, weight 1 : 1) on the same
               upstream: the policy's pick between them, and the same bookkeeping
  failover     calls to route `chat` whose first member `oa` has its api_base on a closed port
               (a socket bound here and never listening: the connection is refused at once), so
               every call makes one refused attempt (`max_retries = 0`) and moves on to `backup`.
               The breaker's thresholds are set out of reach, so it never opens and every call
               pays the refused attempt

and, on request (`--variants plain,...,skip`), the same route with `oa`'s circuit held open
(`open_s` of an hour, opened before the runs): every call skips `oa` without an attempt.

Every model sets `max_retries = 0` (what docs/configuration.md advises for deployments that fail
over), and every worker but `skip` has the same `[failover.breaker]`, so the variants differ only
in their [[models]] and [[routes]].

Each is driven by ghz like bench/quota.py drives its workers (closed loop, a pilot at the same
concurrency sizing a run of about `--duration`, so no call is cut off), unary and streamed, at
each concurrency level. The variants are interleaved: every round measures all of them, one after
the other, in an order rotated from round to round, and the tables give each figure's median over
the rounds with the spread of the ratios against `plain` of the same round (this VM spreads
repeated runs of one variant by ±15-30%). CPU per call is the worker's, from /proc (utime +
stime); the upstream's is reported apart.

Every worker is checked first, unary and streamed: the right answer, the `model` each answer
names (the member that answered), and the `modelwire-attempts` trailer (none for `plain`;
`oa/oa=answered` for `route`; `oa/a=answered` or `oa/b=answered` for `deployments`, both seen;
`oa/oa=unavailable,backup/backup=answered` for `failover`).

    .venv/bin/python bench/route.py [--levels 1,64] [--rounds 3] [--duration 6] [--ghz PATH]

Results: bench/results/<stamp>-route.{json,md}.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import interleaved  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402

VARIANTS = ("plain", "route", "deployments", "failover")
# On request (--variants): the failover route with its first member's circuit held open.
EXTRA_VARIANTS = ("skip",)
LABELS = {
    "plain": "model, one deployment",
    "route": "route, first member answers",
    "deployments": "model, two deployments",
    "failover": "route, first member refused",
    "skip": "route, first member's circuit open",
}
# The name each variant's calls send, the model every answer must name, and the attempts trailer
# each call must end with (a set: a deployment's pick may go either way).
TARGETS = {
    "plain": "oa",
    "route": "chat",
    "deployments": "oa",
    "failover": "chat",
    "skip": "chat",
}
ANSWERED_BY = {
    "plain": "oa",
    "route": "oa",
    "deployments": "oa",
    "failover": "backup",
    "skip": "backup",
}
ATTEMPTS: dict[str, set[str | None]] = {
    "plain": {None},
    "route": {"oa/oa=answered"},
    "deployments": {"oa/a=answered", "oa/b=answered"},
    "failover": {"oa/oa=unavailable,backup/backup=answered"},
    "skip": {"oa/oa=circuit_open,backup/backup=answered"},
}
ATTEMPTS_TRAILER = "modelwire-attempts"
# The processes whose CPU per call is reported apart from the worker's.
SIDES = ("upstream",)
# The same for every worker: no circuit opens on its own during a run (failover pays its refused
# attempt on every call); `skip` opens its own with an hour-long open_s.
BREAKER = """
[failover]
policy = "least_loaded"

[failover.breaker]
consecutive_failures = {consecutive}
failure_rate = 1.0
min_calls = 1000000000
window_s = 60
open_s = {open_s}
"""


def _model(name: str, api_base: str, deployment: str | None = None) -> str:
    named = f'deployment = "{deployment}"\nweight = 1\n' if deployment is not None else ""
    return f"""
[[models]]
name = "{name}"
{named}provider = "openai"
api_base = "{api_base}"
context_length = 128000
max_retries = 0
max_concurrency = 1024
max_queue = 4096
"""


def worker_config(port: int, upstream: str, closed: str, variant: str) -> str:
    """`upstream`: http://HOST:PORT of the instant upstream; `closed`: the same of a port where
    nothing listens."""
    server = f"""
[server]
host = "127.0.0.1"
port = {port}
processes = 1
grace_period_s = 1
"""
    live, dead = f"{upstream}/v1", f"{closed}/v1"
    route = '\n[[routes]]\nname = "chat"\nmodels = ["oa", "backup"]\n'
    if variant == "plain":
        models = _model("oa", live)
    elif variant == "route":
        models = _model("oa", live) + _model("backup", live) + route
    elif variant == "deployments":
        models = _model("oa", live, "a") + _model("oa", live, "b")
    else:  # failover, skip
        models = _model("oa", dead) + _model("backup", live) + route
    skip = variant == "skip"
    breaker = BREAKER.format(
        consecutive=5 if skip else 1_000_000_000, open_s=3600.0 if skip else 30.0
    )
    return server + models + breaker


def closed_port() -> tuple[socket.socket, str]:
    """A loopback port bound here and never listened on: a connection to it is refused at once
    (RST), and no other process can take the port while the socket is held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def request_of(variant: str) -> dict[str, Any]:
    return {**run.GRPC_REQUEST, "model": TARGETS[variant]}


def _call(stub: Any, model: str, stream: bool) -> tuple[str, set[str], str | None, list[Any]]:
    """One call: its text, the models its messages name, its attempts trailer, its messages."""
    from modelwire.v1 import worker_pb2 as pb

    request = pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=run.PROMPT)]
    )
    if stream:
        call = stub.GenerateStream(request, timeout=10)
        chunks = list(call)
        trailers = dict(call.trailing_metadata() or ())
        text = "".join(chunk.text for chunk in chunks)
        named = {chunk.model for chunk in chunks}
        return text, named, trailers.get(ATTEMPTS_TRAILER), chunks
    output, call = stub.Generate.with_call(request, timeout=10)
    trailers = dict(call.trailing_metadata() or ())
    return output.text, {output.model}, trailers.get(ATTEMPTS_TRAILER), [output]


def check_worker(address: str, variant: str, calls: int = 8) -> dict[str, list[str | None]]:
    """The worker answers right, unary and streamed, names the model that answered on every
    message, and ends each call with the attempts the variant must make: proof it is what it
    says. `skip` first opens its circuit (5 refused attempts in a row). Returns the trailers
    seen, by mode."""
    import grpc

    from modelwire.v1 import worker_pb2 as pb
    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    expected_text = run.CHUNK_TEXT * run.CHUNKS
    seen: dict[str, list[str | None]] = {"unary": [], "stream": []}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        if variant == "skip":
            for _ in range(6):
                _call(stub, TARGETS[variant], False)
        for index in range(2 * calls):
            stream = index % 2 == 1
            text, named, attempts, messages = _call(stub, TARGETS[variant], stream)
            mode = "stream" if stream else "unary"
            seen[mode].append(attempts)
            problems = []
            if text != expected_text:
                problems.append(f"text of {len(text)} chars")
            if named != {ANSWERED_BY[variant]}:
                problems.append(f"model {sorted(named)}")
            if attempts not in ATTEMPTS[variant]:
                problems.append(f"attempts {attempts!r}")
            if stream and (
                sum(1 for m in messages if m.text) != run.CHUNKS
                or not messages[-1].HasField("usage")
                or messages[-1].finish_reason != pb.FINISH_REASON_STOP
            ):
                problems.append(f"stream of {len(messages)} messages")
            if problems:
                raise RuntimeError(
                    f"{variant} worker at {address}, {mode} call to {TARGETS[variant]!r}: "
                    + ", ".join(problems)
                    + f"; expected model {ANSWERED_BY[variant]!r}, attempts "
                    f"{sorted(map(str, ATTEMPTS[variant]))}"
                )
    if variant == "deployments":
        both = {value for values in seen.values() for value in values}
        if both != ATTEMPTS["deployments"]:
            raise RuntimeError(f"deployments: only {sorted(map(str, both))} answered")
    return seen


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (level, mode, variant): medians over the rounds, and against `plain` of the same round
    (the ratio's or the difference's median, low and high)."""
    cpu = "worker_cpu_us_per_call"
    return interleaved.summarize(
        rows,
        "plain",
        SIDES,
        {
            "cpu_ratio": interleaved.ratio(cpu),
            "cpu_delta_us": interleaved.difference(cpu),
            "rps_ratio": interleaved.ratio("rps"),
            "p50_delta_ms": interleaved.difference("p50_ms"),
            "p99_ratio": interleaved.ratio("p99_ms"),
        },
    )


def cells(entry: dict[str, Any]) -> list[str]:
    base = entry["variant"] == "plain"
    return [
        f"`{entry['variant']}`: {LABELS[entry['variant']]}",
        *interleaved.measured(entry),
        f"{entry['worker_cpu_us_per_call'] / 1000:.3f}",
        "1" if base else interleaved.times(entry["cpu_ratio"]),
        "0" if base else interleaved.delta(entry["cpu_delta_us"], digits=0),
        "1" if base else interleaved.times(entry["rps_ratio"]),
        "0" if base else interleaved.delta(entry["p50_delta_ms"]),
        "1" if base else interleaved.times(entry["p99_ratio"]),
        interleaved.load(entry),
    ]


def markdown(report: dict[str, Any]) -> str:
    header = [
        "variant",
        "call",
        "c",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "worker CPU ms / call",
        "CPU × plain",
        "CPU − plain, µs",
        "calls/s × plain",
        "p50 − plain, ms",
        "p99 × plain",
        "load",
    ]
    compared = "ratios and differences against `plain`"
    return (
        f"Run `{report['stamp']}` (bench/route.py): {interleaved.machine(report)}. `openai` "
        "provider → instant HTTP upstream, one worker process per variant; "
        f"{interleaved.method(report, compared)} {interleaved.took(report)}\n\n"
        + interleaved.table(header, report["summary"], cells)
        + "\n"
    )


def main() -> int:
    parser = interleaved.arguments(__doc__, 6.0, VARIANTS, EXTRA_VARIANTS)
    args = parser.parse_args()
    variants = interleaved.chosen_variants(parser, args, VARIANTS, EXTRA_VARIANTS)
    settings = {"targets": {variant: TARGETS[variant] for variant in variants}}
    harness = interleaved.Harness("route", args, variants, settings)
    report = harness.report
    report["configs"] = {}
    report["checks"] = {}
    closed, closed_url = closed_port()
    with closed, harness:
        upstream = harness.start_upstream()
        upstream_url = "http://" + upstream.address()
        workers: dict[str, tuple[str, run.Proc]] = {}
        for variant in variants:
            port = run.free_port()
            config = harness.workdir / f"route-{variant}.toml"
            text = worker_config(port, upstream_url, closed_url, variant)
            config.write_text(text)
            report["configs"][variant] = text
            proc = harness.start_worker(
                variant, [str(harness.modelwire), "serve", "--config", str(config)]
            )
            address = proc.address()
            run.wait_grpc(address, 30, TARGETS[variant])
            seen = check_worker(address, variant)
            report["checks"][variant] = seen
            harness.progress.say(
                f"{variant} checked: {TARGETS[variant]!r} answered by "
                f"{ANSWERED_BY[variant]!r}, attempts "
                + ", ".join(sorted({str(value) for values in seen.values() for value in values}))
            )
            workers[variant] = (address, proc)
        upstream_group = procstat.ProcessGroup([upstream.pid])
        others = harness.others()

        def measure(variant: str, mode: str, concurrency: int) -> dict[str, Any]:
            address, proc = workers[variant]
            return interleaved.measure(
                args,
                address,
                request_of(variant),
                procstat.ProcessGroup([proc.pid]),
                {"upstream": upstream_group},
                others,
                mode,
                concurrency,
            )

        harness.rounds(measure)
        # Still what they were: the runs opened no circuit that should stay closed, and closed
        # none that should stay open.
        for variant in variants:
            check_worker(workers[variant][0], variant, calls=2)
    harness.finish(summarize, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
