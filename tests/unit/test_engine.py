"""Everything around the TensorRT engine that can be tested without a GPU."""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tritonize.engine.accuracy import TOLERANCES, cases_at_profile, compare, gate
from tritonize.engine.compat import EngineRuntime, plan_problems, rebuild_command
from tritonize.engine.precision import Fp32LayerNorm, export_typed_graph, to_precision
from tritonize.engine.profiles import ShapeProfile, padding_buckets
from tritonize.errors import EngineError, RepositoryError, ServerError, ValidationError
from tritonize.export.onnx_export import load_tokenizer
from tritonize.export.tasks import ONNX_INPUTS, TASKS
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Precision, Task


def test_profile_from_spec_defaults_and_overrides() -> None:
    spec = BuildSpec(name="m", task="embedding", target="tensorrt", max_batch_size=64)
    assert ShapeProfile.from_spec(spec) == ShapeProfile((1, 1), (32, 128), (64, 256))
    spec = BuildSpec(
        name="m", task="embedding", target="tensorrt", max_batch_size=8, max_seq_len=64,
        opt_batch_size=4, opt_seq_len=32,
    )  # fmt: skip
    assert ShapeProfile.from_spec(spec).named() == {"min": (1, 1), "opt": (4, 32), "max": (8, 64)}


def test_opt_shape_beyond_max_is_refused() -> None:
    with pytest.raises(Exception, match=r"`opt_seq_len` = 300.*\[1, 256\]"):
        BuildSpec(name="m", task="embedding", target="tensorrt", opt_seq_len=300)


def test_padding_buckets() -> None:
    assert padding_buckets(256) == (16, 32, 64, 128, 256)
    assert padding_buckets(100) == (16, 32, 64, 100)
    assert padding_buckets(8) == (8,)


def test_tokenizer_pads_to_buckets(minilm_dir: Path) -> None:
    from tritonize.triton_models.tokenizer import TextTokenizer

    tokenizer, pad = load_tokenizer(minilm_dir, trust_remote_code=False)
    text = TextTokenizer(tokenizer, max_seq_len=64, pad_id=pad, pad_buckets=padding_buckets(64))
    short, longer, longest = text.encode([["hi"], ["word " * 20], ["word " * 100]])
    assert short.input_ids.shape == (1, 16)
    assert longer.input_ids.shape == (1, 32)
    assert longest.input_ids.shape == (1, 64) and bool(longest.truncated[0, 0])
    assert short.attention_mask.sum() == 3  # the padding is masked out


# -- plan compatibility -------------------------------------------------------------------------
MANIFEST = {
    "spec": {"model": "/models/enc", "task": "embedding", "name": "enc", "target": "tensorrt",
             "precision": "fp16", "max_batch_size": 64, "max_seq_len": 256},
    "tensorrt": {"version": "10.8.0.43", "compute_capability": "9.0",
                 "hardware_compatibility": "none", "version_compatible": False},
}  # fmt: skip


def test_matching_runtime_has_no_problems() -> None:
    assert plan_problems("m", MANIFEST, EngineRuntime("10.8.0.43", ("9.0",))) == []


def test_tensorrt_mismatch_names_both_versions_and_the_rebuild() -> None:
    (problem,) = plan_problems("model `enc_engine`", MANIFEST, EngineRuntime("10.9.0.34", ("9.0",)))
    assert "plan built with TensorRT 10.8.0.43, runtime has TensorRT 10.9.0.34" in problem
    assert rebuild_command(MANIFEST) in problem
    assert rebuild_command(MANIFEST).startswith("docker compose run --rm build tritonize build")
    assert "--precision fp16 --max-batch-size 64" in rebuild_command(MANIFEST)


def test_the_rebuild_recreates_the_same_build_from_where_it_came() -> None:
    """A build from the registry is rebuilt from the registered version, not from the cache
    path it was fetched to; build 3 is rebuilt as build 3, in place."""
    spec = {**MANIFEST["spec"], "model": "/root/.cache/tritonize/registry/enc/4",  # type: ignore[dict-item]
            "registry": "models:/enc/4", "version": 3}  # fmt: skip
    command = shlex.split(rebuild_command({**MANIFEST, "spec": spec}))
    assert command[command.index("--model") + 1] == "models:/enc/4"
    assert command[command.index("--model-version") + 1] == "3"
    assert "--overwrite" in command


