"""The load-test report's responses by model version: counted per second, tabled, plotted."""

from __future__ import annotations

import csv
from pathlib import Path

from tritonize.loadtest.report import (
    plot_version_shares,
    version_counts,
    version_table,
    versions_markdown,
)
from tritonize.loadtest.versions import VersionTally, stream_problem, stream_version


def write_counts(path: Path, rows: list[tuple[int, str, int]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["second", "version", "responses"])
        writer.writerows(rows)
    return path


def test_a_rollout_reads_as_one_version_then_the_other(tmp_path: Path) -> None:
    rows = [(100, "1", 30), (101, "1", 20), (101, "2", 10), (102, "2", 40), (102, "2", 5)]
    counts = version_counts(write_counts(tmp_path / "versions.csv", rows))
    assert counts == {"1": {100: 30, 101: 20}, "2": {101: 10, 102: 45}}
    table = version_table(counts)
    assert [(r["version"], r["responses"], r["first_second"], r["last_second"]) for r in table] == [
        ("1", 50, 0, 1),
        ("2", 55, 1, 2),
    ]
    assert abs(sum(r["share"] for r in table) - 1) < 1e-9
    markdown = versions_markdown(counts)
    assert "## Responses by model version" in markdown and "| 2 | 55 | 52.4% | 1 | 2 |" in markdown
    plot_version_shares(counts, tmp_path / "versions.png")
    assert (tmp_path / "versions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_versions_no_section(tmp_path: Path) -> None:
    assert version_counts(tmp_path / "absent.csv") == {}
    assert versions_markdown({}) == "" and version_table({}) == []


def test_the_master_counts_every_response_of_its_own_and_its_workers(tmp_path: Path) -> None:
    """Each process tallies its responses; a worker's tally, drained into its stats report,
    adds to the master's, and each response counts once however often the worker reports."""
    master, worker = VersionTally(), VersionTally()
    for second, version in [(100.2, "1"), (100.9, "1"), (101.5, "2")]:
        master.count(version, second)
    worker.count("1", 100.4)
    worker.count("", 100.5)  # a response that named no version (the OpenAI gateway's)
    master.merge(worker.drain())
    worker.count("2", 102.0)
    master.merge(worker.drain())
    master.merge(worker.drain())  # nothing new since: adds nothing
    assert master.rows() == [(100, "1", 3), (101, "2", 1), (102, "2", 1)]

    master.write_csv(tmp_path / "versions.csv")
    assert version_counts(tmp_path / "versions.csv") == {"1": {100: 3}, "2": {101: 1, 102: 1}}


def test_a_stream_is_answered_by_one_version() -> None:
    assert stream_problem(["2", "2", "2"]) is None and stream_version(["2", "2"]) == "2"
    assert stream_problem(["", "1"]) is None and stream_version(["", "1"]) == "1"
    assert stream_problem([]) is None and stream_version([]) == ""
    mixed = ["1", "1", "2"]
    assert stream_problem(mixed) == "the stream's responses came from model versions 1 and 2"
    assert stream_version(mixed) == ""  # counted under neither: it is a failure
