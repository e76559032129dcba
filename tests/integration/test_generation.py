"""Generation served by the real tritonserver: HF-identical greedy text under concurrency,
streaming over SSE and gRPC, parameters, bad input, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tokenizers

from helpers import hf_greedy
from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.monitor.scrape import model_value, read
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.spec import BuildSpec
from tritonize.triton_models.features import OUTPUT_TOKENS, PROMPT_TOKENS, STOP_REASON

from .conftest import server_config

MODELS = {"tiny-gpt2": "gpt2-decoder", "tiny-llama": "llama-decoder"}
PROMPTS = [
    "Once upon a time", "Triton serves", "今天天气很好", "The quick brown fox jumps over the",
    "Emoji 🚀",
]  # fmt: skip
CONTEXT = 64
OBSERVATIONS = "tritonize_feature_observations_total"
BINS = {f.name: f.bins for f in (PROMPT_TOKENS, OUTPUT_TOKENS, STOP_REASON)}


@pytest.fixture(scope="module")
def checkpoints(tiny_decoder: Callable[[str], Path]) -> dict[str, Path]:
    return {name: tiny_decoder(config) for name, config in MODELS.items()}


@pytest.fixture(scope="module")
def generation_server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    output = tmp_path_factory.mktemp("generation_repository")
    for name, checkpoint in checkpoints.items():
        build_repository(BuildSpec(name=name, task="generation", model=checkpoint, output=output,
                                   max_seq_len=CONTEXT, max_batch_size=8))  # fmt: skip
    server = LocalServer(server_config(output))
    server.start(timeout_s=120)
    yield server
    server.stop()


def generate(
    server: LocalServer, protocol: str, model: str, prompt: str, **kw: object
) -> list[str]:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    with TritonizeClient(url, protocol) as client:
        return list(client.generate(model, prompt, **kw))  # type: ignore[arg-type]


def expected_text(checkpoint: Path, prompt: str, max_tokens: int) -> str:
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    prompt_ids = tokenizer.encode(prompt).ids
    generated = hf_greedy(checkpoint, prompt_ids, max_tokens)
    full, prefix = tokenizer.decode(prompt_ids + generated), tokenizer.decode(prompt_ids)
    return full[len(prefix) :]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_concurrent_greedy_text_equals_hf_generate(
    model: str, generation_server: LocalServer, checkpoints: dict[str, Path]
) -> None:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        served = list(
            pool.map(
                lambda p: generate(generation_server, "http", model, p, max_tokens=20), PROMPTS
            )
        )
    for prompt, texts in zip(PROMPTS, served, strict=True):
        assert texts == [expected_text(checkpoints[model], prompt, 20)], prompt


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_streamed_deltas_concatenate_to_the_whole_text(
    model: str, protocol: str, generation_server: LocalServer
) -> None:
    for prompt in PROMPTS[:3]:
        whole = generate(generation_server, protocol, model, prompt, max_tokens=24)
        deltas = generate(generation_server, protocol, model, prompt, max_tokens=24, stream=True)
        assert len(whole) == 1
        assert "".join(deltas) == whole[0]
        assert len(deltas) > 1 or len(whole[0]) < 3


def test_seeded_sampling_is_reproducible(generation_server: LocalServer) -> None:
    def sample(seed: int) -> str:
        return generate(generation_server, "grpc", "tiny-llama", PROMPTS[0], max_tokens=24,
                        temperature=1.0, top_p=0.95, seed=seed)[0]  # fmt: skip

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


def test_prompt_included_and_stop_words(generation_server: LocalServer) -> None:
    (with_prompt,) = generate(generation_server, "http", "tiny-gpt2", PROMPTS[0], max_tokens=12,
                              exclude_input_in_output=False)  # fmt: skip
    (text,) = generate(generation_server, "http", "tiny-gpt2", PROMPTS[0], max_tokens=12)
    assert with_prompt == PROMPTS[0] + text
    stop = text[3:6]
    (stopped,) = generate(generation_server, "http", "tiny-gpt2", PROMPTS[0], max_tokens=12,
                          stop_words=[stop])  # fmt: skip
    assert stopped == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("prompt", "fields", "message"),
    [
        ("hi", {"max_tokens": 0}, r"`max_tokens` = 0: expected 1\.\.63"),
        ("hi", {"max_tokens": 500}, r"`max_tokens` = 500"),
        ("word " * 80, {"max_tokens": 4}, r"`text_input` is \d+ tokens: the context window is 64"),
        ("hi", {"max_tokens": 4, "temperature": -1.0}, r"`temperature` = -1\.0"),
        ("hi", {"max_tokens": 4, "top_p": 0.0}, r"`top_p` = 0\.0"),
        ("hi", {"max_tokens": 4, "top_p": 1.5}, r"`top_p` = 1\.5"),
        ("hi", {"max_tokens": 4, "top_k": -2}, r"`top_k` = -2"),
        ("  ", {"max_tokens": 4}, r"`text_input` is empty"),
    ],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_are_named_and_the_server_keeps_serving(
    generation_server: LocalServer, protocol: str, prompt: str, fields: dict, message: str
) -> None:
    with pytest.raises(InferenceError, match=message):
        generate(generation_server, protocol, "tiny-llama", prompt, **fields)
    assert generate(generation_server, protocol, "tiny-llama", "hi", max_tokens=2)


def test_generation_metrics(generation_server: LocalServer) -> None:
    generate(generation_server, "http", "tiny-llama", PROMPTS[0], max_tokens=8, stream=True)
    url = generation_server.config.metrics_url
    assert model_value(url, "tritonize_generated_tokens_total", "tiny-llama") >= 1
    assert model_value(url, "tritonize_time_to_first_token_seconds_count", "tiny-llama") >= 1
    assert model_value(url, "tritonize_inter_token_latency_seconds_count", "tiny-llama") >= 1
    assert model_value(url, "tritonize_active_sequences", "tiny-llama") == 0


def test_generation_features_count_prompts_outputs_and_stop_reasons(
    generation_server: LocalServer,
) -> None:
    """The generator exports the features its build profiled: prompt tokens, output tokens,
    why each sequence stopped; beside them the reference's shares."""
    url = generation_server.config.metrics_url

    def counts() -> dict[tuple[str, str], float]:
        reading = read(url)
        return {(feature, b): reading.total(OBSERVATIONS, "tiny-llama", feature=feature, bin=b)
                for feature, bins in BINS.items() for b in bins}  # fmt: skip

    # Hand over what earlier tests counted (a step flushes when a request finds a second gone).
    time.sleep(1.2)
    generate(generation_server, "http", "tiny-llama", PROMPTS[0], max_tokens=3)
    before = counts()
    for prompt in PROMPTS:
        generate(generation_server, "http", "tiny-llama", prompt, max_tokens=3)
    time.sleep(1.2)  # counts reach Triton at most once a second, with the next request
    generate(generation_server, "grpc", "tiny-llama", PROMPTS[0], max_tokens=3)
    moved = {key: value - before[key] for key, value in counts().items()}

    def total(feature: str) -> float:
        return sum(value for (name, _), value in moved.items() if name == feature)

    assert total("prompt_tokens") >= len(PROMPTS)
    assert total("stop_reason") >= len(PROMPTS)
    # max_tokens=3: up to three tokens each, ended by max_tokens or an end id.
    assert moved["stop_reason", "max_tokens"] + moved["stop_reason", "end"] == total("stop_reason")
    assert moved["output_tokens", "<=1"] + moved["output_tokens", "<=4"] == total("output_tokens")
    reference = read(url).total("tritonize_feature_reference_share", "tiny-llama",
                                feature="stop_reason")  # fmt: skip
    assert reference == pytest.approx(1.0, abs=1e-5)


