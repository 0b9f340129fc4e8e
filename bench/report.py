"""Renders a bench/run.py report: the one table (every row as a ratio to the floor and to LiteLLM),
the paced streams' table (bench/paced.py), the verdict table against issue 27's targets, the HTTP
facade set against the gRPC path and LiteLLM, the latency-vs-throughput PNG, and the generated part
of docs/benchmarks.md (between the BEGIN/END markers; the prose around it is written by hand)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED: bench/run.py writes this part; edit the prose outside it -->"
END = "<!-- END GENERATED -->"

LABELS = {
    "floor": "floor: bare grpc.aio",
    "modelwire": "modelwire, echo provider",
    "floor-paced": "floor, deltas paced apart",
    "modelwire-paced": "modelwire, echo provider, deltas paced apart",
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
            floor_note = (
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
                    f"{item['direct_from_bytes_ms_per_call']:.2f}{floor_note})",
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
                f"modelwire, {streams['streams']:,} slow streams "
                f"(a chunk every {streams['interval_s']:g} s)",
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


def _console(rows: list[list[str]]) -> list[str]:
    """A table in aligned columns, a rule under its header; nothing when it has no rows."""
    if len(rows) < 2:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return [lines[0], "  ".join("-" * width for width in widths), *lines[1:], ""]


def console_table(report: dict[str, Any]) -> str:
    out = _console(table_rows(report))
    if report.get("paced"):
        out += ["Paced streams:", *_console(paced_rows(report["paced"]))]
    out += [
        f"{'MET   ' if v['met'] else 'MISSED' if v['met'] is False else 'n/a   '} {v['path']}: "
        f"{v['measured']} (target {v['target']}" + (f"; {v['detail']})" if v["detail"] else ")")
        for v in verdicts(report)
    ]
    facade = _console(facade_rows(report))
    if facade:
        out += ["", "HTTP facade against the gRPC path and LiteLLM (same run, same upstream):"]
        out += facade
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


Verdict = dict[str, Any]


def _verdict(path: str, target: str, met: bool | None, measured: str, detail: str) -> Verdict:
    return {"path": path, "target": target, "met": met, "measured": measured, "detail": detail}


def _unmeasured(path: str, target: str) -> Verdict:
    return _verdict(path, target, None, "not measured", "")


def _paced_row(report: dict[str, Any], target: str, streams: int) -> dict[str, Any] | None:
    for row in (report.get("paced") or {}).get("rows", []):
        if row["target"] == target and row["streams"] == streams:
            return dict(row)
    return None


def _paced_floors(report: dict[str, Any], streams: int) -> str:
    """The paced floors' CPU per token at `streams`, for a verdict's detail: what grpc.aio alone,
    and grpc.aio with aiohttp relaying the upstream, cost on these cores (bench/paced.py)."""
    found = []
    floors = (("grpc-floor", "bare grpc.aio"), ("sse-floor", "grpc.aio + aiohttp relay"))
    for target, name in floors:
        row = _paced_row(report, target, streams)
        if row and row["cpu_us_per_token"]:
            found.append(f"{name} {row['cpu_us_per_token']:.1f}")
    return f"; floors: {', '.join(found)} CPU-µs per token" if found else ""


def verdicts(report: dict[str, Any]) -> list[Verdict]:
    """Issue 27's targets, each a ratio from this one run (docs/benchmarks.md, "The verdict
    table"): the measured value, the target, met or missed, and the figures it comes from."""
    index = _index(report["rows"])
    found: list[Verdict] = []

    def at64(target: str, mode: str) -> dict[str, Any] | None:
        return index.get((target, mode, 64))

    # Paced streams, at 1,000 streams: the one-process worker against LiteLLM.
    path = "paced streams: CPU per delivered token, modelwire vs LiteLLM (1,000 streams)"
    mw, lite, pn = (
        _paced_row(report, "modelwire", 1000),
        _paced_row(report, "litellm", 1000),
        _paced_row(report, "modelwire-pN", 1000),
    )
    if mw and lite and mw["cpu_us_per_token"] and lite["cpu_us_per_token"]:
        ratio = mw["cpu_us_per_token"] / lite["cpu_us_per_token"]
        found.append(
            _verdict(
                path,
                "≤ 1/10",
                ratio <= 0.1,
                f"1/{1 / ratio:.1f}" if ratio else "0",
                f"{mw['cpu_us_per_token']:.1f} vs {lite['cpu_us_per_token']:.1f} CPU-µs per token"
                + (
                    f"; --processes N {pn['cpu_us_per_token']:.1f}"
                    if pn and pn["cpu_us_per_token"]
                    else ""
                )
                + _paced_floors(report, 1000),
            )
        )
    else:
        found.append(_unmeasured(path, "≤ 1/10"))
    path = "paced streams: added inter-token p99 at 1,000 streams (modelwire, one process)"
    p99 = (mw or {}).get("added_gap_ms", {}) or {}
    if mw and "p99" in p99:
        found.append(
            _verdict(
                path,
                "≤ 5 ms",
                p99["p99"] <= 5,
                f"{p99['p99']:.2f} ms",
                f"p50 {p99['p50']:.2f} ms, {mw['errors']} errors"
                + (
                    f"; --processes N p99 {pn['added_gap_ms']['p99']:.2f} ms"
                    if pn and pn.get("added_gap_ms")
                    else ""
                )
                + (
                    f"; LiteLLM p99 {lite['added_gap_ms']['p99']:.2f} ms"
                    if lite and lite.get("added_gap_ms")
                    else ""
                )
                + (
                    f"; grpc.aio + aiohttp relay p99 {relay['added_gap_ms']['p99']:.2f} ms"
                    if (relay := _paced_row(report, "sse-floor", 1000))
                    and relay.get("added_gap_ms")
                    else ""
                ),
            )
        )
    else:
        found.append(_unmeasured(path, "≤ 5 ms"))

    http_unary, lite_unary = at64("modelwire-http", "unary"), at64("litellm", "unary")
    path = "openai path, unary c=64, vs LiteLLM: throughput, p99"
    if http_unary and lite_unary:
        throughput = http_unary["rps"] / lite_unary["rps"]
        p99_ratio = http_unary["p99_ms"] / lite_unary["p99_ms"]
        found.append(
            _verdict(
                path,
                "≥ 10×, ≤ 0.1×",
                throughput >= 10 and p99_ratio <= 0.1,
                f"{throughput:.1f}×, {p99_ratio:.2f}×",
                f"{http_unary['rps']:,.0f} vs {lite_unary['rps']:,.0f} calls/s, p99 "
                f"{http_unary['p99_ms']:.1f} vs {lite_unary['p99_ms']:.1f} ms",
            )
        )
    else:
        found.append(_unmeasured(path, "≥ 10×, ≤ 0.1×"))
    http_stream, lite_stream = at64("modelwire-http", "stream"), at64("litellm", "stream")
    path = "openai path, streamed c=64 (100 instant deltas), vs LiteLLM: deltas/s"
    if http_stream and lite_stream:
        ratio = http_stream["chunks_per_s"] / lite_stream["chunks_per_s"]
        found.append(
            _verdict(
                path,
                "≥ 10×",
                ratio >= 10,
                f"{ratio:.1f}×",
                f"{http_stream['chunks_per_s']:,.0f} vs {lite_stream['chunks_per_s']:,.0f} "
                "deltas/s",
            )
        )
    else:
        found.append(_unmeasured(path, "≥ 10×"))
    for mode, worker, floor_key, path, threshold in (
        ("unary", "modelwire", "floor", "echo worker, unary c=64, vs floor: calls/s", 0.6),
        (
            "stream",
            "modelwire-paced",
            "floor-paced",
            "echo worker, streamed c=64, deltas paced apart (one per message), vs floor paced "
            "alike: streams/s",
            1.0,
        ),
    ):
        row, floor = at64(worker, mode), at64(floor_key, mode)
        if row and floor:
            ratio = row["rps"] / floor["rps"]
            found.append(
                _verdict(
                    path,
                    f"≥ {threshold:.1f}×",
                    ratio >= threshold,
                    f"{ratio:.2f}×",
                    f"{row['rps']:,.0f} vs {floor['rps']:,.0f} calls/s; {row['cpu_s_per_1k']:.2f} "
                    f"vs {floor['cpu_s_per_1k']:.2f} CPU-ms per call",
                )
            )
        else:
            found.append(_unmeasured(path, f"≥ {threshold:.1f}×"))
    gateway, worker_row, forwarder, floor = (
        at64("gateway", "unary"),
        at64("modelwire", "unary"),
        at64("forward-floor", "unary"),
        at64("floor", "unary"),
    )
    path = "gateway: added CPU per call, vs the bare forwarder's added CPU (unary c=64)"
    if gateway and worker_row and forwarder and floor:
        hop = gateway["cpu_s_per_1k"] - worker_row["cpu_s_per_1k"]
        bare = forwarder["cpu_s_per_1k"] - floor["cpu_s_per_1k"]
        ratio = hop / bare if bare > 0 else None
        found.append(
            _verdict(
                path,
                "≤ 1.3×",
                ratio is not None and ratio <= 1.3,
                f"{ratio:.2f}×" if ratio is not None else "—",
                f"{hop:+.2f} vs {bare:+.2f} CPU-ms per call",
            )
        )
    else:
        found.append(_unmeasured(path, "≤ 1.3×"))
    local = report.get("local_model")
    path = "local model vs llama-cpp-python: tokens/s, time to first token"
    if local:
        rate = local["modelwire"]["tokens_per_s"] / local["direct"]["tokens_per_s"]
        extra_ms = local["modelwire"]["ttft_ms"] - local["direct"]["ttft_ms"]
        found.append(
            _verdict(
                path,
                "≥ 0.97×, within 5 ms",
                rate >= 0.97 and extra_ms <= 5,
                f"{rate:.3f}×, {extra_ms:+.1f} ms",
                f"{local['modelwire']['tokens_per_s']:.1f} vs "
                f"{local['direct']['tokens_per_s']:.1f} tokens/s, TTFT "
                f"{local['modelwire']['ttft_ms']:.1f} vs {local['direct']['ttft_ms']:.1f} ms",
            )
        )
    else:
        found.append(_unmeasured(path, "≥ 0.97×, within 5 ms"))
    count = report.get("count_tokens")
    big = [row for row in (count or {}).get("rows", []) if row["tokens"] == 100_000]
    path = "CountToken, 100k tokens, vs tiktoken in-process"
    if big:
        found.append(
            _verdict(
                path,
                "≥ 0.85×",
                big[0]["ratio"] >= 0.85,
                f"{big[0]['ratio']:.2f}×",
                f"{big[0]['grpc_ms_per_call']:.1f} vs {big[0]['direct_ms_per_call']:.1f} ms per "
                f"call; {big[0]['ratio_from_bytes']:.2f}× against tiktoken on the decoded bytes"
                + (
                    f"; gRPC alone carries the request in {big[0]['floor_ms_per_call']:.1f} ms"
                    if "floor_ms_per_call" in big[0]
                    else ""
                ),
            )
        )
    else:
        found.append(_unmeasured(path, "≥ 0.85×"))
    streams = report.get("slow_streams")
    path = "10,000 open slow streams in one worker: peak RSS"
    if streams and streams["streams"] >= 10_000:
        held = streams["completed"] == streams["streams"]
        found.append(
            _verdict(
                path,
                "≤ 600 MiB, all held",
                held and streams["rss_peak_mib"] <= 600,
                f"{streams['rss_peak_mib']:.0f} MiB",
                f"{streams['completed']:,}/{streams['streams']:,} completed, "
                f"{streams['peak_open']:,} open at once, idle {streams['rss_before_mib']:.0f} MiB",
            )
        )
    else:
        found.append(_unmeasured(path, "≤ 600 MiB, all held"))
    return found


