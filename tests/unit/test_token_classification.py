"""Token classification postprocess: entities equal to transformers' pipeline, checked inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from transformers import AutoConfig, AutoModelForTokenClassification, pipeline

from tritonize.triton_models.common import RequestError
from tritonize.triton_models.entities import EntityExtractor

MAX_SEQ_LEN = 32
TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on 3 May 2021.",
    "Die Bundesregierung in Berlin, Baden-Württemberg und München: Grüße aus Köln!",
    "François Hollande a visité l'Élysée à Paris, près de la Tour Eiffel.",
    "El señor José Pérez vive en Málaga, España; ¿y tú? Sí, 42 años.",
    "北京大学位于中国北京市海淀区。",
    "Владимир Путин встретился с Ангелой Меркель в Москве.",
    "Apple Inc. 🍎 raised $1,000,000 in 2023!!! 🚀🚀",
    "New   York    City  has   repeated   spaces.",
    "Ünïcödé àccénts: Zoë, Chloé, Noël, Søren Kierkegaard.",
    "Hi",
    " ".join(["Barack Obama visited Nairobi, Kenya, in July 2015."] * 6),  # truncated
]


@dataclass(frozen=True)
class ServerBatch:
    """What the ensemble's tokenizer and engine steps hand to the postprocess model."""

    logits: np.ndarray  # FP32 [B, L, N]
    offsets: np.ndarray  # INT64 [B, L, 2]
    special_tokens_mask: np.ndarray  # INT64 [B, L]


def encode_like_the_server(checkpoint: Path, texts: list[str]) -> ServerBatch:
    """The checkpoint's fast tokenizer, one `encode_batch`, truncated and padded; the model."""
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_SEQ_LEN)
    encodings = tokenizer.encode_batch(texts)
    width = max(len(encoding.ids) for encoding in encodings)
    pad_id = AutoConfig.from_pretrained(checkpoint).pad_token_id
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    offsets = np.zeros((len(texts), width, 2), dtype=np.int64)
    special = np.ones((len(texts), width), dtype=np.int64)  # padding counts as special
    for row, encoding in enumerate(encodings):
        size = len(encoding.ids)
        ids[row, :size] = encoding.ids
        mask[row, :size] = 1
        offsets[row, :size] = encoding.offsets
        special[row, :size] = encoding.special_tokens_mask
    model = AutoModelForTokenClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return ServerBatch(logits.logits.numpy(), offsets, special)


def pipeline_entities(checkpoint: Path, texts: list[str]) -> list[list[dict]]:
    """transformers' own answer, with its tokenizer truncating at the same length."""
    ner = pipeline("token-classification", model=str(checkpoint), aggregation_strategy="simple")
    assert ner.tokenizer is not None
    ner.tokenizer.model_max_length = MAX_SEQ_LEN
    return [ner(text) for text in texts]


def tokens_within(batch: ServerBatch, row: int, start: int, end: int) -> int:
    """How many real tokens of `row` lie inside the character span [start, end)."""
    spans = batch.offsets[row][batch.special_tokens_mask[row] == 0]
    return int(((spans[:, 0] >= start) & (spans[:, 1] <= end)).sum())


@pytest.mark.parametrize("config_name", ["bert-ner", "xlm-roberta-ner"])
def test_entities_match_the_transformers_pipeline(
    tiny_checkpoint: Callable[[str], Path], config_name: str
) -> None:
    checkpoint = tiny_checkpoint(config_name)
    id2label = AutoConfig.from_pretrained(checkpoint).id2label
    extractor = EntityExtractor([id2label[i] for i in range(len(id2label))])
    batch = encode_like_the_server(checkpoint, TEXTS)
    assert batch.special_tokens_mask.sum(axis=1).max() > 2  # some rows are padded

    raw = np.array([[text.encode()] for text in TEXTS], dtype=object)
    encoded = extractor.postprocess(raw, batch.logits, batch.offsets, batch.special_tokens_mask)
    ours = [json.loads(item) for item in encoded[:, 0]]
    expected = pipeline_entities(checkpoint, TEXTS)

    multi_token_groups = 0
    for row, (text, found, wanted) in enumerate(zip(TEXTS, ours, expected, strict=True)):
        assert [(e["label"], e["start"], e["end"]) for e in found] == [
            (e["entity_group"], e["start"], e["end"]) for e in wanted
        ], text
        assert [e["text"] for e in found] == [text[e["start"] : e["end"]] for e in wanted]
        np.testing.assert_allclose(
            [e["score"] for e in found], [float(e["score"]) for e in wanted], atol=1e-5, rtol=0
        )
        multi_token_groups += sum(
            tokens_within(batch, row, e["start"], e["end"]) > 1 for e in wanted
        )
    assert multi_token_groups >= 3  # grouping is exercised, not only single tokens
    assert sum(len(found) for found in ours) >= len(TEXTS)