def test_a_cancelled_stream_frees_its_slot(generation_server: LocalServer) -> None:
    import queue
    import time

    import tritonclient.grpc as grpcclient

    from tritonize.client import generation_input

    url = generation_server.config.metrics_url
    before = model_value(url, "tritonize_generated_tokens_total", "tiny-llama")
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(generation_server.config.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    fields = {"text_input": PROMPTS[0], "max_tokens": CONTEXT - 1, "stream": True}
    inputs = [generation_input(grpcclient, name, value) for name, value in fields.items()]
    client.async_stream_infer("tiny-llama", inputs, enable_empty_final_response=True)
    responses.get(timeout=30)  # the first token is out: now walk away
    client.stop_stream(cancel_requests=True)
    client.close()
    time.sleep(1)
    assert model_value(url, "tritonize_active_sequences", "tiny-llama") == 0
    assert model_value(url, "tritonize_generated_tokens_total", "tiny-llama") - before < CONTEXT - 1
    assert generate(generation_server, "grpc", "tiny-llama", "hi", max_tokens=2)


def test_streaming_load_test_reports_ttft_itl_and_end_to_end(
    generation_server: LocalServer, tmp_path: Path
) -> None:
    import csv

    from tritonize.loadtest.runner import FINAL_STATS, LoadTest, run_load_test

    prompts = tmp_path / "prompts.txt"  # prompts this random model answers with some text
    prompts.write_text("Once upon a time\nTriton serves\n")
    test = LoadTest(
        model="tiny-llama", url=generation_server.config.http_url, protocol="sse",
        metrics_url=generation_server.config.metrics_url, scenario="steady", users=4,
        seconds=4.0, max_tokens=16, out=tmp_path / "report", texts_file=prompts,
    )  # fmt: skip
    result = run_load_test(test)
    assert result.passed, result.failures()
    rows = {r["Type"]: r for r in csv.DictReader((test.out / FINAL_STATS).open())}
    assert {"TTFT", "ITL", "E2E"} <= set(rows)
    assert result.client.requests == int(rows["E2E"]["Request Count"]) > 0
    # One first token per request (streams cut short when Locust stopped have no E2E event).
    assert 0 <= int(rows["TTFT"]["Request Count"]) - result.client.requests <= test.users
    assert result.consistent  # E2E successes match Triton's request count


def golden_path(server: LocalServer) -> Path:
    return server.config.repository / "tiny-llama" / "golden.json"


def verify(server: LocalServer, golden: Path, protocol: str) -> subprocess.CompletedProcess:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    return subprocess.run(
        [sys.executable, "-m", "tritonize.cli", "verify", "--model", "tiny-llama",
         "--golden", str(golden), "--url", url, "--protocol", protocol,
         "--metrics-url", server.config.metrics_url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_golden_continuations_are_pytorchs(
    generation_server: LocalServer, checkpoints: dict[str, Path]
) -> None:
    golden = json.loads(golden_path(generation_server).read_text())
    assert golden["task"] == "generation" and len(golden["continuations"]) == 3
    for record in golden["continuations"]:
        text = expected_text(checkpoints["tiny-llama"], record["prompt"], record["max_tokens"])
        assert record["text"] == text


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_verify_passes_on_a_generation_model(generation_server: LocalServer, protocol: str) -> None:
    result = verify(generation_server, golden_path(generation_server), protocol)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("readiness", "interface", "golden outputs", "smoke load", "metrics"):
        assert f"PASS  {check}" in result.stdout
    assert "3/3 greedy continuations identical to PyTorch" in result.stdout


def test_verify_names_a_continuation_that_differs(
    generation_server: LocalServer, tmp_path: Path
) -> None:
    golden = json.loads(golden_path(generation_server).read_text())
    golden["continuations"][1]["text"] += " and then"
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = verify(generation_server, path, "http")
    assert result.returncode == 1
    assert "FAIL  golden outputs: 2/3 greedy continuations" in result.stdout
    assert "'Once upon a time': served" in result.stdout
    assert "PASS  smoke load" in result.stdout


def test_verify_of_a_reduced_precision_deployment_accepts_a_late_parting(
    generation_server: LocalServer, tmp_path: Path
) -> None:
    golden = json.loads(golden_path(generation_server).read_text())
    golden["tolerance"]["min_common_prefix"] = 0.5  # what an fp16/bf16 build writes
    late, early = golden["continuations"][:2]
    assert len(late["text"]) >= 12  # long enough for a late parting to stay above one half
    late["text"] += " and then"  # parts after all the served text
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = verify(generation_server, path, "http")
    assert "PASS  golden outputs: 3/3 greedy continuations sharing >= 50%" in result.stdout
    early["text"] = "~" + early["text"]  # parts at once
    path.write_text(json.dumps(golden))
    result = verify(generation_server, path, "http")
    assert "FAIL  golden outputs: 2/3" in result.stdout and result.returncode == 1