def test_the_build_number_counts() -> None:
    """Same-tag images have shipped 8.6.1.2 and 8.6.1.6: each refuses the other's plans."""
    (problem,) = plan_problems("m", MANIFEST, EngineRuntime("10.8.0.40", ("9.0",)))
    assert "runtime has TensorRT 10.8.0.40" in problem
    (problem,) = plan_problems("m", MANIFEST, EngineRuntime("10.8.0", ("9.0",)))
    assert "all four parts" in problem


def test_an_unreadable_runtime_version_fails_loudly() -> None:
    (problem,) = plan_problems("m", MANIFEST, EngineRuntime(None, ("9.0",)))
    assert "needs TensorRT 10.8.0.43" in problem and "cannot be read" in problem


def test_compute_capability_mismatch_is_named() -> None:
    (problem,) = plan_problems("m", MANIFEST, EngineRuntime("10.8.0.43", ("8.6",)))
    assert "built for compute capability 9.0" in problem and "runtime GPU has 8.6" in problem


def flexible(task: str = "embedding", built: str = "10.8.0.43") -> dict:
    manifest = json.loads(json.dumps(MANIFEST))
    manifest["spec"]["task"] = task
    manifest["tensorrt"].update(
        version=built, hardware_compatibility="ampere_plus", version_compatible=True
    )
    return manifest


def test_compatibility_flags_follow_tensorrts_rules() -> None:
    def loads(runtime: str, built: str = "10.8.0.43", gpus: tuple = ("8.6",)) -> bool:
        return not plan_problems("m", flexible(built=built), EngineRuntime(runtime, gpus, True))

    assert loads("10.9.1.2", gpus=("8.0", "8.6"))
    assert loads("10.8.0.43") and loads("10.8.0.50")  # a later build of the same release
    assert not loads("10.8.0.40")  # older: no
    assert not loads("10.7.0.23")
    assert loads("11.0.0.1")  # TensorRT 10 version-compatible plans run on TensorRT 11
    assert not loads("12.0.0.1")
    assert loads("10.0.1.6", built="8.6.1.6")  # and TensorRT 8.6's on TensorRT 10
    assert not loads("8.6.1.6", built="8.5.3.1")  # version compatibility starts with 8.6
    assert not loads("10.8.0.43", gpus=("7.5",))  # pre-Ampere: no


def test_version_compatible_plan_needs_tritons_backend_flag() -> None:
    runtime = EngineRuntime("10.9.0.34", ("9.0",))
    (problem,) = plan_problems("m", flexible(), runtime)
    assert "--backend-config=tensorrt,version-compatible=true" in problem
    assert "TRITONIZE_TENSORRT_VERSION_COMPATIBLE=true" in problem
    assert "rebuild" not in problem  # the plan is fine; the server lacks a flag
    assert plan_problems("m", flexible(), EngineRuntime("10.9.0.34", ("9.0",), True)) == []
    # A generator's decoder plan runs in the Python backend, which allows the host code itself.
    assert plan_problems("m", flexible("generation"), runtime) == []


def test_detect_reads_the_flag_and_the_library_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonize.engine.compat import VERSION_COMPATIBLE_ENV, library_version

    monkeypatch.setenv(VERSION_COMPATIBLE_ENV, "true")
    assert EngineRuntime.detect().version_compatible_allowed
    monkeypatch.delenv(VERSION_COMPATIBLE_ENV)
    assert not EngineRuntime.detect().version_compatible_allowed

    class Library:  # libnvinfer's exported getInferLib*Version functions
        def __init__(self, **parts: int) -> None:
            for name, value in parts.items():
                setattr(self, f"getInferLib{name}Version", _Function(value))

    assert library_version(Library(Major=10, Minor=13, Patch=2, Build=6)) == "10.13.2.6"
    assert library_version(Library(Major=10, Minor=13, Patch=2)) is None


class _Function:
    def __init__(self, value: int) -> None:
        self.value, self.restype = value, None

    def __call__(self) -> int:
        return self.value


def test_manifest_without_tensorrt_section_is_a_problem() -> None:
    (problem,) = plan_problems("m", {"spec": {}}, EngineRuntime("10.8.0.43", ("9.0",)))
    assert "does not say which TensorRT" in problem


