"""The report folder of a load test: summary.md and summary.json, plus plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonize.loadtest.runner import LoadTest, LoadTestResult

THROUGHPUT_PLOT = "throughput_latency.png"
VERSIONS_PLOT = "versions.png"
VERSIONS_CSV = "versions.csv"  # written by the locustfile: second, version, responses
BREAKDOWN_PLOT = "latency_breakdown.png"


def write_report(result: LoadTestResult, out: Path) -> Path:
    """Write the plots, summary.json and summary.md into `out`; return the Markdown path."""
    history = _history(out / "locust_stats_history.csv")
    if history:
        plot_throughput_latency(history, out / THROUGHPUT_PLOT)
    plot_latency_breakdown(result, out / BREAKDOWN_PLOT)
    versions = version_counts(out / VERSIONS_CSV)
    if versions:
        plot_version_shares(versions, out / VERSIONS_PLOT)
    summary = {**result.to_dict(), "model_versions": version_table(versions)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    path = out / "summary.md"
    markdown = summary_markdown(result, with_throughput_plot=bool(history))
    path.write_text(markdown + versions_markdown(versions))
    return path


def version_counts(path: Path) -> dict[str, dict[int, int]]:
    """Responses by model version, then by second (empty when no response named one)."""
    counts: dict[str, dict[int, int]] = {}
    if not path.exists():
        return counts
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            seconds = counts.setdefault(row["version"], {})
            second = int(row["second"])
            seconds[second] = seconds.get(second, 0) + int(row["responses"])
    return counts


def version_table(counts: dict[str, dict[int, int]]) -> list[dict[str, Any]]:
    """Per version: responses, their share, and the first and last second (from the start)."""
    if not counts:
        return []
    start = min(min(seconds) for seconds in counts.values())
    total = sum(sum(seconds.values()) for seconds in counts.values())
    return [
        {
            "version": version,
            "responses": sum(seconds.values()),
            "share": sum(seconds.values()) / total,
            "first_second": min(seconds) - start,
            "last_second": max(seconds) - start,
        }
        for version, seconds in sorted(counts.items(), key=lambda item: min(item[1]))
    ]


def versions_markdown(counts: dict[str, dict[int, int]]) -> str:
    rows = version_table(counts)
    if not rows:
        return ""
    lines = [
        "",
        "## Responses by model version",
        "",
        "| version | responses | share | first second | last second |",
        "|---|---|---|---|---|",
        *[
            f"| {r['version']} | {r['responses']} | {r['share']:.1%} | {r['first_second']} | "
            f"{r['last_second']} |"
            for r in rows
        ],
        "",
        f"![share of responses by model version]({VERSIONS_PLOT})",
        "",
    ]
    return "\n".join(lines)


def plot_version_shares(counts: dict[str, dict[int, int]], path: Path) -> None:
    """Each version's share of each second's responses, stacked: a rollout as it happened."""
    plt = pyplot()
    start = min(min(seconds) for seconds in counts.values())
    end = max(max(seconds) for seconds in counts.values())
    seconds = list(range(start, end + 1))
    totals = [sum(c.get(s, 0) for c in counts.values()) or 1 for s in seconds]
    versions = sorted(counts, key=lambda v: min(counts[v]))
    shares = [
        [counts[v].get(s, 0) / t for s, t in zip(seconds, totals, strict=True)] for v in versions
    ]
    figure, axes = plt.subplots(figsize=(9, 3.5))
    axes.stackplot([s - start for s in seconds], shares, labels=[f"version {v}" for v in versions])
    axes.set_ylim(0, 1)
    axes.set_ylabel("share of responses")
    axes.set_xlabel("seconds")
    axes.legend(loc="upper left")
    save_figure(plt, figure, path, title="Which model version answered")


def _target(test: LoadTest) -> str:
    if test.target == test.url:
        return test.url
    return f"{test.target} (the gateway in front of Triton {test.url})"


def summary_markdown(result: LoadTestResult, with_throughput_plot: bool = True) -> str:
    test, client, server = result.test, result.client, result.server
    lines = [
        f"# Load test: `{test.model}`, scenario `{test.scenario}`",
        "",
        f"{'PASSED' if result.passed else 'FAILED'}: {test.protocol.upper()} to {_target(test)}, "
        f"{_users(test.peak_users)}, {result.seconds:.0f} s"
        + (f", {test.workers} Locust workers" if test.workers else "")
        + f"; server figures from {result.server_source}.",
        "",
        "## Gates",
        "",
        *[f"- {gate.describe()}" for gate in result.gates],
        "",
        "## Client (Locust)",
        "",
        "| requests | failures | throughput | avg | p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|",
        f"| {client.requests} | {client.failures} ({client.failure_ratio:.2%}) | "
        f"{client.rps:.1f} req/s | {client.avg_ms:.1f} ms | {client.p50_ms:.0f} ms | "
        f"{client.p95_ms:.0f} ms | {client.p99_ms:.0f} ms |",
        "",
        "## Server (Triton metrics)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| successes / failures | {server.successes:.0f} / {_failures(server.failures)} |",
        f"| throughput | {server.throughput_rps:.1f} req/s |",
        f"| average request latency | {server.avg_latency_ms:.2f} ms |",
        f"| queue / compute input / infer / output | {server.queue_ms:.2f} / "
        f"{server.compute_input_ms:.2f} / {server.compute_infer_ms:.2f} / "
        f"{server.compute_output_ms:.2f} ms |",
        f"| queue share | {server.queue_share:.1%} |",
        f"| achieved engine batch size | {_number(server.achieved_batch_size, '.2f')} |",
        f"| p95 (Triton's latency summary, last minute) | {_number(server.p95_ms, '.1f')} ms |",
        f"| max pending requests | {_number(server.max_pending, '.0f')} |",
        "",
        f"Consistency: Locust successes {result.client_successes} vs server successes "
        f"{server.successes:.0f}: {'within' if result.consistent else 'NOT within'} the "
        f"{result.consistency_allowance:.0f} allowed (a request in flight per user + 2%).",
        "",
    ]
    if result.ramp:
        lines += _ramp_lines(result.ramp)
    if with_throughput_plot:
        lines += [f"![throughput and latency]({THROUGHPUT_PLOT})", ""]
    lines += [f"![latency breakdown]({BREAKDOWN_PLOT})", ""]
    lines += ["Locust's own output: `locust.html`, `locust_stats*.csv`, `locust_failures.csv`.", ""]
    return "\n".join(lines)


def plot_throughput_latency(history: list[dict[str, float]], path: Path) -> None:
    plt = pyplot()
    t0 = history[0]["Timestamp"]
    seconds = [row["Timestamp"] - t0 for row in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(seconds, [r["Requests/s"] for r in history], label="requests/s")
    top.plot(seconds, [r["Failures/s"] for r in history], label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    users = top.twinx()
    users.step(seconds, [r["User Count"] for r in history], color="tab:gray", where="post")
    users.set_ylabel("users", color="tab:gray")
    top.legend(loc="upper left")
    for key, label in (("50%", "p50"), ("95%", "p95")):
        bottom.plot(seconds, [r[key] for r in history], label=label)
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    save_figure(plt, figure, path, title="Throughput and client latency over time")


def plot_latency_breakdown(result: LoadTestResult, path: Path) -> None:
    """Average client latency split into Triton's queue/compute phases and the rest."""
    plt = pyplot()
    server = result.server
    phases = [
        ("queue", server.queue_ms),
        ("compute input", server.compute_input_ms),
        ("compute infer", server.compute_infer_ms),
        ("compute output", server.compute_output_ms),
    ]
    phases.append(("other server", max(0.0, server.avg_latency_ms - sum(v for _, v in phases))))
    phases.append(("network + client", max(0.0, result.client.avg_ms - server.avg_latency_ms)))
    figure, axis = plt.subplots(figsize=(9, 2.6))
    left = 0.0
    for label, value in phases:
        axis.barh(["average request"], [value], left=left, label=f"{label} {value:.1f} ms")
        left += value
    axis.set_xlabel("ms")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize="small")
    axis.set_title("Client latency versus server latency breakdown")
    save_figure(plt, figure, path, bbox_inches="tight")