def verdict_rows(report: dict[str, Any]) -> list[list[str]]:
    """The verdict table: header, then one row per target."""
    rows = [["path", "measured", "target", "verdict", "from"]]
    for verdict in verdicts(report):
        state = {True: "met", False: "**missed**", None: "not measured"}[verdict["met"]]
        rows.append(
            [verdict["path"], verdict["measured"], verdict["target"], state, verdict["detail"]]
        )
    return rows


PACED_HEADER = [
    "target",
    "streams",
    "tokens/s delivered (offered)",
    "added gap p50 / p99 ms",
    "token delay p50 / p99 ms",
    "first token p50 / p99 ms",
    "CPU-µs per token",
    "server cores",
    "harness cores: upstream + load generator",
    "messages with several tokens",
    "errors",
    "load",
]


def _ms(values: dict[str, float] | None, *keys: str) -> str:
    return " / ".join(f"{values[key]:.2f}" for key in keys) if values else "—"


def paced_rows(paced: dict[str, Any]) -> list[list[str]]:
    rows = [PACED_HEADER]
    for row in paced["rows"]:
        errors = str(row["errors"]) + (
            f" ({', '.join(f'{kind}: {n}' for kind, n in row['error_kinds'].items())})"
            if row["error_kinds"]
            else ""
        )
        rows.append(
            [
                row["label"],
                f"{row['streams']:,}",
                f"{row['tokens_per_s']:,.0f} ({row['offered_tokens_per_s']:,})",
                _ms(row["added_gap_ms"], "p50", "p99"),
                _ms(row["lateness_ms"], "p50", "p99"),
                _ms(row.get("first_token_ms"), "p50", "p99"),
                "—" if row["cpu_us_per_token"] is None else f"{row['cpu_us_per_token']:.1f}",
                f"{row['server_cores']:.2f}",
                f"{row['upstream_cores']:.2f} + {row['loadgen_cores']:.2f}",
                f"{row['messages_with_several_tokens']:,} of {row['messages']:,}",
                errors,
                f"{row['loadavg1_at_start']:.2f} / {row['other_busy_cores']:.2f}",
            ]
        )
    return rows


