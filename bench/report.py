"""Renders a bench/run.py report: the one table (every row as a ratio to the floor and to LiteLLM),
the verdicts against the issue's targets, the HTTP facade set against the gRPC path and LiteLLM,
the latency-vs-throughput PNG, and the generated part of docs/benchmarks.md (between the BEGIN/END
markers; the prose around it is written by hand)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED: bench/run.py writes this part; edit the prose outside it -->"
END = "<!-- END GENERATED -->"

LABELS = {
    "floor": "floor: bare grpc.aio",
    "modelwire": "modelwire, echo provider",
    "modelwire-p2": "modelwire --processes 2",
    "gateway": "gateway → modelwire",
    "forward-floor": "bare grpc.aio forwarder → floor",
    "modelwire-http": "modelwire → HTTP upstream",
    "modelwire-http-p2": "modelwire --processes N → HTTP upstream",
    "facade": "modelwire HTTP facade (OpenAI API) → HTTP upstream",
    "litellm": "LiteLLM → HTTP upstream",
    "http-floor": "HTTP upstream directly",
}
ORDER = list(LABELS)


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(row["target"], row["mode"], row["concurrency"]): row for row in rows}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def _x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}×"


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _load(part: dict[str, Any]) -> str:
    other = part.get("other_busy_cores")
    return f"{part['loadavg1_at_start']:.2f}" + (f" / {other:.2f}" if other is not None else "")


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header, then every row: gRPC/HTTP targets, then CountToken, local model, slow streams."""
    header = [
        "target",
        "call",
        "c",
        "throughput",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "CPU s / 1k calls",
        "peak RSS MiB",
        "× floor",
        "× LiteLLM",
        "p99 × LiteLLM",
        "load",
    ]
    rows: list[list[str]] = [header]
    index = _index(report["rows"])
    ordered = sorted(
        report["rows"],
        key=lambda r: (
            ORDER.index(r["target"]) if r["target"] in ORDER else 99,
            r["mode"] != "unary",
            r["concurrency"],
        ),
    )
    for row in ordered:
        key = (row["mode"], row["concurrency"])
        floor = index.get(("floor", *key))
        litellm = index.get(("litellm", *key))
        throughput = f"{_num(row['rps'])} calls/s"
        if row["mode"] == "stream":
            throughput += f" ({_num(row['chunks_per_s'])} chunks/s)"
        cpu = f"{row['cpu_s_per_1k']:.2f}"
        if row.get("upstream_cpu_s_per_1k") is not None:
            cpu += f" (+{row['upstream_cpu_s_per_1k']:.2f} upstream)"
        if row["errors"]:
            throughput += f", {row['errors']} errors"
        rows.append(
            [
                LABELS.get(row["target"], row["target"]),
                row["mode"],
                str(row["concurrency"]),
                throughput,
                f"{row['p50_ms']:.2f}",
                f"{row['p90_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                cpu,
                f"{row['peak_rss_mib']:.0f}",
                _x(_ratio(row["rps"], floor["rps"] if floor else None)),
                _x(_ratio(row["rps"], litellm["rps"] if litellm else None)),
                _x(_ratio(row["p99_ms"], litellm["p99_ms"] if litellm else None)),
                f"{row['loadavg1_at_start']:.2f} / {row['other_busy_cores']:.2f}",
            ]
        )
    count = report.get("count_tokens")
    if count:
        for item in count["rows"]:
            floor = (
                f", gRPC floor {item['floor_ms_per_call']:.2f}"
                if "floor_ms_per_call" in item
                else ""
            )
            rows.append(
                [
                    "modelwire CountToken (× floor: tiktoken in-process)",
                    f"{item['tokens']:,} tokens",
                    "1",
                    f"{_num(item['grpc_tokens_per_s'])} tokens/s (direct "
                    f"{_num(item['direct_tokens_per_s'])})",
                    f"{item['grpc_ms_per_call']:.2f} per call (direct "
                    f"{item['direct_ms_per_call']:.2f}, from bytes "
                    f"{item['direct_from_bytes_ms_per_call']:.2f}{floor})",
                    "",
                    "",
                    "",
                    "",
                    _x(item["ratio"]),
                    "—",
                    "—",
                    _load(count),
                ]
            )
    local = report.get("local_model")
    if local:
        mw, direct = local["modelwire"], local["direct"]
        rows.append(
            [
                "modelwire GenerateStream, gemma-3-270m (× floor: llama-cpp-python directly)",
                f"{local['max_tokens']} tokens, greedy",
                "1",
                f"{mw['tokens_per_s']:.1f} tokens/s (direct {direct['tokens_per_s']:.1f})",
                f"TTFT {mw['ttft_ms']:.1f} (direct {direct['ttft_ms']:.1f})",
                "",
                "",
                "",
                "",
                _x(_ratio(mw["tokens_per_s"], direct["tokens_per_s"])),
                "—",
                "—",
                _load(local),
            ]
        )
    streams = report.get("slow_streams")
    if streams:
        rows.append(
            [
                "modelwire, 1,000 slow streams (1 chunk/s)",
                f"{streams['chunks_per_stream']} chunks each",
                str(streams["streams"]),
                f"{streams['completed']}/{streams['streams']} completed",
                "",
                "",
                "",
                f"{streams['worker_cpu_s']:.2f} total",
                f"{streams['rss_peak_mib']:.0f} (idle {streams['rss_before_mib']:.0f}, "
                f"{streams['rss_per_stream_kib']:.1f} KiB/stream)",
                "—",
                "—",
                "—",
                _load(streams),
            ]
        )
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]
    ]
    return "\n".join(lines)


