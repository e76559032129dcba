"""Bad requests get errors that name the problem, and the server keeps serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer

from .conftest import EMBEDDER, EMBEDDER_MAX_BATCH


def assert_still_serving(client: TritonizeClient) -> None:
    vectors = client.embed(EMBEDDER, ["still serving"])
    assert vectors.shape == (1, 384) and np.isfinite(vectors).all()


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([""], r"`TEXT`\[0\] is empty or whitespace only"),
        (["fine", "  \n\t "], r"`TEXT`\[1\] is empty or whitespace only"),
        ([b"caf\xc3"], r"`TEXT`\[0\] is not valid UTF-8"),
        ([b"\xff\xfe\x00bad"], r"`TEXT`\[0\] is not valid UTF-8 \(byte 0"),
        (["x"] * (EMBEDDER_MAX_BATCH + 1), r"batch-size must be <= 32"),
    ],
    ids=["empty", "whitespace", "truncated-utf8", "invalid-utf8", "over-max-batch"],
)
def test_bad_text_is_rejected_by_name(client: TritonizeClient, texts: list, message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        client.infer(EMBEDDER, texts)
    assert_still_serving(client)


def test_unknown_model_is_named(client: TritonizeClient) -> None:
    with pytest.raises(InferenceError, match="unknown model: 'no-such-model'"):
        client.embed("no-such-model", ["hello"])
    assert_still_serving(client)


def test_100kb_text_is_truncated_not_rejected(client: TritonizeClient) -> None:
    """The documented choice: texts are truncated at max_seq_len and flagged."""
    text = ("All work and no play makes a long text. " * 2600)[:100_000]
    out = client.infer(EMBEDDER, [text, "short"])
    assert out["TRUNCATED"].tolist() == [[True], [False]]
    assert np.isfinite(out["EMBEDDING"]).all()
    assert_still_serving(client)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_dtype_and_missing_input_are_named(server: LocalServer, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    raw = module.InferenceServerClient(url)
    try:
        floats = module.InferInput("TEXT", [1, 1], "FP32")
        floats.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
        with pytest.raises(InferenceServerException, match=r"(?i)TEXT.*data-?type.*BYTES"):
            raw.infer(EMBEDDER, [floats])
        other = module.InferInput("TEXTS", [1, 1], "BYTES")
        other.set_data_from_numpy(np.array([[b"hello"]], dtype=object))
        with pytest.raises(InferenceServerException, match="TEXTS"):
            raw.infer(EMBEDDER, [other])
    finally:
        raw.close()
    with TritonizeClient(url, protocol) as client:
        assert_still_serving(client)


def test_bad_requests_batched_with_good_ones_do_not_spoil_them(server: LocalServer) -> None:
    """Concurrent good and bad requests, merged by the batcher: each gets its own answer."""

    def call(index: int) -> str:
        text = "" if index % 2 else f"good request {index}"
        with TritonizeClient(server.config.grpc_url, "grpc") as client:
            try:
                return str(client.embed(EMBEDDER, [text]).shape)
            except InferenceError as exc:
                return str(exc)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(32)))
    assert answers[0::2] == ["(1, 384)"] * 16
    assert all("`TEXT`[0] is empty" in answer for answer in answers[1::2])