# -- grouping rules on hand-made logits ---------------------------------------------------------

HAND_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]


def one_hot_logits(label_ids: list[int], margin: float) -> np.ndarray:
    logits = np.zeros((1, len(label_ids), len(HAND_LABELS)), dtype=np.float32)
    logits[0, np.arange(len(label_ids)), label_ids] = margin
    return logits


def test_b_tags_open_groups_and_i_tags_continue_them() -> None:
    text = "aa bb cc dd ee ff gg hh ii"
    # [CLS] B-PER I-PER B-PER I-PER O I-LOC I-LOC B-LOC MISC [SEP]
    label_ids = [0, 1, 2, 1, 2, 0, 4, 4, 3, 5, 0]
    spans = [(0, 0)] + [(3 * i, 3 * i + 2) for i in range(9)] + [(0, 0)]
    special = [[1] + [0] * 9 + [1]]
    logits = one_hot_logits(label_ids, margin=3.0)
    entities = EntityExtractor(HAND_LABELS).extract(
        [text], logits, np.array([spans]), np.array(special)
    )[0]

    expected = [("PER", 0, 5), ("PER", 6, 11), ("LOC", 15, 20), ("LOC", 21, 23), ("MISC", 24, 26)]
    assert [(e["label"], e["start"], e["end"]) for e in entities] == expected
    assert [e["text"] for e in entities] == ["aa bb", "cc dd", "ff gg", "hh", "ii"]
    top = torch.softmax(torch.tensor([3.0, 0, 0, 0, 0, 0], dtype=torch.float64), dim=0)[0].item()
    assert all(abs(e["score"] - top) < 1e-12 for e in entities)


def test_group_score_is_the_mean_of_its_tokens() -> None:
    logits = np.array([[[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]]], dtype=np.float32)  # B-PER, I-PER
    entities = EntityExtractor(["O", "B-PER", "I-PER"]).extract(
        ["Ada Lovelace"], logits, np.array([[[0, 3], [4, 12]]]), np.zeros((1, 2), np.int64)
    )[0]
    token_scores = torch.softmax(torch.from_numpy(logits[0]).double(), dim=1).max(dim=1).values
    assert entities == [
        {"text": "Ada Lovelace", "label": "PER", "score": pytest.approx(token_scores.mean().item()),
         "start": 0, "end": 12}
    ]  # fmt: skip


def test_special_and_padding_tokens_are_ignored() -> None:
    logits = one_hot_logits([1, 2, 1, 1], margin=4.0)  # every position says PER
    entities = EntityExtractor(HAND_LABELS).extract(
        ["Bob"], logits, np.array([[[0, 0], [0, 3], [0, 0], [0, 0]]]), np.array([[1, 0, 1, 1]])
    )[0]
    assert [(e["label"], e["start"], e["end"]) for e in entities] == [("PER", 0, 3)]


# -- the ENTITIES tensor ------------------------------------------------------------------------


