"""How closely a candidate build answers like the serving one.

Two figures: on the serving build's golden records (the candidate judged against what the
serving build was built to answer, by the task's own golden check and tolerances), and on a
sample of texts (both builds asked the same, their responses compared output by output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonize.client import TritonizeClient
from tritonize.errors import TritonizeError
from tritonize.tasks import task_named
from tritonize.tasks.base import Outcome, golden_records
from tritonize.triton_models.compare import disagreement

# The load tests' varied texts (read here as a file: importing the Locust users patches the
# process with gevent).
DEFAULT_SAMPLE = Path(__file__).parents[1] / "loadtest" / "texts.txt"
SAMPLE_NEW_TOKENS = 16  # a generation sample's continuation, greedy


@dataclass(frozen=True)
class Agreement:
    what: str
    agreed: int
    compared: int
    failed: int = 0  # requests that failed on either build
    example: str = ""  # one disagreement, in words

    @property
    def share(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    def describe(self) -> str:
        text = f"{self.what}: {self.agreed}/{self.compared} agree ({self.share:.1%})"
        if self.failed:
            text += f", {self.failed} failed"
        return text + (f"; e.g. {self.example}" if self.example else "")


def sample_texts(path: Path | None, size: int, option: str = "--sample") -> tuple[str, ...]:
    """The first `size` texts of `path` (one per line; default: the built-in set); errors
    name the `option` that gave the path."""
    source = path or DEFAULT_SAMPLE
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TritonizeError(f"{option} {source}: cannot read it as text ({exc})") from None
    texts = tuple(line for line in lines if line.strip())[:size]
    if not texts:
        raise TritonizeError(f"{option} {source}: no texts (one per line expected)")
    return texts


def golden_agreement(
    client: TritonizeClient, candidate: str, serving_golden: dict[str, Any]
) -> Agreement:
    """The candidate judged record by record against the serving build's golden file."""
    task = task_named(serving_golden["task"])
    agreed = failed = 0
    example = ""
    records = golden_records(serving_golden)
    for record in records:
        judged = task.judge_record(client, candidate, record)
        agreed += judged.outcome is Outcome.AGREE
        failed += judged.outcome is Outcome.FAILED
        if judged.outcome is not Outcome.AGREE and not example:
            example = judged.detail
    return Agreement("golden records of the serving build", agreed, len(records), failed, example)


def sample_agreement(
    client: TritonizeClient, serving: str, candidate: str, task_name: str, texts: Sequence[str]
) -> Agreement:
    """Both builds asked each text; a text agrees when every output does (texts, labels and
    flags equal; numbers within a cosine of `MIN_COSINE` per row)."""
    task = task_named(task_name)
    generates = "text_input" in {t.name for t in task.inputs}
    agreed = failed = 0
    example = ""
    for text in texts:
        try:
            a, b = (_answer(client, model, task, text, generates) for model in (serving, candidate))
        except TritonizeError:
            failed += 1
            continue
        problem = disagreement(a, b)
        agreed += problem is None
        if problem and not example:
            example = f"{text[:40]!r}: {problem}"
    return Agreement("sample texts", agreed, len(texts), failed, example)


def _answer(
    client: TritonizeClient, model: str, task: Any, text: str, generates: bool
) -> dict[str, np.ndarray]:
    if generates:
        whole = "".join(client.generate(model, text, max_tokens=SAMPLE_NEW_TOKENS))
        return {"text_output": np.array([whole], dtype=object)}
    return client.infer_inputs(model, task.request([text]))