def _over(paced: dict[str, Any], key: str) -> str:
    count = paced["first_over"].get(key)
    return (
        f"> {max(paced['counts']):,}"
        if count is None
        else f"≤ {count:,}"
        + (
            f" (held at {max(c for c in paced['counts'] if c < count):,})"
            if any(c < count for c in paced["counts"])
            else ""
        )
    )


def paced_section(paced: dict[str, Any]) -> list[str]:
    """The paced rows in markdown: how they were run, the table, where each target's added p99
    passes the threshold."""
    labels = {row["target"]: row["label"] for row in paced["rows"]}
    lines = [
        f"Paced streams (bench/paced.py): {', '.join(f'{c:,}' for c in paced['counts'])} "
        f"concurrent streams of {paced['tokens_per_stream']} tokens at {paced['rate']} tokens/s, "
        f"back to back, from bench/pacedload (Go); each row measured over {paced['window_s']:g} s "
        f"after the ramp and a {paced['warmup_s']:g} s warm-up. Added gap: per consecutive pair "
        "of tokens, the gap at the caller minus the gap the upstream put between them; token "
        "delay: the caller's receipt minus the upstream's send time; first token: from the call "
        "to its first token; CPU: the server process tree's over the window per token delivered "
        "in it. The upstream called directly is the measurement's floor: what the upstream and "
        "the load generator themselves add on these cores (its server cores are the upstream's).",
        "",
        _markdown_table(paced_rows(paced)),
        "",
        f"Stream count where the added p99 passes {paced['threshold_ms']:g} ms: "
        + "; ".join(f"{labels[key]} {_over(paced, key)}" for key in paced["first_over"])
        + ".",
        "",
    ]
    if paced["failures"]:
        lines += [
            "Paced failures: "
            + "; ".join(f"{key}: {value}" for key, value in paced["failures"].items()),
            "",
        ]
    return lines


def paced_markdown(report: dict[str, Any]) -> str:
    """`make bench-paced` alone: bench/results/<stamp>-paced.md."""
    machine = report["machine"]
    return "\n".join(
        [
            f"Run `{report['stamp']}` (paced): {machine['cpus']} × {machine['cpu']}, Python "
            f"{machine['python']}, grpcio {machine['grpcio']}; load average "
            f"{report['loadavg1_at_start']:.2f} at the start, {report['loadavg1_at_end']:.2f} at "
            f"the end; took {report['elapsed_s'] / 60:.1f} min.",
            "",
            *paced_section(report["paced"]),
        ]
    )


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
    if report.get("paced"):
        lines += paced_section(report["paced"])
    lines += [
        "Verdicts against issue 27's targets, each a ratio from this run:",
        "",
        _markdown_table(verdict_rows(report)),
        "",
    ]
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
            f"Slow streams: {streams['streams']:,} GenerateStream calls, "
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
            "Each target was checked before it was measured (one unary and one streamed call: "
            "the right text, whole and concatenated from the deltas, usage on the last message; "
            "the paced targets one delta per message): "
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