def test_entities_are_utf8_json_lists_ordered_by_start() -> None:
    texts = ["北京 und Zürich", "nothing here", "Ωmega"]
    label_ids = [[0, 3, 4, 0, 3, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    logits = np.concatenate([one_hot_logits(ids, margin=5.0) for ids in label_ids])
    offsets = np.array(
        [
            [[0, 0], [0, 1], [1, 2], [3, 6], [7, 13], [0, 0]],
            [[0, 0], [0, 7], [8, 12], [0, 0], [0, 0], [0, 0]],
            [[0, 0], [0, 5], [0, 0], [0, 0], [0, 0], [0, 0]],
        ]
    )
    special = np.array([[1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1]])
    raw = np.array([[text.encode()] for text in texts], dtype=object)
    encoded = EntityExtractor(HAND_LABELS).postprocess(raw, logits, offsets, special)

    assert encoded.shape == (3, 1) and encoded.dtype == object
    assert "北京".encode() in encoded[0, 0]  # UTF-8, not \u escapes
    first, second, third = (json.loads(item.decode("utf-8")) for item in encoded[:, 0])
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in first] == [
        ("北京", "LOC", 0, 2), ("Zürich", "LOC", 7, 13)
    ]  # fmt: skip
    assert second == []
    assert [e["text"] for e in third] == ["Ωmega"]
    for entity in first + third:
        assert list(entity) == ["text", "label", "score", "start", "end"]
        assert isinstance(entity["score"], float) and 0 < entity["score"] <= 1
        assert isinstance(entity["start"], int) and isinstance(entity["end"], int)
    assert [e["start"] for e in first] == sorted(e["start"] for e in first)


# -- the step is public: every input is checked -------------------------------------------------

LABELS3 = ["O", "B-PER", "I-PER"]
GOOD_LOGITS = np.zeros((1, 3, 3), np.float32)
GOOD_OFFSETS = np.array([[[0, 0], [0, 3], [0, 0]]])
GOOD_SPECIAL = np.array([[1, 0, 1]])


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((1, 3, 4), np.float32), r"`logits` has shape \[1, 3, 4\]: expected \[batch, t"),
        (np.zeros((1, 3), np.float32), r"`logits` has shape \[1, 3\]: expected \[batch, tokens, 3"),
        (np.zeros((0, 3, 3), np.float32), r"`logits` has shape \[0, 3, 3\]"),
        (np.array([[[0, np.nan, 1]] * 3], np.float32), r"`logits` holds NaN or infinite values"),
        (np.array([[[0, -np.inf, 1]] * 3], np.float32), r"`logits` holds NaN or infinite values"),
    ],
    ids=["labels", "2-d", "empty-batch", "nan", "inf"],
)
def test_bad_logits_are_refused(logits: np.ndarray, message: str) -> None:
    extractor = EntityExtractor(LABELS3)
    extractor.extract(["Bob"], GOOD_LOGITS, GOOD_OFFSETS, GOOD_SPECIAL)  # fine
    with pytest.raises(RequestError, match=message):
        extractor.extract(["Bob"], logits, GOOD_OFFSETS, GOOD_SPECIAL)


@pytest.mark.parametrize(
    ("texts", "offsets", "special", "message"),
    [
        (["Bob", "Al"], GOOD_OFFSETS, GOOD_SPECIAL, r"`TEXT` holds 2 texts and `logits` 1 rows"),
        (["Bob"], GOOD_OFFSETS[:, :2], GOOD_SPECIAL, r"`offsets` has shape \[1, 2, 2\]: expected"),
        (["Bob"], GOOD_OFFSETS, GOOD_SPECIAL[:, :2], r"`special_tokens_mask` has shape \[1, 2\]"),
        (["Bob"], GOOD_OFFSETS, np.array([[1, 2, 1]]), r"`special_tokens_mask` holds values oth"),
        (["Bo"], GOOD_OFFSETS, GOOD_SPECIAL, r"`offsets` row 0 holds the span \[0, 3\]: expec"),
        (["Bob"], np.array([[[0, 0], [2, 1], [0, 0]]]), GOOD_SPECIAL, r"span \[2, 1\]"),
        (["Bob"], np.array([[[0, 0], [-1, 1], [0, 0]]]), GOOD_SPECIAL, r"span \[-1, 1\]"),
    ],
    ids=["texts", "offsets-shape", "mask-shape", "mask-values", "past-end", "reversed", "neg"],
)
def test_misaligned_inputs_are_refused(
    texts: list[str], offsets: np.ndarray, special: np.ndarray, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        EntityExtractor(LABELS3).extract(texts, GOOD_LOGITS, offsets, special)


def test_invalid_utf8_is_refused() -> None:
    raw = np.array([[b"\xff\xfe"]], dtype=object)
    with pytest.raises(RequestError, match=r"`TEXT`\[0\] is not valid UTF-8"):
        EntityExtractor(LABELS3).postprocess(raw, GOOD_LOGITS, GOOD_OFFSETS, GOOD_SPECIAL)
