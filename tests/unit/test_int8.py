"""INT8 for CPU targets: ONNX Runtime quantization of real graphs, held to the task gate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from tritonize.engine.quantize import Int8Gate, build_int8, gate_corpus
from tritonize.errors import SpecError, ValidationError
from tritonize.export.onnx_export import ExportedModel, export_onnx
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec, Precision, Task
from tritonize.tasks.tolerances import TOLERANCES
from tritonize.triton_models.onnx_runner import OnnxEncoder

SERVED_TEXTS = [
    "Hello world.",
    "The train to the airport leaves every twenty minutes, even on Sundays.",
    "今天天气很好，我们去公园散步吧。",
    "Привет, как дела?",
    "Der Vertrag wurde gestern von beiden Seiten unterschrieben.",
    "Emoji survive tokenization 🚀🔥😀",
    "A much longer sentence that goes on for a while, so that padding in the batch matters, "
    "and the mask has to keep the padded positions out of the pooled result.",
]


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """An int8 MiniLM repository built for target `local`, as `tritonize build` does."""
    output = tmp_path_factory.mktemp("int8-repo")
    spec = BuildSpec(
        name="minilm", task=Task.EMBEDDING, model=minilm_dir, output=output,
        precision=Precision.INT8,
        max_batch_size=32, max_seq_len=128,
    )  # fmt: skip
    start = time.perf_counter()
    build_repository(spec)
    print(f"\nint8 MiniLM build: {time.perf_counter() - start:.1f} s")
    return output


@pytest.fixture(scope="module")
def exported_classifier(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path
) -> tuple[ExportedModel, Path]:
    workdir = tmp_path_factory.mktemp("int8-classifier")
    spec = BuildSpec(
        name="c", task=Task.CLASSIFICATION, model=classifier_dir, max_batch_size=8, max_seq_len=64
    )
    return export_onnx(spec, workdir), workdir


def _manifest(repository: Path) -> dict[str, object]:
    return read_manifest(repository / "minilm_engine.v1" / "1")


def test_minilm_passes_the_gate_with_a_real_speedup(minilm_int8: Path) -> None:
    manifest = _manifest(minilm_int8)
    gate, int8 = manifest["accuracy_gate"], manifest["int8"]
    assert isinstance(gate, dict) and isinstance(int8, dict)
    print(f"\nint8 MiniLM: {int8['mode']}, speed-up {int8['speedup_vs_fp32']}x, figures {gate}, "
          f"fp32 MatMuls {int8['fp32_nodes']}")  # fmt: skip
    assert gate["mean_cosine"] >= 0.99 and gate["neighbour_overlap"] >= 0.9
    assert int8["speedup_vs_fp32"] > 1.0
    assert int8["mode"] in ("dynamic", "static")
    graph = onnx.load(str(minilm_int8 / "minilm_engine.v1" / "1" / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear"}, ops
    names = {node.name: node.op_type for node in graph.graph.node}
    for kept in int8["fp32_nodes"]:  # the nodes named as fp32 are still fp32 MatMuls
        assert names.get(kept) == "MatMul", kept


def test_int8_repository_serves_pytorch_embeddings(minilm_int8: Path, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    expected = reference.encode(SERVED_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    encoder = OnnxEncoder(minilm_int8 / "minilm_engine.v1" / "1" / "model.onnx", "embedding", 0)
    tokenizer = reference.tokenizer
    batches = []
    for text in SERVED_TEXTS:
        encoded = tokenizer([text], return_tensors="np", truncation=True, max_length=128)
        batches.append(
            {
                "input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64),
            }
        )
    served = np.concatenate(encoder.run(batches))  # one padded batch, as the server runs it
    served /= np.linalg.norm(served, axis=1, keepdims=True)
    cosine = (served * expected).sum(axis=1)
    print(f"\nserved int8 against PyTorch: min cosine {cosine.min():.4f}")
    assert cosine.min() >= TOLERANCES[Precision.INT8].min_cosine


def test_gate_refuses_a_random_classifier_naming_each_figure(
    exported_classifier: tuple[ExportedModel, Path],
) -> None:
    """The tiny classifier's random head amplifies int8 rounding past the gate (measured:
    labels agree on about 96% of the corpus, probabilities move by up to 0.3 or more)."""
    exported, workdir = exported_classifier
    with pytest.raises(ValidationError) as info:
        build_int8(
            exported.onnx_path, workdir, Task.CLASSIFICATION, exported.tokenizer,
            exported.pad_token_id, 64, exported.graph_inputs,
        )  # fmt: skip
    message = str(info.value)
    print(f"\n{message}")
    assert "dynamic: label agreement" in message and "expected >= 0.99" in message
    assert "dynamic: max probability diff" in message and "expected <= 0.02" in message
    assert "static:" in message


def test_gate_refuses_an_impossible_tolerance_naming_the_figure(
    tmp_path: Path, minilm_dir: Path
) -> None:
    spec = BuildSpec(name="m", task=Task.EMBEDDING, model=minilm_dir, max_seq_len=64)
    exported = export_onnx(spec, tmp_path)
    with pytest.raises(ValidationError) as info:
        build_int8(
            exported.onnx_path, tmp_path, Task.EMBEDDING, exported.tokenizer,
            exported.pad_token_id, 64, exported.graph_inputs,
            limits=Int8Gate(min_mean_cosine=0.99999), corpus=gate_corpus(200),
        )  # fmt: skip
    message = str(info.value)
    assert "dynamic: mean cosine to fp32" in message and "expected >= 0.99999" in message
    assert "static: mean cosine to fp32" in message
    assert "neighbour overlap" not in message  # only what missed is named


def test_gate_corpus_is_large_varied_and_distinct() -> None:
    texts = gate_corpus()
    assert len(texts) >= 1000 and len(set(texts)) == len(texts)
    lengths = [len(t) for t in texts]
    assert min(lengths) < 20 and max(lengths) > 300
    scripts = {"Cyrillic": "д", "Han": "的", "Arabic": "م", "Latin accents": "é"}
    for script, letter in scripts.items():
        assert any(letter in t for t in texts), script


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"target": "tensorrt", "task": "embedding"}, "int8 needs target `local` or `onnxruntime`"),
        ({"task": "generation"}, "int8 is built for tasks `embedding` and `classification`"),
        ({"task": "question-answering"}, "int8 is built for tasks"),
        ({"task": "rerank", "target": "onnxruntime"}, "int8 is built for tasks"),
    ],
)
def test_spec_refuses_int8_outside_cpu_encoders(fields: dict[str, str], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        BuildSpec(name="m", precision="int8", **fields)  # type: ignore[arg-type]
    assert expected in str(info.value) and "`precision` = 'int8'" in str(info.value)


@pytest.mark.parametrize("target", ["local", "onnxruntime"])
@pytest.mark.parametrize("task", ["embedding", "classification"])
def test_spec_allows_int8_on_cpu_targets(target: str, task: str) -> None:
    assert BuildSpec(name="m", task=task, target=target, precision="int8").precision == "int8"  # type: ignore[arg-type]


def test_spec_still_refuses_fp16_on_local() -> None:
    with pytest.raises(SpecError, match="fp32 or int8 with target `local`"):
        BuildSpec(name="m", task="embedding", precision="fp16")  # type: ignore[arg-type]
