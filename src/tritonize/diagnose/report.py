"""What diagnose was asked to look at, and what it found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonize.diagnose.folder import Folder
from tritonize.diagnose.problems import Gap, Problem


@dataclass(frozen=True)
class Options:
    """What to look at; everything but `url` and `out` is optional."""

    url: str
    out: Path
    metrics_url: str | None = None
    prometheus: str | None = None
    log_file: Path | None = None
    repository: Path | None = None
    api_key: str | None = None
    sample_s: float = 2.0  # between the two metrics scrapes
    pending_limit: int = 8  # pending requests that count as saturated without a max_queue_size
    log_lines: int = 200
    verify_requests: int = 16  # smoke requests of each verify; 0 skips verify
    timeout_s: float = 10.0


@dataclass
class Diagnosis:
    folder: Folder
    reachable: bool = True
    problems: list[Problem] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 nothing wrong, 1 problems found, 2 the server could not be reached at all."""
        return 2 if not self.reachable else 1 if self.problems else 0

    @property
    def kinds(self) -> set[str]:
        return {problem.kind for problem in self.problems}

    def add(self, problem: Problem) -> None:
        if all((p.kind, p.subject) != (problem.kind, problem.subject) for p in self.problems):
            self.problems.append(problem)

    def summary(self) -> str:
        lines = [f"findings in {self.folder.path}/ ({len(self.folder.files) + 2} files)"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [problem.describe() for problem in self.problems]
        else:
            lines.append("no problem found")
        if self.gaps:
            lines.append("not gathered:")
            lines += [f"  {gap.part}: {gap.reason}" for gap in self.gaps]
        return "\n".join(lines)
