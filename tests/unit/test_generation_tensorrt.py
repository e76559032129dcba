"""The TensorRT generation path without a GPU: the decoder plan's accuracy gate (run here on two
ONNX Runtime sessions) and the repository a decoder plan is served from. The plan build and the
TensorRT runtime themselves run in tests/gpu."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tritonize.engine.accuracy import MAX_RELATIVE_LOGIT_DIFF, decoder_gate
from tritonize.engine.build import EngineArtifact
from tritonize.engine.compat import EngineRuntime, python_tensorrt_version
from tritonize.engine.profiles import DecoderProfiles
from tritonize.errors import RepositoryError, ServerError, ValidationError
from tritonize.export.decoders import ExportedDecoder, export_generation
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import write_generator
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Precision
from tritonize.triton_models.decoding import OnnxDecoderRuntime


@pytest.fixture(scope="module")
def decoder(
    tiny_decoder: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> ExportedDecoder:
    spec = BuildSpec(name="tiny-llama", task="generation", model=tiny_decoder("llama-decoder"),
                     max_batch_size=4, max_seq_len=48)  # fmt: skip
    return export_generation(spec, tmp_path_factory.mktemp("export"))


FP32 = Precision.FP32


def profiles_for(decoder: ExportedDecoder) -> DecoderProfiles:
    return DecoderProfiles(4, 48, decoder.layers, decoder.kv_heads, decoder.head_dim)


class Perturbed(OnnxDecoderRuntime):
    """The real runtime with its logits shifted, as an inaccurate plan would give them."""

    shift = 0.0

    def run(self, *args):  # type: ignore[no-untyped-def]
        logits, presents = super().run(*args)
        return logits + self.shift, presents


def test_gate_passes_an_identical_runtime(decoder: ExportedDecoder) -> None:
    runtime = OnnxDecoderRuntime(decoder.onnx_path)
    reference = OnnxDecoderRuntime(decoder.onnx_path)
    figures = decoder_gate("same", runtime, reference, profiles_for(decoder), reference.vocab, FP32)
    assert figures["prefill_max_relative_logit_diff"] < 1e-6
    assert figures["decode_max_relative_logit_diff"] < 1e-6
    assert figures["decode_top1_agreement"] == 1.0


@pytest.mark.parametrize("shift", [0.05, float("nan")])
def test_gate_names_what_drifted(decoder: ExportedDecoder, shift: float) -> None:
    candidate = Perturbed(decoder.onnx_path)
    candidate.shift = shift
    reference = OnnxDecoderRuntime(decoder.onnx_path)
    with pytest.raises(ValidationError) as info:
        decoder_gate("shifted", candidate, reference, profiles_for(decoder), reference.vocab, FP32)
    problems = "\n".join(info.value.mismatches)
    assert "prefill:" in problems and "decode:" in problems
    assert ("non-finite" in problems) == np.isnan(shift)


@pytest.fixture
def plan_repository(decoder: ExportedDecoder, tmp_path: Path) -> Path:
    """What a GPU build writes, with a stand-in plan file (only a GPU can make a real one)."""
    spec = BuildSpec(name="tiny-llama", task="generation", target="tensorrt", max_batch_size=4,
                     max_seq_len=48, output=tmp_path)  # fmt: skip
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    manifest = {"tensorrt": {"version": "10.13.0.35", "compute_capability": "9.0",
                             "hardware_compatibility": "none", "version_compatible": False,
                             "profile": profiles_for(decoder).to_dict()}}  # fmt: skip
    write_generator(spec, decoder, EngineArtifact(plan, manifest), tmp_path / "repo")
    return tmp_path / "repo"


def test_a_decoder_plan_is_served_by_the_generator_on_a_gpu(plan_repository: Path) -> None:
    config = check_repository(plan_repository)["tiny-llama.v1"]
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert config.parameters["runtime"].string_value == "tensorrt"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    version = plan_repository / "tiny-llama.v1" / "1"
    assert (version / "model.plan").read_bytes() == b"plan"
    assert not (version / "model.onnx").exists()
    profile = read_manifest(version)["tensorrt"]["profile"]
    assert profile == {"prefill": {"min": [1, 1], "opt": [1, 47], "max": [4, 47]},
                       "decode": {"min": [1, 1], "opt": [2, 23], "max": [4, 47]}}  # fmt: skip


def test_check_and_the_bundled_server_refuse_a_decoder_plan_clearly(
    plan_repository: Path,
) -> None:
    check_repository(plan_repository, EngineRuntime("10.13.0.35", ("9.0",)))
    with pytest.raises(RepositoryError, match="built with TensorRT 10.13.0.35.*has TensorRT 10.9"):
        check_repository(plan_repository, EngineRuntime("10.9.0.34", ("9.0",)))
    server = LocalServer(ServerConfig(plan_repository, http_port=1, grpc_port=2))
    with pytest.raises(ServerError, match=r"`tiny-llama(\.v1)?` \(a TensorRT decoder plan\)"):
        server.start()
    assert server.process is None


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("family", ["gpt2-decoder", "llama-decoder"])
def test_typed_decoder_keeps_norms_softmax_and_logits_fp32_and_passes_its_check(
    family: str, precision: str, tiny_decoder: Callable[[str], Path], tmp_path: Path
) -> None:
    import onnx

    from tritonize.engine.precision import export_typed_decoder

    spec = BuildSpec(name="g", task="generation", target="tensorrt", precision=precision,
                     model=tiny_decoder(family), max_batch_size=4, max_seq_len=48)  # fmt: skip
    fp32 = export_generation(replace(spec, target="local", precision="fp32"), tmp_path)
    typed = export_typed_decoder(spec, tmp_path / "typed.onnx")

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "typed.onnx"))).graph
    dtypes = {v.name: v.type.tensor_type.elem_type
              for v in [*graph.input, *graph.value_info, *graph.output]}  # fmt: skip
    low = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert dtypes["past_key_values.0.key"] == dtypes["present.1.value"] == low
    assert dtypes["logits"] == onnx.TensorProto.FLOAT
    softmax_inputs = {dtypes.get(n.input[0]) for n in graph.node if n.op_type == "Softmax"}
    assert softmax_inputs == {onnx.TensorProto.FLOAT}

    # The build's check: the typed model through the serving code against fp32 ONNX Runtime.
    reference = OnnxDecoderRuntime(fp32.onnx_path)
    figures = decoder_gate("typed", typed, reference, profiles_for(fp32), reference.vocab,
                           Precision(precision))  # fmt: skip
    assert 0 < figures["decode_max_relative_logit_diff"] <= MAX_RELATIVE_LOGIT_DIFF[spec.precision]
    if precision == "fp16":  # and the exported graph itself, on ONNX Runtime's fp16 kernels
        graph_runtime = OnnxDecoderRuntime(tmp_path / "typed.onnx")
        assert graph_runtime.cache_dtype is np.float16
        decoder_gate("typed graph", graph_runtime, reference, profiles_for(fp32),
                     reference.vocab, Precision.FP16)  # fmt: skip


def test_a_server_without_tensorrt_says_how_to_serve_a_decoder_plan(tmp_path: Path) -> None:
    from tritonize.triton_models.generator import _runtime

    if python_tensorrt_version() is not None:
        pytest.skip("this machine has tensorrt")
    with pytest.raises(RuntimeError, match="needs 'tensorrt'.*GENERATION_TENSORRT=true"):
        _runtime(tmp_path, {"runtime": "tensorrt"}, device=0)