def console_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for number, row in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if number == 0:
            out.append("  ".join("-" * width for width in widths))
    out.append("")
    out += [
        f"{'MET   ' if v['met'] else 'MISSED' if v['met'] is False else 'n/a   '} {v['target']}: "
        f"{v['measured']}"
        for v in verdicts(report)
    ]
    facade = facade_rows(report)
    if len(facade) > 1:
        out += ["", "HTTP facade against the gRPC path and LiteLLM (same run, same upstream):"]
        widths = [max(len(row[i]) for row in facade) for i in range(len(facade[0]))]
        for number, row in enumerate(facade):
            out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
            if number == 0:
                out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def _cpu_per_unit(row: dict[str, Any] | None, chunks: int) -> float | None:
    """CPU-ms per unary call, or µs per streamed delta (a stream's CPU over its deltas)."""
    if row is None:
        return None
    per_call_ms = float(row["cpu_s_per_1k"])
    return per_call_ms if row["mode"] == "unary" else per_call_ms * 1000 / chunks


def facade_rows(report: dict[str, Any]) -> list[list[str]]:
    """The HTTP facade (oha) against LiteLLM (oha) and against the same worker's gRPC path (ghz),
    per call kind and concurrency: throughput and p99 ratios to LiteLLM, and the server's CPU per
    unary call (CPU-ms) or per streamed delta (µs) for all three."""
    header = [
        "call",
        "c",
        "facade calls/s",
        "× LiteLLM",
        "p99 ms: facade / LiteLLM / gRPC path",
        "p99 × LiteLLM",
        "CPU: facade / gRPC path / LiteLLM",
        "facade CPU × gRPC path",
        "LiteLLM CPU × facade",
    ]
    rows: list[list[str]] = [header]
    index = _index(report["rows"])
    chunks = report["settings"]["chunks"]
    keys = sorted(
        {(r["mode"], r["concurrency"]) for r in report["rows"] if r["target"] == "facade"},
        key=lambda key: (key[0] != "unary", key[1]),
    )
    for mode, level in keys:
        facade = index[("facade", mode, level)]
        grpc_path = index.get(("modelwire-http", mode, level))
        litellm = index.get(("litellm", mode, level))
        unit = "CPU-ms per call" if mode == "unary" else "µs per delta"
        digits = 2 if mode == "unary" else 0
        cpus = [_cpu_per_unit(row, chunks) for row in (facade, grpc_path, litellm)]
        rate = f"{_num(facade['rps'])}"
        if facade["errors"]:
            rate += f", {facade['errors']} errors"
        rows.append(
            [
                mode,
                str(level),
                rate,
                _x(_ratio(facade["rps"], litellm["rps"] if litellm else None), 1),
                " / ".join(
                    "—" if row is None else f"{row['p99_ms']:.1f}"
                    for row in (facade, litellm, grpc_path)
                ),
                _x(_ratio(facade["p99_ms"], litellm["p99_ms"] if litellm else None)),
                " / ".join("—" if cpu is None else f"{cpu:,.{digits}f}" for cpu in cpus)
                + f" {unit}",
                _x(_ratio(cpus[0], cpus[1])),
                _x(_ratio(cpus[2], cpus[0]), 1),
            ]
        )
    return rows


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 13 (docs/benchmarks.md), judged at concurrency 64 where it names one."""
    index = _index(report["rows"])
    found: list[dict[str, Any]] = []

    def at64(target: str, mode: str) -> dict[str, Any] | None:
        return index.get((target, mode, 64))

    def judge(what: str, met: bool | None, measured: str) -> None:
        found.append({"target": what, "met": met, "measured": measured})

    http_unary, http_stream, lite_unary = (
        at64("modelwire-http", "unary"),
        at64("modelwire-http", "stream"),
        at64("litellm", "unary"),
    )
    what = "openai provider → HTTP upstream, unary: ≤ 0.6 CPU-ms per call"
    judge(
        what,
        http_unary["cpu_s_per_1k"] <= 0.6 if http_unary else None,
        f"{http_unary['cpu_s_per_1k']:.2f} CPU-ms per call at c=64"
        if http_unary
        else "not measured",
    )
    what = "the same at c=64, one process: ≥ 8× LiteLLM's throughput and ≤ 1/10 of its p99"
    if http_unary and lite_unary:
        throughput, p99 = (
            http_unary["rps"] / lite_unary["rps"],
            http_unary["p99_ms"] / lite_unary["p99_ms"],
        )
        judge(
            what,
            throughput >= 8 and p99 <= 0.1,
            f"{throughput:.1f}× the throughput, {p99:.2f}× the p99 "
            f"({http_unary['p99_ms']:.1f} vs {lite_unary['p99_ms']:.1f} ms)",
        )
    else:
        judge(what, None, "not measured")
    chunks = report["settings"]["chunks"]
    what = "the same, streamed: ≤ 60 µs of CPU per delta"
    judge(
        what,
        http_stream["cpu_s_per_1k"] / chunks * 1000 <= 60 if http_stream else None,
        f"{http_stream['cpu_s_per_1k'] / chunks * 1000:.0f} µs per delta at c=64 "
        f"({http_stream['cpu_s_per_1k']:.1f} CPU-ms per stream)"
        if http_stream
        else "not measured",
    )
    for mode, threshold, unit in (("unary", 0.7, "calls/s"), ("stream", 0.8, "message rate")):
        row, floor = at64("modelwire", mode), at64("floor", mode)
        what = f"echo provider, {mode}: ≥ {threshold}× the floor's {unit} at c=64"
        judge(
            what,
            row["rps"] / floor["rps"] >= threshold if row and floor else None,
            f"{row['rps'] / floor['rps']:.2f}× ({row['cpu_s_per_1k']:.2f} against "
            f"{floor['cpu_s_per_1k']:.2f} CPU-ms per call)"
            if row and floor
            else "not measured",
        )
    gateway, worker, forwarder, floor = (
        at64("gateway", "unary"),
        at64("modelwire", "unary"),
        at64("forward-floor", "unary"),
        at64("floor", "unary"),
    )
    what = "gateway hop: ≤ +0.3 CPU-ms per unary call"
    if gateway and worker:
        hop = gateway["cpu_s_per_1k"] - worker["cpu_s_per_1k"]
        bare = (
            "; a bare grpc.aio forwarder adds "
            f"{forwarder['cpu_s_per_1k'] - floor['cpu_s_per_1k']:+.2f}"
            if forwarder and floor
            else ""
        )
        judge(
            what,
            hop <= 0.3,
            f"{hop:+.2f} CPU-ms at c=64, {gateway['rps'] / floor['rps']:.2f}× the floor through "
            f"it{bare}"
            if floor
            else f"{hop:+.2f} CPU-ms at c=64{bare}",
        )
    else:
        judge(what, None, "not measured")
    for mode, what in (("unary", "unary"), ("stream", "streamed")):
        facade, lite, grpc_path = (
            at64("facade", mode),
            at64("litellm", mode),
            at64("modelwire-http", mode),
        )
        what = (
            f"HTTP facade (OpenAI Chat Completions), {what}, c=64, one process: ≥ 8× LiteLLM's "
            "throughput and ≤ 1/10 of its p99"
        )
        if facade and lite:
            throughput, p99 = facade["rps"] / lite["rps"], facade["p99_ms"] / lite["p99_ms"]
            if mode == "unary":
                cpu = f"{facade['cpu_s_per_1k']:.2f} CPU-ms per call"
                base = f"{grpc_path['cpu_s_per_1k']:.2f} through gRPC" if grpc_path else ""
                lite_cpu = f"LiteLLM {lite['cpu_s_per_1k']:.2f}"
            else:
                cpu = f"{facade['cpu_s_per_1k'] * 1000 / chunks:.0f} µs per delta"
                base = (
                    f"{grpc_path['cpu_s_per_1k'] * 1000 / chunks:.0f} through gRPC"
                    if grpc_path
                    else ""
                )
                lite_cpu = f"LiteLLM {lite['cpu_s_per_1k'] * 1000 / chunks:.0f}"
            judge(
                what,
                throughput >= 8 and p99 <= 0.1,
                f"{throughput:.1f}× the throughput, {p99:.2f}× the p99 "
                f"({facade['p99_ms']:.1f} vs {lite['p99_ms']:.1f} ms); {cpu} ("
                + ", ".join(part for part in (base, lite_cpu) if part)
                + ")",
            )
        else:
            judge(what, None, "not measured")
    count = report.get("count_tokens")
    big = [row for row in (count or {}).get("rows", []) if row["tokens"] == 100_000]
    found.append(
        {
            "target": "CountToken ≥ 0.9× direct tiktoken on 100k-token prompts",
            "met": big[0]["ratio"] >= 0.9 if big else None,
            "measured": (
                f"{big[0]['ratio']:.2f}× ({big[0]['grpc_ms_per_call']:.1f} vs "
                f"{big[0]['direct_ms_per_call']:.1f} ms per call; "
                f"{big[0]['ratio_from_bytes']:.2f}× against tiktoken on the decoded UTF-8 bytes"
                + (
                    f"; gRPC alone carries the request in {big[0]['floor_ms_per_call']:.1f} ms)"
                    if "floor_ms_per_call" in big[0]
                    else ")"
                )
            )
            if big
            else "not measured",
        }
    )
    local = report.get("local_model")
    if local:
        rate = local["modelwire"]["tokens_per_s"] / local["direct"]["tokens_per_s"]
        extra_ms = local["modelwire"]["ttft_ms"] - local["direct"]["ttft_ms"]
        found.append(
            {
                "target": "local model: ≥ 0.97× llama-cpp-python's tokens/s, time to first token "
                "within 2 ms",
                "met": rate >= 0.97 and extra_ms <= 2,
                "measured": f"tokens/s {rate:.3f}×, time to first token {extra_ms:+.1f} ms "
                f"({local['modelwire']['ttft_ms']:.1f} vs {local['direct']['ttft_ms']:.1f} ms)",
            }
        )
    else:
        found.append(
            {
                "target": "local model: ≥ 0.97× tokens/s, TTFT within 2 ms",
                "met": None,
                "measured": "not measured",
            }
        )
    streams = report.get("slow_streams")
    found.append(
        {
            "target": "1,000 open streams held, under 300 MiB RSS",
            "met": (streams["completed"] == streams["streams"] and streams["rss_peak_mib"] < 300)
            if streams
            else None,
            "measured": (
                f"{streams['completed']}/{streams['streams']} completed, peak "
                f"{streams['rss_peak_mib']:.0f} MiB"
                if streams
                else "not measured"
            ),
        }
    )
    return found


def _run_kind(report: dict[str, Any]) -> str:
    if report.get("name"):
        return f" ({report['name']})"
    return " (quick)" if report["quick"] else ""


def markdown(report: dict[str, Any], png_name: str | None) -> str:
    machine = report["machine"]
    settings = report["settings"]
    others = [row["other_busy_cores"] for row in report["rows"]]
    tools = ", ".join(f"{name} {version}" for name, version in report["tools"].items())
    lines = [
        f"Run `{report['stamp']}`{_run_kind(report)}: {machine['cpus']} × "
        f"{machine['cpu']}, {machine['memory_gib']} GiB, Linux {machine['kernel']}, Python "
        f"{machine['python']}, grpcio {machine['grpcio']}; {tools}. Closed loop at concurrency "
        f"{', '.join(map(str, settings['levels']))}, about {settings['duration_s']:g} s per "
        f"measurement, each after a {settings['pilot_s']:g} s pilot at the same concurrency "
        "(warm-up; it sizes ghz's call count so no call is cut off at the end; oha waits for its "
        f"calls in flight); ghz over {settings['connections']} connections (fewer when c is "
        f"smaller), oha one connection per worker. Streams carry {settings['chunks']} deltas of "
        f"{settings['chunk_text']!r}; unary calls return the same text whole. Took "
        f"{report['elapsed_s'] / 60:.1f} min.",
        "",
        f"Load: 1-minute load average {report['loadavg1_at_start']:.2f} when the run started "
        f"({report['loadavg1_at_end']:.2f} at its end)"
        + (
            "; other processes (not the servers, the upstream, the load generator or the harness) "
            f"used {min(others):.2f}–{max(others):.2f} cores during the measurements (median "
            f"{sorted(others)[len(others) // 2]:.2f}); the load column shows, per row, the load "
            "average when it started (inflated by the previous row's own load) / the cores other "
            "processes used during it."
            if others
            else "."
        ),
        "",
    ]
    if png_name:
        lines += [f"![latency against throughput]({png_name})", ""]
    lines += [_markdown_table(table_rows(report)), ""]
    lines += ["| target | verdict | measured |", "|---|---|---|"]
    for verdict in verdicts(report):
        state = {True: "met", False: "**missed**", None: "not measured"}[verdict["met"]]
        lines.append(f"| {verdict['target']} | {state} | {verdict['measured']} |")
    lines.append("")
    facade = facade_rows(report)
    if len(facade) > 1:
        lines += [
            "HTTP facade against LiteLLM and against the same worker's gRPC path (ghz), in this "
            "run on the same upstream; CPU per unary call in CPU-ms, per streamed delta in µs "
            "(the server processes' CPU over the calls, a stream's over its deltas):",
            "",
            _markdown_table(facade),
            "",
        ]
    if report.get("count_tokens") is None and report.get("failures", {}).get("count"):
        lines.append(f"CountToken failed: {report['failures']['count']}")
    if report.get("failures"):
        lines.append(
            "Failures: " + "; ".join(f"{key}: {value}" for key, value in report["failures"].items())
        )
        lines.append("")
    if report.get("slow_streams"):
        streams = report["slow_streams"]
        lines.append(
            f"Slow streams: {streams['streams']} GenerateStream calls over 4 connections, "
            f"{streams['chunks_per_stream']} chunks {streams['interval_s']:g} s apart, admission "
            f"`max_concurrency = {streams['max_concurrency']}`, `max_queue = "
            f"{streams['max_queue']}`; at most {streams['peak_open']} open at once; worker RSS "
            f"{streams['rss_before_mib']:.0f} MiB idle, {streams['rss_peak_mib']:.0f} MiB peak, "
            f"{streams['rss_after_mib']:.0f} MiB after; {streams['worker_cpu_s']:.2f} CPU s in "
            f"all; errors: {streams['errors'] or 'none'}."
        )
        lines.append("")
    if report.get("verified"):
        lines.append(
            "Each target was checked before it was measured (one unary and one streamed call, "
            "right text, right number of deltas, usage on the last): "
            + "; ".join(f"{key}: {value}" for key, value in report["verified"].items())
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def draw(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["rows"]
    if not rows:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for axis, mode in zip(axes, ("unary", "stream"), strict=True):
        for position, target in enumerate(ORDER):
            series = sorted(
                (r for r in rows if r["target"] == target and r["mode"] == mode),
                key=lambda r: r["concurrency"],
            )
            if not series:
                continue
            color = f"C{position}"
            xs = [r["rps"] for r in series]
            axis.plot(
                xs, [r["p50_ms"] for r in series], "o-", color=color, label=f"{LABELS[target]} p50"
            )
            axis.plot(
                xs,
                [r["p99_ms"] for r in series],
                "x--",
                color=color,
                alpha=0.6,
                label=f"{LABELS[target]} p99",
            )
            for r in series:
                axis.annotate(
                    f"c={r['concurrency']}",
                    (r["rps"], r["p50_ms"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=6,
                    color=color,
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        unit = (
            "calls/s"
            if mode == "unary"
            else f"streams/s ({report['settings']['chunks']} deltas each)"
        )
        axis.set_xlabel(f"throughput, {unit}")
        axis.set_ylabel("latency, ms (whole call)")
        axis.set_title("Generate (unary)" if mode == "unary" else "GenerateStream")
        axis.grid(True, which="both", alpha=0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    machine = report["machine"]
    figure.suptitle(
        "Latency against throughput, closed loop at concurrency "
        f"{', '.join(map(str, report['settings']['levels']))} — {machine['cpus']} CPUs, load "
        "generator on the same machine",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def update_docs(path: Path, generated: str) -> None:
    """Replaces the generated part of docs/benchmarks.md; creates the file with markers if
    needed."""
    block = f"{BEGIN}\n\n{generated.rstrip()}\n\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            text = re.sub(
                re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S
            )
            path.write_text(text)
            return
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    path.write_text(f"# Benchmarks\n\n{block}\n")
