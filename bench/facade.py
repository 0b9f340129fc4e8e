"""`make bench-facade-profile`: where the HTTP facade's CPU goes, by layer.

The worker of bench/run.py's facade rows (`provider = "openai"` against bench/instant_upstream.py,
one process, `[http] port` set) is driven through its facade by oha at a fixed concurrency, unary
then streamed (the same bodies as bench/run.py), while py-spy samples it (`record --format raw
--full-filenames`; it pauses the process for each sample, which costs the worker some throughput
but keeps the stacks whole: with `--nonblocking` many come out torn, frames of two moments mixed).
Samples of the other threads whose innermost Python frame is `Thread.run` or the thread pool's
`_worker` (grpc's poller thread, the pool, waiting or in C: py-spy cannot tell a paused process's
idle threads) are counted apart ("other threads") and left out of the shares. A stack that does
not start at the process's `<module>` frame is counted as truncated: its innermost frame still
counts for "self", but it is left out of "inclusive".

Each sample is charged twice:

  self      to the layer its innermost frame belongs to, split by whom it works for: an aiohttp
            frame under the provider's upstream request is the HTTP client, one under the
            facade's handler (or under no modelwire frame at all, with aiohttp's server protocol
            below it) is the HTTP server; json frames likewise (the request body, the codec's
            output, the upstream's answer)
  inclusive to every layer with a frame anywhere on its stack (aiohttp's request parsing, the
            facade's handler, the codec, the service, the provider, json, the access line...)

CPU per call is not read from this run (py-spy's sampling costs the worker some); bench/run.py's
facade rows give it.

    .venv/bin/python bench/facade.py --oha .tools/oha-1.16.0/bin/oha [--concurrency 64]
        [--duration 10] [--rate 250] [--mode unary|stream|both]

Writes bench/results/<stamp>-facade-profile.{json,md} and the raw stacks beside them.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402

# A frame's layer, by its file (py-spy --full-filenames); the first pattern found wins.
MODELWIRE_PARTS = (
    ("/modelwire/facade/openai_wire/", "facade codec (openai_wire)"),
    ("/modelwire/facade/", "facade server (pipeline, handler)"),
    ("/modelwire/observe/", "observe (access line, metrics, record)"),
    ("/modelwire/providers/", "openai provider (upstream request, SSE, conversion)"),
    ("/modelwire/quota/", "service (admission, quota, counting)"),
    ("/modelwire/worker/", "service (admission, quota, counting)"),
    ("/modelwire/tokenize/", "service (admission, quota, counting)"),
    ("/modelwire/core/strict_json.py", "json"),
    ("/modelwire/", "other modelwire"),
)
LIBRARIES = (
    ("/aiohttp/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/json/", "json"),
    ("/asyncio/", "asyncio"),
    ("/logging/", "logging"),
    ("/prometheus_client/", "prometheus_client"),
)
# Inclusive: a sample counts for each of these whose frame is anywhere on its stack.
INCLUSIVE = (
    ("aiohttp server: request read and parse (web_protocol.data_received)", "data_received", None),
    (
        "aiohttp server: the request handler task (web_protocol._handle_request)",
        "_handle_request",
        "/aiohttp/web_protocol.py",
    ),
    (
        "aiohttp server: writing the response (web_response / http_writer)",
        None,
        "/aiohttp/http_writer.py",
    ),
    ("facade handler (facade/server.py, all it calls)", None, "/modelwire/facade/server.py"),
    ("facade: reading + parsing the request body (_body)", "_body", "/modelwire/facade/server.py"),
    ("facade codec (openai_wire, all it calls)", None, "/modelwire/facade/openai_wire/"),
    ("service (worker/, all it calls but the provider)", None, "/modelwire/worker/"),
    ("openai provider (providers/, all it calls)", None, "/modelwire/providers/"),
    ("aiohttp client (client.py / connector.py / client_proto.py)", None, "/aiohttp/client"),
    ("json (encode or decode, anywhere)", None, "/json/"),
    ("observe (access line, metrics; all it calls)", None, "/modelwire/observe/"),
    ("logging module", None, "/logging/"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    """ "func (file:line);…" root first → [(func, file)]."""
    out = []
    for frame in stack.split(";"):
        func, _, rest = frame.partition(" (")
        out.append((func.strip(), rest.rsplit(":", 1)[0]))
    return out


def _part(file: str) -> str | None:
    if "/modelwire/app/" in file:
        return None  # the CLI and asyncio.run under every stack: no layer's work
    for pattern, name in MODELWIRE_PARTS:
        if pattern in file:
            return name
    return None


def _library(file: str) -> str:
    if "/modelwire/" in file:
        return _part(file) or "other modelwire"
    for pattern, name in LIBRARIES:
        if pattern in file:
            return name
    if "site-packages" in file:
        return "other library"
    return f"stdlib {Path(file).name}" if file else "unknown"


def _self_layer(frames: list[tuple[str, str]]) -> str:
    leaf_func, leaf_file = frames[-1]
    leaf = _library(leaf_file)
    owners = [part for _func, file in frames if (part := _part(file)) is not None]
    owner = owners[-1] if owners else None
    server_protocol = any("/aiohttp/web_protocol.py" in file for _f, file in frames)
    if leaf in ("aiohttp", "json", "asyncio", "logging", "prometheus_client", "other library") or (
        leaf.startswith("stdlib ")
    ):
        if owner is None:
            if leaf == "aiohttp" and server_protocol:
                return "aiohttp server: protocol, request parsing (no modelwire frame)"
            if leaf == "aiohttp":
                return "aiohttp, no modelwire frame (client protocol, connector callbacks)"
            return f"{leaf}, no modelwire frame (the event loop itself)"
        if leaf == "aiohttp" and owner.startswith("openai provider"):
            return "aiohttp client (the upstream request)"
        if leaf == "aiohttp":
            return f"aiohttp server side, under {owner}"
        return f"{leaf}, under {owner}"
    if leaf.startswith("json"):
        return f"json, under {owner}"
    return leaf


def analyse(raw: Path) -> dict[str, Any]:
    selfs: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = truncated = other_threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        # py-spy's first frame names the thread ("process 123:…" / "thread (0x…)") when asked to.
        frames = [frame for frame in frames if frame[1]] or frames
        whole = frames[0][0] == "<module>"
        if not whole and frames[-1][0] in ("Thread.run", "_worker"):
            other_threads += count
            continue
        total += count
        if not whole:
            truncated += count
        selfs[_self_layer(frames)] += count
        leaf_func, leaf_file = frames[-1]
        short = "/".join(Path(leaf_file).parts[-2:])
        leaves[f"{leaf_func} ({short})"] += count
        provider = any("/modelwire/providers/" in path for _f, path in frames)
        for name, func, file in INCLUSIVE if whole else ():
            if name.startswith("service") and provider:
                continue  # the provider's work, counted on its own line
            if any(
                (func is None or f.rpartition(".")[2] == func) and (file is None or file in path)
                for f, path in frames
            ):
                inclusive[name] += count
    return {
        "samples": total,
        "truncated": truncated / total if total else 0.0,
        "other_threads": other_threads,
        "self": {name: count / total for name, count in selfs.most_common()} if total else {},
        "inclusive": {name: inclusive[name] / total for name, _f, _p in INCLUSIVE} if total else {},
        "leaves": {name: count / total for name, count in leaves.most_common(20)} if total else {},
    }


def profile(
    oha: Path,
    url: str,
    body: dict[str, Any],
    pid: int,
    concurrency: int,
    duration_s: float,
    rate: int,
    raw: Path,
    nonblocking: bool = False,
) -> dict[str, Any]:
    """oha for warm-up + `duration_s` + 2 s; py-spy records `duration_s` of it from the middle."""
    loadgen.oha(oha, url, body, concurrency, 1.5)  # warm-up
    group = procstat.ProcessGroup([pid])
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "oha.json"
        command = [
            str(oha),
            "--no-tui",
            "--output-format",
            "json",
            "-c",
            str(concurrency),
            "-z",
            f"{duration_s + 2:g}s",
            "-w",
            "-m",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(body),
            "-t",
            "30s",
            url,
        ]
        with open(out_path, "w") as out:
            driver = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            before = group.snapshot()
            started = time.monotonic()
            spy = subprocess.run(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--duration",
                    f"{duration_s:g}",
                    "--format",
                    "raw",
                    "--full-filenames",
                    *(["--nonblocking"] if nonblocking else []),
                    "--output",
                    str(raw),
                ],
                capture_output=True,
                text=True,
            )
            cores = group.cpu_since(before) / (time.monotonic() - started)
            driver.wait(timeout=duration_s + 120)
        report = json.loads(out_path.read_text())
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {spy.stderr.strip()[-1500:]}")
    codes = report.get("statusCodeDistribution") or {}
    result = analyse(raw)
    result.update(
        calls_per_s=int(codes.get("200", 0)) / float(report["summary"]["total"]),
        other_codes={k: v for k, v in codes.items() if k != "200"},
        worker_cores=cores,
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Run `{report['stamp']}`: {report['machine']['cpus']} × {report['machine']['cpu']}; the "
        "facade's worker (one process, `openai` provider on the instant upstream) under oha at "
        f"c = {report['concurrency']}, py-spy at {report['rate']} samples/s for "
        f"{report['duration_s']:g} s{' (`--nonblocking`)' if report['nonblocking'] else ''}; "
        "shares of the samples.",
        "",
    ]
    modes = list(report["modes"])
    for kind, title in (
        ("self", "innermost frame, by layer"),
        ("inclusive", "on the stack"),
        ("leaves", "innermost function (the 20 most sampled per mode)"),
    ):
        names: list[str] = []
        for mode in modes:
            names += [n for n in report["modes"][mode][kind] if n not in names]
        lines += [f"| {title} | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
        for name in names:
            cells = [f"{report['modes'][mode][kind].get(name, 0) * 100:.1f}%" for mode in modes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Samples: "
        + "; ".join(
            f"{mode} {m['samples']:,}, {m['truncated'] * 100:.0f}% of them truncated, and "
            f"{m['other_threads']:,} of other threads left out "
            f"({m['calls_per_s']:,.0f} calls/s under the profiler, worker "
            f"{m['worker_cores']:.2f} cores)"
            for mode, m in report["modes"].items()
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--oha", type=Path)
    parser.add_argument(
        "--analyse",
        nargs="+",
        type=Path,
        metavar="RAW",
        help="only print the tables for raw stacks a run saved (…-facade-profile-<mode>.txt)",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument(
        "--nonblocking", action="store_true", help="py-spy without pausing the worker (torn stacks)"
    )
    parser.add_argument("--mode", choices=("unary", "stream", "both"), default="both")
    args = parser.parse_args()
    if args.analyse:
        for raw in args.analyse:
            print(f"{raw.name}: " + json.dumps(analyse(raw), indent=1))
        return 0
    if args.oha is None:
        parser.error("--oha is required")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run.RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-facade-profile-"))
    python = Path(sys.executable)
    ctx = run.Context(workdir=workdir, modelwire=python.with_name("modelwire"), python=python)
    upstream = run.Proc(
        "instant-upstream",
        [
            str(python),
            str(HERE / "instant_upstream.py"),
            "--port",
            "0",
            "--chunks",
            str(run.CHUNKS),
            "--chunk-text",
            run.CHUNK_TEXT,
        ],
        workdir,
        ready_text="instant upstream on",
    )
    report: dict[str, Any] = {
        "stamp": stamp,
        "machine": run.machine(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rate": args.rate,
        "nonblocking": args.nonblocking,
        "modes": {},
    }
    try:
        ctx.upstream = "http://" + upstream.address()
        running = run.start_modelwire_facade(ctx)
        try:
            print(f"verified: {run.verify(running)}", file=sys.stderr)
            modes = ("unary", "stream") if args.mode == "both" else (args.mode,)
            for mode in modes:
                raw = run.RESULTS / f"{stamp}-facade-profile-{mode}.txt"
                print(f"{mode}: oha c={args.concurrency}, py-spy → {raw}", file=sys.stderr)
                report["modes"][mode] = profile(
                    args.oha,
                    f"{running.address}/v1/chat/completions",
                    run.HTTP_UNARY if mode == "unary" else run.HTTP_STREAM,
                    running.procs[0].pid,
                    args.concurrency,
                    args.duration,
                    args.rate,
                    raw,
                    args.nonblocking,
                )
        finally:
            running.stop()
    finally:
        upstream.stop()
    (run.RESULTS / f"{stamp}-facade-profile.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (run.RESULTS / f"{stamp}-facade-profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
