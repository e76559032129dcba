"""Named entities served by a real tritonserver, over HTTP and gRPC: transformers' pipeline
(aggregation_strategy="simple", its tokenizer cut at the same window) on texts in several
scripts, `tritonize verify` against the build's golden file, and bad texts refused by name while
the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import Pipeline, pipeline

from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer

from .conftest import NEW_TASKS, TASKS_MAX_BATCH, TASKS_MAX_SEQ, run_verify

NER = "ner"
CHECKPOINT = NEW_TASKS[NER][1]
SCORE_TOLERANCE = 1e-4
ENTITY_KEYS = {"text", "label", "score", "start", "end"}

TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on 3 May 2021.",
    "Die Bundesregierung in Berlin, Baden-Württemberg und München: Grüße aus Köln!",
    "François Hollande a visité l'Élysée à Paris, près de la Tour Eiffel.",
    "El señor José Pérez vive en Málaga, España; ¿y tú? Sí, 42 años.",
    "北京大学位于中国北京市海淀区。",
    "Владимир Путин встретился с Ангелой Меркель в Москве.",
    "東京タワーは日本の東京にあります。",
    "محمد يعيش في القاهرة",
    "Apple Inc. 🍎 raised $1,000,000 in 2023!!! 🚀🚀",
    "New   York    City  has   repeated   spaces.",
    "Ünïcödé àccénts: Zoë, Chloé, Noël, Søren Kierkegaard.",
    "Hi",
    "Tabs\tand\nnew lines, zero\u200bwidth, Cafe\u0301 (NFD), 👩\u200d👩\u200d👧 family.",
    "ＡＢＣ　全角 ﬁnance ½ Ⅻ ǅ: compatibility characters in Tōkyō.",
    " ".join(["Barack Obama visited Nairobi, Kenya, in July 2015."] * 6),  # past the window
]


@cache
def reference_pipeline(checkpoint: Path) -> Pipeline:
    """transformers' own token classification, its tokenizer truncating at the same window."""
    ner = pipeline("token-classification", model=str(checkpoint), aggregation_strategy="simple")
    assert ner.tokenizer is not None
    ner.tokenizer.model_max_length = TASKS_MAX_SEQ
    return ner


def reference_entities(checkpoint: Path, texts: list[str]) -> list[list[dict[str, Any]]]:
    return [reference_pipeline(checkpoint)(text) for text in texts]


def text_tokens(checkpoint: Path, text: str) -> int:
    """Tokens of the whole text, special tokens included, before any truncation."""
    tokenizer = reference_pipeline(checkpoint).tokenizer
    assert tokenizer is not None
    return len(tokenizer(text, truncation=False)["input_ids"])


def served(client: TritonizeClient, texts: list[str]) -> tuple[list[list[dict]], list[bool]]:
    """ENTITIES (decoded) and TRUNCATED of every text, in requests of at most the batch."""
    entities: list[list[dict]] = []
    truncated: list[bool] = []
    for first in range(0, len(texts), TASKS_MAX_BATCH):
        out = client.infer_inputs(NER, {"TEXT": texts[first : first + TASKS_MAX_BATCH]})
        entities += [json.loads(item) for item in out["ENTITIES"][:, 0]]
        truncated += out["TRUNCATED"][:, 0].tolist()
    return entities, truncated


def assert_same_entities(text: str, found: list[dict], wanted: list[dict]) -> None:
    """Same label and character span per entity, close scores, text equal to its span."""
    assert all(set(entity) == ENTITY_KEYS for entity in found), found
    assert [(e["label"], e["start"], e["end"]) for e in found] == [
        (e["entity_group"], e["start"], e["end"]) for e in wanted
    ], text
    assert [e["text"] for e in found] == [text[e["start"] : e["end"]] for e in found]
    np.testing.assert_allclose(
        [e["score"] for e in found], [float(e["score"]) for e in wanted],
        atol=SCORE_TOLERANCE, rtol=0, err_msg=text,
    )  # fmt: skip


