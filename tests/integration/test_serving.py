"""Served results against independent references: sentence-transformers and PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tritonize.client import TritonizeClient
from tritonize.monitor.scrape import model_value
from tritonize.server import LocalServer

from .conftest import CLASSIFIER, CLASSIFIER_MAX_SEQ, EMBEDDER, EMBEDDER_MAX_BATCH, EMBEDDER_MAX_SEQ

LONG_TEXT = "Transformers are served behind Triton with dynamic batching. " * 60  # > 256 tokens
TEXTS = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I deploy a transformer model on Triton Inference Server?",
    "Batching merges requests of different lengths.",
    "A",
    "ok",
    "今天天气很好，我们去公园散步吧。",
    "机器学习模型的部署需要监控延迟和吞吐量。",
    "東京は日本の首都です。",
    "한국어 문장도 잘 처리되어야 합니다.",
    "Emoji survive tokenization 🚀🔥😀",
    "👍👍👍",
    "Café, naïve, façade, jalapeño, Ångström.",
    "Größenordnung und Übermaß sind deutsche Wörter.",
    "¿Dónde está la biblioteca? Está allí.",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "3.14159 is pi and 2.71828 is e; 42 is the answer.",
    "   leading and trailing spaces   ",
    "line one\nline two\ttabbed",
    "<html><body>markup &amp; entities</body></html>",
    LONG_TEXT,
    "word " * 400,
    "The end.",
]


@pytest.fixture(scope="module")
def sentence_transformer(minilm_dir: Path):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    model.max_seq_length = EMBEDDER_MAX_SEQ
    return model


@pytest.fixture(scope="module")
def reference_embeddings(sentence_transformer) -> np.ndarray:  # type: ignore[no-untyped-def]
    return sentence_transformer.encode(TEXTS, normalize_embeddings=True, batch_size=8)


def test_embeddings_match_sentence_transformers(
    client: TritonizeClient, reference_embeddings: np.ndarray
) -> None:
    served = np.concatenate([client.embed(EMBEDDER, TEXTS[i : i + 8]) for i in range(0, 24, 8)])
    cosine = np.sum(served * reference_embeddings, axis=1)  # both L2-normalised
    assert served.shape == (len(TEXTS), 384)
    assert cosine.min() >= 0.9999, {TEXTS[i][:30]: float(c) for i, c in enumerate(cosine)}
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_http_and_grpc_agree(server: LocalServer) -> None:
    with (
        TritonizeClient(server.config.http_url, "http") as http,
        TritonizeClient(server.config.grpc_url, "grpc") as grpc,
    ):
        np.testing.assert_allclose(
            http.embed(EMBEDDER, TEXTS[:8]), grpc.embed(EMBEDDER, TEXTS[:8]), atol=1e-6
        )


def test_batch_one_and_max_batch_agree(
    client: TritonizeClient, reference_embeddings: np.ndarray
) -> None:
    texts = (TEXTS * 2)[:EMBEDDER_MAX_BATCH]
    full = client.embed(EMBEDDER, texts)
    assert full.shape == (EMBEDDER_MAX_BATCH, 384)
    for i in (0, 6, 10, 21):
        single = client.embed(EMBEDDER, [texts[i]])
        assert single.shape == (1, 384)
        assert float(single[0] @ full[i]) >= 0.99999
        assert float(single[0] @ reference_embeddings[i]) >= 0.9999


def test_classification_matches_pytorch(client: TritonizeClient, classifier_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = TEXTS[:8]
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    inputs = tokenizer(
        texts, padding=True, truncation=True, max_length=CLASSIFIER_MAX_SEQ, return_tensors="pt"
    )
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).logits, dim=-1).numpy()
    results = client.classify(CLASSIFIER, texts)
    served = np.stack([r.probabilities for r in results])
    np.testing.assert_allclose(served, expected, atol=1e-4)
    labels = [model.config.id2label[int(i)] for i in expected.argmax(axis=1)]
    assert [r.label for r in results] == labels
    assert len(set(labels)) > 1, "the fixture should not predict a single class"
    np.testing.assert_allclose([r.score for r in results], expected.max(axis=1), atol=1e-4)


def test_truncation_is_flagged_and_counted(
    http_client: TritonizeClient, server: LocalServer
) -> None:
    metric = "tritonize_truncated_texts_total"
    before = model_value(server.config.metrics_url, metric, f"{EMBEDDER}_tokenizer")
    out = http_client.infer(EMBEDDER, ["short text", LONG_TEXT])
    assert out["TRUNCATED"].tolist() == [[False], [True]]
    after = model_value(server.config.metrics_url, metric, f"{EMBEDDER}_tokenizer")
    assert after - before == 1


def test_tokenizer_metrics_are_exported(http_client: TritonizeClient, server: LocalServer) -> None:
    http_client.embed(EMBEDDER, ["count my tokens"])
    url = server.config.metrics_url
    assert model_value(url, "tritonize_input_tokens_total", f"{EMBEDDER}_tokenizer") > 0
    assert (
        model_value(url, "tritonize_tokenize_duration_seconds_count", f"{EMBEDDER}_tokenizer") > 0
    )