def _ramp_lines(ramp: dict[str, Any]) -> list[str]:
    knee = ramp.get("knee")
    if knee:
        verdict = (
            f"knee at {knee['users']} users ({knee['rps']:.1f} req/s, p95 {knee['p95_ms']:.0f} ms)"
        )
    elif ramp.get("breached"):
        verdict = "the SLO broke at the first step"
    else:
        verdict = "no knee: the SLO held up to the last step"
    lines = ["## Ramp", "", f"Result: {verdict}.", "", "| users | req/s | p95 | failures |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {s['users']} | {s['rps']:.1f} | {s['p95_ms']:.0f} ms | {s['failure_ratio']:.2%} |"
        for s in ramp.get("steps", [])
    ]
    return [*lines, ""]


def _history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    keys = ("Timestamp", "User Count", "Requests/s", "Failures/s", "50%", "95%")
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                rows.append({k: _float(row.get(k)) for k in keys})
    return rows


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "N/A") else 0.0
    except ValueError:
        return 0.0


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _users(count: int) -> str:
    return f"{count} user" if count == 1 else f"{count} users"


def _failures(failures: dict[str, float]) -> str:
    return ", ".join(f"{n:.0f} {r}" for r, n in failures.items()) or "0"


def save_figure(plt: Any, figure: Any, path: Path, title: str = "", **options: Any) -> None:
    """Title `figure`, lay it out, write it to `path` as a PNG and free it."""
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100, **options)
    plt.close(figure)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
