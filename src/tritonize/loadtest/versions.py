"""Responses counted per second and model version: which build answered, while a rollout moves
a model under load.

Each Locust process counts the responses of its own users; a worker hands its counts to the
master with each stats report, and the master writes the whole run's counts as it quits. The
report (`report.py`) reads that file back.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

HEADER = ("second", "version", "responses")


class VersionTally:
    """Responses by (Unix second, model version)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[int, str]] = Counter()

    def count(self, version: str, second: float) -> None:
        """One response of `version` at `second`; a response that named no version is not
        counted (the OpenAI gateway's)."""
        if version:
            self._counts[(int(second), version)] += 1

    def drain(self) -> list[list[int | str]]:
        """The counts so far as rows to send to the master, forgotten here: each is sent once."""
        rows: list[list[int | str]] = [[s, v, n] for (s, v), n in self._counts.items()]
        self._counts.clear()
        return rows

    def merge(self, rows: Iterable[Sequence[int | str]]) -> None:
        """Add rows a worker sent (`drain`'s)."""
        for second, version, responses in rows:
            self._counts[(int(second), str(version))] += int(responses)

    def rows(self) -> list[tuple[int, str, int]]:
        """(second, version, responses), by second then version."""
        return [(s, v, n) for (s, v), n in sorted(self._counts.items())]

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            writer.writerows(self.rows())


def stream_problem(versions: Sequence[str]) -> str | None:
    """What is wrong with the versions of one stream's responses: one request is answered by
    one model version, so a stream that names two lost its way (or None when all agree)."""
    named = sorted({v for v in versions if v})
    if len(named) > 1:
        return f"the stream's responses came from model versions {' and '.join(named)}"
    return None


def stream_version(versions: Sequence[str]) -> str:
    """The version that made a stream (empty when none was named or they disagree)."""
    named = {v for v in versions if v}
    return named.pop() if len(named) == 1 else ""
