"""The TensorRT generation path without a GPU: the decoder plan's accuracy gate (run here on two
ONNX Runtime sessions) and the repository a decoder plan is served from. The plan build and the
TensorRT runtime themselves run in tests/gpu."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tritonize.engine.accuracy import decoder_gate
from tritonize.engine.build import EngineArtifact
from tritonize.engine.compat import EngineRuntime
from tritonize.engine.profiles import DecoderProfiles
from tritonize.errors import RepositoryError, ServerError, ValidationError
from tritonize.export.decoders import ExportedDecoder, export_generation
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import write_generator
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec
from tritonize.triton_models.decoding import OnnxDecoderRuntime


@pytest.fixture(scope="module")
def decoder(
    tiny_decoder: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> ExportedDecoder:
    spec = BuildSpec(name="tiny-llama", task="generation", model=tiny_decoder("llama-decoder"),
                     max_batch_size=4, max_seq_len=48)  # fmt: skip
    return export_generation(spec, tmp_path_factory.mktemp("export"))


def profiles_for(decoder: ExportedDecoder) -> DecoderProfiles:
    return DecoderProfiles(4, 48, decoder.layers, decoder.kv_heads, decoder.head_dim)


class Perturbed(OnnxDecoderRuntime):
    """The real runtime with its logits shifted, as an inaccurate plan would give them."""

    shift = 0.0

    def run(self, *args):  # type: ignore[no-untyped-def]
        logits, presents = super().run(*args)
        return logits + self.shift, presents


def test_gate_passes_an_identical_runtime(decoder: ExportedDecoder) -> None:
    runtime = OnnxDecoderRuntime(decoder.onnx_path, decoder.layers)
    reference = OnnxDecoderRuntime(decoder.onnx_path, decoder.layers)
    figures = decoder_gate(runtime, reference, profiles_for(decoder), reference.vocab)
    assert figures["prefill_max_relative_logit_diff"] < 1e-6
    assert figures["decode_max_relative_logit_diff"] < 1e-6
    assert figures["decode_top1_agreement"] == 1.0


@pytest.mark.parametrize("shift", [0.05, float("nan")])
def test_gate_names_what_drifted(decoder: ExportedDecoder, shift: float) -> None:
    candidate = Perturbed(decoder.onnx_path, decoder.layers)
    candidate.shift = shift
    reference = OnnxDecoderRuntime(decoder.onnx_path, decoder.layers)
    with pytest.raises(ValidationError) as info:
        decoder_gate(candidate, reference, profiles_for(decoder), reference.vocab)
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
    config = check_repository(plan_repository)["tiny-llama"]
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert config.parameters["runtime"].string_value == "tensorrt"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    version = plan_repository / "tiny-llama" / "1"
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
        check_repository(plan_repository, EngineRuntime("10.9.0", ("9.0",)))
    server = LocalServer(ServerConfig(plan_repository, http_port=1, grpc_port=2))
    with pytest.raises(ServerError, match=r"`tiny-llama` \(a TensorRT decoder plan\)"):
        server.start()
    assert server.process is None