def test_entities_equal_the_transformers_pipeline(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    checkpoint = tiny_checkpoint(CHECKPOINT)
    entities, truncated = served(tasks_client, TEXTS)
    expected = reference_entities(checkpoint, TEXTS)
    for text, found, wanted in zip(TEXTS, entities, expected, strict=True):
        assert_same_entities(text, found, wanted)
    assert truncated == [text_tokens(checkpoint, text) > TASKS_MAX_SEQ for text in TEXTS]
    assert truncated[-1] and not any(truncated[:-1])
    labels = {entity["label"] for found in entities for entity in found}
    assert len(labels) >= 3 and sum(map(len, entities)) > len(TEXTS)  # not one label or span


def test_texts_batched_together_by_the_server_keep_their_own_entities(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """One text per request, sent at once: the batcher pads short texts to long ones."""
    expected = reference_entities(tiny_checkpoint(CHECKPOINT), TEXTS)

    def one_text(index: int) -> list[dict]:
        with TritonizeClient(tasks_client.url, tasks_client.protocol) as client:
            return client.entities(NER, [TEXTS[index % len(TEXTS)]])[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_text, range(2 * len(TEXTS))))
    for index, found in enumerate(answers):
        text = TEXTS[index % len(TEXTS)]
        assert_same_entities(text, found, expected[index % len(TEXTS)])


def test_100kb_text_is_truncated_and_flagged_not_refused(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """The documented choice: a text longer than the window is cut and flagged."""
    text = ("Marie Curie worked in Paris and Warsaw. " * 2600)[:100_000]
    out = tasks_client.infer_inputs(NER, {"TEXT": [text, "Paris"]})
    assert out["TRUNCATED"].tolist() == [[True], [False]]
    found = json.loads(out["ENTITIES"][0, 0])
    (wanted,) = reference_entities(tiny_checkpoint(CHECKPOINT), [text])
    assert_same_entities(text, found, wanted)
    assert max(entity["end"] for entity in found) < 400  # only the window's tokens
    assert_still_serving(tasks_client)


# -- tritonize verify -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_verify_passes_against_the_build_golden_file(
    tasks_server: LocalServer, tasks_repository: Path, protocol: str
) -> None:
    result = run_verify(tasks_server, NER, tasks_repository / NER / "golden.json", protocol)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("readiness", "interface", "golden outputs", "smoke load", "metrics"):
        assert f"PASS  {check}" in result.stdout


def altered_label(golden: dict[str, Any]) -> str:
    entity = next(e for found in golden["entities"] for e in found)
    entity["label"] = "NOT-A-LABEL"
    return "first miss: "


def altered_score(golden: dict[str, Any]) -> str:
    entity = next(e for found in golden["entities"] for e in found)
    entity["score"] -= 0.01  # ten times the fp32 tolerance
    return "max score diff 1.00e-02"


@pytest.mark.parametrize("alter", [altered_label, altered_score], ids=["label", "score"])
def test_verify_fails_when_the_golden_file_is_altered(
    tasks_server: LocalServer,
    tasks_repository: Path,
    tmp_path: Path,
    alter: Callable[[dict[str, Any]], str],
) -> None:
    golden = json.loads((tasks_repository / NER / "golden.json").read_text())
    expected_line = alter(golden)
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = run_verify(tasks_server, NER, path, "http")
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL  golden outputs"), result.stdout
    assert expected_line in failed[0]
    assert "PASS  smoke load" in result.stdout


# -- bad texts ------------------------------------------------------------------------------------


def assert_still_serving(client: TritonizeClient) -> None:
    (found,) = client.entities(NER, ["Still serving in Paris."])
    assert isinstance(found, list) and all(set(e) == ENTITY_KEYS for e in found)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([""], r"`TEXT`\[0\] is empty or whitespace only"),
        (["fine", "  \n\t "], r"`TEXT`\[1\] is empty or whitespace only"),
        (["\u200b\ufeff"], r"`TEXT`\[0\] has no visible character"),
        ([b"caf\xc3"], r"`TEXT`\[0\] is not valid UTF-8 \(byte 3"),
        ([b"\xff\xfebad"], r"`TEXT`\[0\] is not valid UTF-8 \(byte 0"),
        (["x"] * (TASKS_MAX_BATCH + 1), rf"batch-size must be <= {TASKS_MAX_BATCH}"),
    ],
    ids=["empty", "whitespace", "invisible", "truncated-utf8", "invalid-utf8", "over-max-batch"],
)
def test_bad_text_is_refused_by_name(
    tasks_client: TritonizeClient, texts: list, message: str
) -> None:
    """Refused as the client's mistake (HTTP 400, gRPC INVALID_ARGUMENT) with `message`."""
    with pytest.raises(InferenceError, match=message) as caught:
        tasks_client.infer_inputs(NER, {"TEXT": texts})
    status = caught.value.__cause__.status()  # type: ignore[union-attr]
    assert status == ("400" if tasks_client.protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert_still_serving(tasks_client)


def test_server_still_serves_after_the_bad_texts(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    (found,) = tasks_client.entities(NER, [TEXTS[2]])
    (wanted,) = reference_entities(tiny_checkpoint(CHECKPOINT), [TEXTS[2]])
    assert_same_entities(TEXTS[2], found, wanted)