# -- the onnxruntime target, and a tensorrt repository checked against a runtime ------------------
@pytest.fixture(scope="module")
def onnxruntime_repository(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("ort-repo")
    spec = BuildSpec(
        name="sentiment", task="classification", model=classifier_dir, output=output,
        target="onnxruntime", precision="fp16", max_batch_size=8, max_seq_len=64,
    )  # fmt: skip
    return build_repository(spec).repository


def test_onnxruntime_target_writes_a_backend_model(onnxruntime_repository: Path) -> None:
    configs = check_repository(onnxruntime_repository)
    engine = configs["sentiment_engine.v1"]
    assert engine.platform == "onnxruntime_onnx" and not engine.backend
    assert (onnxruntime_repository / "sentiment_engine.v1" / "1" / "model.onnx").exists()
    assert not (onnxruntime_repository / "sentiment_engine.v1" / "1" / "model.py").exists()
    (accelerator,) = engine.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert [w.batch_size for w in engine.model_warmup] == [4, 8]
    assert not any(i.allow_ragged_batch for i in engine.input)  # fixed shapes: buckets instead
    buckets = configs["sentiment_tokenizer.v1"].parameters["pad_buckets"].string_value
    assert json.loads(buckets) == [16, 32, 64]


def test_bundled_server_refuses_backend_models_clearly(onnxruntime_repository: Path) -> None:
    server = LocalServer(ServerConfig(onnxruntime_repository, http_port=1, grpc_port=2))
    with pytest.raises(
        ServerError, match=r"`sentiment_engine.v1` \(onnxruntime_onnx\).*docker compose"
    ):
        server.start()
    assert server.process is None


def test_mismatched_plan_is_refused_by_check(onnxruntime_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(onnxruntime_repository, repo)
    engine = repo / "sentiment_engine.v1"
    config = engine / "config.pbtxt"
    config.write_text(config.read_text().replace("onnxruntime_onnx", "tensorrt_plan"))
    (engine / "1" / "model.onnx").rename(engine / "1" / "model.plan")
    manifest = read_manifest(engine / "1")
    manifest["tensorrt"] = MANIFEST["tensorrt"]
    manifest.pop("contents", None)  # the engine file was swapped by hand: no seal to compare
    (engine / "1" / "manifest.json").write_text(json.dumps(manifest))
    check_repository(repo)  # without a runtime to compare with, the layout is fine
    with pytest.raises(RepositoryError) as info:
        check_repository(repo, EngineRuntime("10.9.0.34", ("8.9",)))
    assert len(info.value.problems) == 2
    assert "TensorRT 10.8.0.43, runtime has TensorRT 10.9.0.34" in info.value.problems[0]
    assert "docker compose run --rm build tritonize build" in info.value.problems[1]


def test_tensorrt_target_stops_at_once_without_gpu(tmp_path: Path) -> None:
    output = tmp_path / "untouched"
    spec = BuildSpec(name="m", task="embedding", target="tensorrt", output=output)
    with pytest.raises(EngineError, match="`tensorrt` Python package.*docker compose run"):
        build_repository(spec)
    assert not output.exists()


# -- reduced precision graphs ---------------------------------------------------------------------
def test_to_precision_keeps_layer_norms_in_fp32(tiny_checkpoint: Callable[[str], Path]) -> None:
    model = TASKS[Task.EMBEDDING].load(tiny_checkpoint("bert"), trust_remote_code=False)
    typed = to_precision(model, Precision.FP16)
    norms = [m for m in typed.modules() if isinstance(m, Fp32LayerNorm)]
    assert norms and all(n.norm.weight.dtype == torch.float32 for n in norms)
    linear = next(m for m in typed.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight.dtype == torch.float16
    assert to_precision(model, Precision.FP32) is model


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_typed_graph_is_accurate_with_fp32_norms_and_softmax(
    precision: str, minilm_dir: Path, tmp_path: Path
) -> None:
    spec = BuildSpec(name="m", task="embedding", target="tensorrt", precision=precision,
                     max_batch_size=4, max_seq_len=64)  # fmt: skip
    path, run_typed = export_typed_graph(spec, TASKS[Task.EMBEDDING], tmp_path, ONNX_INPUTS, (384,))
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    first_input: dict[str, set] = {}
    for node in graph.node:
        if node.input:
            first_input.setdefault(node.op_type, set()).add(dtypes.get(node.input[0]))
    low = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert first_input["MatMul"] == {low}
    assert first_input["LayerNormalization"] == {onnx.TensorProto.FLOAT}
    assert first_input["Softmax"] == {onnx.TensorProto.FLOAT}
    assert dtypes[graph.output[0].name] == onnx.TensorProto.FLOAT

    fp32 = TASKS[Task.EMBEDDING].load(minilm_dir, trust_remote_code=False)
    tokenizer, pad = load_tokenizer(minilm_dir, trust_remote_code=False)
    cases = cases_at_profile(tokenizer, ShapeProfile.from_spec(spec), pad)

    def reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return fp32(*(torch.from_numpy(feeds[name]) for name in ONNX_INPUTS)).numpy()

    figures = gate("typed", run_typed, reference, cases, Task.EMBEDDING, Precision(precision))
    assert min(figures.values()) >= 0.999


# -- the accuracy gate ----------------------------------------------------------------------------
def test_cases_have_exactly_the_profile_shapes(minilm_dir: Path) -> None:
    tokenizer, pad = load_tokenizer(minilm_dir, trust_remote_code=False)
    cases = cases_at_profile(tokenizer, ShapeProfile((1, 1), (4, 32), (8, 128)), pad)
    assert [c.input_ids.shape for c in cases] == [(1, 1), (4, 32), (8, 128)]
    assert cases[2].attention_mask[-1].sum() < 128  # a short text among long ones: padding


def test_embedding_gate_names_each_row_below_the_cosine() -> None:
    reference = np.eye(3, 4, dtype=np.float32)
    actual = reference.copy()
    actual[1] = [0.0, 0.9, 0.2, 0.0]
    misses, worst = compare(Task.EMBEDDING, TOLERANCES[Precision.FP16], "opt", reference, actual)
    assert misses == [f"opt: row 1 cosine {worst:.6f} < 0.999"]


def test_classifier_gate_names_label_flips_and_probability_drift() -> None:
    reference = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    actual = np.array([[1.0, 2.0], [0.0, 3.0]], dtype=np.float32)
    misses, _ = compare(Task.CLASSIFICATION, TOLERANCES[Precision.FP32], "max", reference, actual)
    assert misses[0] == "max: row 0 label 1 differs from reference label 0"
    assert misses[1].startswith("max: probability diff")


def test_gate_collects_every_case_then_fails() -> None:
    cases = cases_at_profile_stub()
    with pytest.raises(ValidationError) as info:
        gate("plan", lambda f: -np.ones((len(f["input_ids"]), 4)),
             lambda f: np.ones((len(f["input_ids"]), 4)),
             cases, Task.EMBEDDING, Precision.FP16)  # fmt: skip
    assert len(info.value.mismatches) == 3
    assert "plan (fp16) is not accurate enough" in str(info.value)


def cases_at_profile_stub() -> list:
    from tritonize.export.validation import ValidationCase

    return [ValidationCase(f"case {n}", np.ones((n, 2), np.int64), np.ones((n, 2), np.int64))
            for n in (1, 1, 1)]  # fmt: skip


def test_new_task_gates_name_what_moved() -> None:
    fp32 = TOLERANCES[Precision.FP32]
    scores = np.array([[0.2], [0.9]], dtype=np.float32)
    moved_scores = scores + np.array([[0.0], [0.01]], dtype=np.float32)
    misses, worst = compare(Task.RERANK, fp32, "opt", scores, moved_scores)
    assert misses == ["opt: score diff 1.00e-02 > 0.001"] and worst == pytest.approx(0.01)
    logits = np.zeros((1, 3, 2), dtype=np.float32)
    logits[0, 1, 0] = 5.0  # token 1 is label 0 in the reference, label 1 in the candidate
    flipped = logits.copy()
    flipped[0, 1] = [0.0, 5.0]
    misses, _ = compare(Task.TOKEN_CLASSIFICATION, fp32, "max", logits, flipped)
    assert misses[0] == "max: row 0 token 1 changes its label"
    spans = np.random.default_rng(0).normal(size=(2, 8, 2)).astype(np.float32)
    assert compare(Task.QUESTION_ANSWERING, fp32, "min", spans, spans)[0] == []
    moved = spans.copy()
    moved[1, 3, 0] += 3.0
    assert "start/end probability diff" in compare(Task.QUESTION_ANSWERING, fp32, "min", spans,
                                                   moved)[0][0]  # fmt: skip


def test_a_pair_graphs_profile_covers_its_token_types() -> None:
    profile = ShapeProfile((1, 1), (4, 32), (8, 128))
    tensors = profile.tensors(("input_ids", "attention_mask", "token_type_ids"))
    assert set(tensors) == {"input_ids", "attention_mask", "token_type_ids"}
    assert tensors["token_type_ids"] == ((1, 1), (4, 32), (8, 128))
