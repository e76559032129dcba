"""The Python-backend models' logic, without Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tritonize.export.onnx_export import load_tokenizer
from tritonize.export.validation import SAMPLE_TEXTS
from tritonize.triton_models.classifier import Classifier
from tritonize.triton_models.common import RequestError
from tritonize.triton_models.onnx_runner import pad_and_stack
from tritonize.triton_models.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def text_tokenizer(minilm_dir: Path) -> TextTokenizer:
    tokenizer, pad_id = load_tokenizer(minilm_dir, trust_remote_code=False)
    return TextTokenizer(tokenizer, max_seq_len=16, pad_id=pad_id, max_text_bytes=1000)


def test_token_ids_match_transformers(text_tokenizer: TextTokenizer, minilm_dir: Path) -> None:
    reference = AutoTokenizer.from_pretrained(minilm_dir)
    texts = list(SAMPLE_TEXTS)
    (batch,) = text_tokenizer.encode([texts])
    expected = reference(texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])


def test_truncation_is_flagged_per_text(text_tokenizer: TextTokenizer) -> None:
    (batch,) = text_tokenizer.encode([["short", "word " * 40]])
    assert batch.truncated.tolist() == [[False], [True]]
    assert batch.input_ids.shape == (2, 16)
    assert batch.num_tokens == 3 + 16  # [CLS] short [SEP], then a full row


def test_each_request_is_padded_to_its_own_longest(text_tokenizer: TextTokenizer) -> None:
    together = text_tokenizer.encode([["a"], ["a b c d e f"], ["x", "y z"]])
    assert [b.input_ids.shape for b in together] == [(1, 3), (1, 8), (2, 4)]
    alone = text_tokenizer.encode([["x", "y z"]])[0]
    np.testing.assert_array_equal(together[2].input_ids, alone.input_ids)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", r"`TEXT`\[0\] is empty or whitespace only"),
        (b" \t\n ", r"`TEXT`\[0\] is empty or whitespace only"),
        (b"ok\xff\xfe", r"`TEXT`\[0\] is not valid UTF-8 \(byte 2"),
        (b"x" * 1001, r"`TEXT`\[0\] is 1001 bytes: at most 1000 allowed"),
    ],
)
def test_bad_texts_are_named(text_tokenizer: TextTokenizer, raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        text_tokenizer.decode_texts(np.array([[raw]], dtype=object))


def test_bad_text_position_is_reported(text_tokenizer: TextTokenizer) -> None:
    with pytest.raises(RequestError, match=r"`TEXT`\[2\]"):
        text_tokenizer.decode_texts(np.array([[b"a"], ["b"], [b""]], dtype=object))


def test_pad_and_stack_merges_ragged_requests() -> None:
    a = (np.array([[5, 6, 7]]), np.array([[1, 1, 1]]))
    b = (np.array([[8], [9]]), np.array([[1], [1]]))
    ids, mask = pad_and_stack([a, b], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]


def test_classifier_matches_torch_softmax() -> None:
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 1.0, 0.5], [100.0, -100.0, 0.0]], dtype=np.float32)
    labels, scores, probabilities = Classifier(["neg", "neu", "pos"]).postprocess(logits)
    expected = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    assert [label.decode() for label in labels[:, 0]] == ["neu", "neg", "neg"]
    np.testing.assert_allclose(scores[:, 0], expected.max(axis=1), atol=1e-7)
    assert probabilities.dtype == np.float32 and labels.shape == (3, 1)
