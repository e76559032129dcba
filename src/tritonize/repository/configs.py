"""Typed Triton model configs: each step of an ensemble as a protobuf `ModelConfig`.

Protobuf checks every field name and type when a message is built, and `text_format` writes
and parses it, so no config is ever a text template.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc.model_config_pb2 import ModelConfig

from tritonize.engine.profiles import ShapeProfile, padding_buckets
from tritonize.spec import BuildSpec, Precision, Target
from tritonize.tasks import PublicTensor, task_named
from tritonize.tasks.build import EncoderBuild, StepNames
from tritonize.tasks.generation import Generation
from tritonize.triton_models import common as names
from tritonize.triton_models.generation import usable_window

# The parameter that sets an engine's ONNX Runtime threads per instance, by target: the local
# engine's own, and the ONNX Runtime backend's. TensorRT has none.
THREAD_PARAMETERS = {Target.LOCAL: "intra_op_threads", Target.ONNXRUNTIME: "intra_op_thread_count"}


@dataclass(frozen=True)
class Tensor:
    """A config input/output: name, Triton dtype, dims without the batch dimension."""

    name: str
    dtype: int  # a model_config_pb2 DataType value, e.g. mc.TYPE_FP32
    dims: tuple[int, ...]
    ragged: bool = False

    def as_input(self) -> mc.ModelInput:
        return mc.ModelInput(
            name=self.name, data_type=self.dtype, dims=self.dims, allow_ragged_batch=self.ragged
        )

    def as_output(self) -> mc.ModelOutput:
        return mc.ModelOutput(name=self.name, data_type=self.dtype, dims=self.dims)


def _config_dtype(datatype: str) -> int:
    """A model_config_pb2 DataType from Triton's protocol name (BYTES is TYPE_STRING there)."""
    return int(mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


def public_inputs(spec: BuildSpec) -> list[Tensor]:
    """The ensemble's inputs (the README lists them): the task's texts."""
    return [_config_tensor(t) for t in task_named(spec.task.value).inputs]


def public_outputs(spec: BuildSpec, output_dim: int) -> list[Tensor]:
    """The ensemble's outputs (the README lists them): the same for every target."""
    return [_config_tensor(t, output_dim) for t in task_named(spec.task.value).outputs]


def encoder_build(spec: BuildSpec) -> EncoderBuild:
    build = task_named(spec.task.value).build
    assert isinstance(build, EncoderBuild), f"{spec.task.value} is not built as an ensemble"
    return build


def max_batch_size(spec: BuildSpec) -> int:
    """The ensemble's and its Python steps': 0 where a request is one input (its rows are
    windows of it, which the engine still batches)."""
    return spec.max_batch_size if encoder_build(spec).batching else 0


def tokenizer_config(
    spec: BuildSpec, pad_token_id: int, graph_inputs: tuple[str, ...] = ()
) -> ModelConfig:
    build = encoder_build(spec)
    parameters: dict[str, object] = {"max_seq_len": spec.max_seq_len, "pad_token_id": pad_token_id}
    inputs = public_inputs(spec)
    outputs = [_config_tensor(t) for t in build.tokenizer_outputs(graph_inputs)]
    if build.tokenizer_module == "tokenizer":  # the generic step: which texts, what extras
        if [t.name for t in inputs] != [names.TEXT]:
            parameters["text_inputs"] = json.dumps([t.name for t in inputs])
        if extras := [t.name for t in outputs[3:]]:
            parameters["extra_outputs"] = json.dumps(extras)
    if spec.target is not Target.LOCAL:  # fixed-shape engines batch equal shapes only
        parameters["pad_buckets"] = json.dumps(padding_buckets(spec.max_seq_len))
    parameters.update(build.tokenizer_parameters(spec))
    parameters.update(_profile_parameters(spec))
    return _python_model(
        StepNames(spec.name, spec.version).tokenizer,
        spec,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
        instances=spec.tokenizer_instances,
        queue_delay_us=0,  # tokenizing is cheap: batch what is queued, never wait
        batch=max_batch_size(spec),
    )


def _profile_parameters(spec: BuildSpec) -> dict[str, object]:
    """The entry of the build a step belongs to (`NAME.vN`): the public model its samples and
    metrics name (NAME, version N), and where it finds the reference profile of its live
    features (`<repository>/NAME.vN/N/profile.json`, absent for tasks without one)."""
    return {"ensemble": StepNames(spec.name, spec.version).entry}


def engine_config(
    spec: BuildSpec,
    output_name: str,
    output_dims: tuple[int, ...],
    pad_token_id: int,
    graph_inputs: tuple[str, ...] = (names.INPUT_IDS, names.ATTENTION_MASK),
) -> ModelConfig:
    """The engine step for `spec.target`; every target takes and returns the same tensors."""
    output = Tensor(output_name, mc.TYPE_FP32, output_dims)
    inputs = [Tensor(name, mc.TYPE_INT64, (-1,)) for name in graph_inputs]
    if spec.target is Target.LOCAL:
        # Each request arrives padded to its own longest text and the engine step groups the
        # rows of the requests it batches by length, so the batcher may merge any lengths.
        config = _python_model(
            StepNames(spec.name, spec.version).engine,
            spec,
            inputs=[dataclasses.replace(t, ragged=True) for t in inputs],
            outputs=[output],
            parameters={
                "output_name": output_name,
                "pad_token_id": pad_token_id,
                "max_seq_len": spec.max_seq_len,
                **_profile_parameters(spec),
            },
            instances=spec.engine_instances,
            queue_delay_us=spec.max_queue_delay_us,
        )
    elif spec.target is Target.TENSORRT:
        config = _platform_model(
            spec, "tensorrt_plan", inputs, output, mc.ModelInstanceGroup.KIND_GPU
        )
    else:
        config = _platform_model(
            spec, "onnxruntime_onnx", inputs, output, mc.ModelInstanceGroup.KIND_AUTO
        )
        if spec.precision is Precision.FP16:
            _add_tensorrt_accelerator(config, spec)
    config.dynamic_batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
    if spec.engine_threads:
        config.parameters[THREAD_PARAMETERS[spec.target]].string_value = str(spec.engine_threads)
    return config


def engine_target(config: ModelConfig) -> Target:
    """Which target wrote an engine step's config."""
    if config.backend == "python":
        return Target.LOCAL
    return Target.TENSORRT if config.platform == "tensorrt_plan" else Target.ONNXRUNTIME


def _platform_model(
    spec: BuildSpec, platform: str, inputs: list[Tensor], output: Tensor, kind: int
) -> ModelConfig:
    """A TensorRT or ONNX Runtime backend model, warmed up at the profile's opt and max shapes."""
    config = ModelConfig(
        name=StepNames(spec.name, spec.version).engine,
        platform=platform,
        max_batch_size=spec.max_batch_size,
        input=[t.as_input() for t in inputs],
        output=[output.as_output()],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=spec.max_queue_delay_us
        ),
        instance_group=[mc.ModelInstanceGroup(kind=kind, count=spec.engine_instances)],
    )
    profile = ShapeProfile.from_spec(spec)
    for name in ("opt", "max"):
        batch, seq = profile.named()[name]
        warm = mc.ModelWarmup.Input(data_type=mc.TYPE_INT64, dims=[seq], zero_data=True)
        config.model_warmup.add(
            name=f"{name}_shape",
            batch_size=batch,
            inputs={t.name: warm for t in inputs},
        )
    return config


def _add_tensorrt_accelerator(config: ModelConfig, spec: BuildSpec) -> None:
    """ONNX Runtime's TensorRT execution provider in fp16 (falls back to CUDA per node)."""
    config.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt",
        parameters={
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(spec.workspace_mib << 20),
        },
    )


def postprocess_config(spec: BuildSpec, labels: list[str]) -> ModelConfig | None:
    """The task's Python step after the engine (classification: logits to LABEL, SCORE,
    PROBABILITIES), if it has one."""
    postprocess = encoder_build(spec).postprocess(labels, spec)
    if postprocess is None:
        return None
    return _python_model(
        StepNames(spec.name, spec.version).postprocess,
        spec,
        inputs=[_config_tensor(t) for t in postprocess.inputs],
        outputs=[_config_tensor(t) for t in postprocess.outputs],
        parameters={**postprocess.parameters, **_profile_parameters(spec)},
        instances=1,
        queue_delay_us=0,
        batch=max_batch_size(spec),
    )


def ensemble_config(
    spec: BuildSpec,
    engine_output_name: str,
    output_dim: int,
    labels: list[str] | None = None,
    graph_inputs: tuple[str, ...] = (names.INPUT_IDS, names.ATTENTION_MASK),
) -> ModelConfig:
    """The texts -> tokenizer -> engine [-> postprocess] -> public outputs."""
    steps = StepNames(spec.name, spec.version)
    build = encoder_build(spec)
    inputs = public_inputs(spec)
    config = ModelConfig(
        name=steps.entry,
        platform="ensemble",
        max_batch_size=max_batch_size(spec),
        input=[t.as_input() for t in inputs],
        output=[t.as_output() for t in public_outputs(spec, output_dim)],
    )
    postprocess = build.postprocess(labels or [], spec)
    # The tokenizer's outputs that a later step or the client reads (an ensemble tensor that
    # nothing reads is an error).
    read = {*graph_inputs, *(t.name for t in config.output)}
    read.update(t.name for t in (postprocess.inputs if postprocess else ()))
    tokenized = [t.name for t in build.tokenizer_outputs(graph_inputs) if t.name in read]
    pipeline = [
        (steps.tokenizer, _same(t.name for t in inputs), _same(tokenized)),
        (steps.engine, _same(graph_inputs), {engine_output_name: build.engine_output}),
    ]
    if postprocess:
        pipeline.append(
            (
                steps.postprocess,
                _same(t.name for t in postprocess.inputs),
                _same(t.name for t in postprocess.outputs),
            )
        )
    for model, input_map, output_map in pipeline:
        config.ensemble_scheduling.step.add(
            # Pinned: a build's ensemble runs its own steps, never "the latest".
            model_name=model,
            model_version=spec.version,
            input_map=input_map,
            output_map=output_map,
        )
    return config


def _same(tensor_names: Iterable[str]) -> dict[str, str]:
    """A step's tensors mapped to ensemble tensors of the same names."""
    return {name: name for name in tensor_names}


def _config_tensor(tensor: PublicTensor, output_dim: int = -1) -> Tensor:
    """A public tensor of a task's contract; -1 dims take `output_dim` (the model's width)."""
    dims = tuple(output_dim if d == -1 else d for d in tensor.dims)
    return Tensor(tensor.name, _config_dtype(tensor.datatype), dims)


# The generator's request tensors (each with whether it is optional) and outputs.
GENERATION_INPUTS = [(_config_tensor(t), t.optional) for t in Generation.inputs]
GENERATION_OUTPUTS = [_config_tensor(t) for t in Generation.outputs]


def generator_config(
    spec: BuildSpec, end_ids: list[int], chat_template: dict[str, str | None] | None = None
) -> ModelConfig:
    """A decoupled Python model: the prompt in, text out (streamed or whole). Its decoder is a
    TensorRT plan on a GPU for target `tensorrt`, else the ONNX graph on ONNX Runtime.
    `chat_template` (tritonize.chat's dict), when the checkpoint has one, goes into string
    parameter `chat_template` as JSON, for clients that render chat prompts."""
    on_gpu = spec.target is Target.TENSORRT
    kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    parameters: dict[str, object] = {
        "runtime": "tensorrt" if on_gpu else "onnxruntime",
        "context_window": spec.max_seq_len,
        "max_tokens_limit": usable_window(spec.max_seq_len),
        "max_active": spec.max_batch_size,  # sequences decoded together
        "end_ids": json.dumps(end_ids),
        **_profile_parameters(spec),  # its own name: the profile is beside it
    }
    if chat_template is not None:  # JSON in ASCII (\uXXXX escapes): the config stays plain text
        parameters["chat_template"] = json.dumps(chat_template, sort_keys=True)
    config = ModelConfig(
        name=StepNames(spec.name, spec.version).entry,
        backend="python",
        max_batch_size=spec.max_batch_size,
        input=[t.as_input() for t, _ in GENERATION_INPUTS],
        output=[t.as_output() for t in GENERATION_OUTPUTS],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        instance_group=[mc.ModelInstanceGroup(kind=kind, count=1)],
        parameters={k: mc.ModelParameter(string_value=str(v)) for k, v in parameters.items()},
    )
    for tensor, (_, optional) in zip(config.input, GENERATION_INPUTS, strict=True):
        tensor.optional = optional
    return config


def to_text(config: ModelConfig) -> str:
    """config.pbtxt contents."""
    return text_format.MessageToString(config)


def from_text(text: str) -> ModelConfig:
    """Parse config.pbtxt contents (raises `text_format.ParseError`)."""
    return text_format.Parse(text, ModelConfig())


def _python_model(
    name: str,
    spec: BuildSpec,
    inputs: list[Tensor],
    outputs: list[Tensor],
    parameters: dict[str, object],
    instances: int,
    queue_delay_us: int,
    batch: int | None = None,
) -> ModelConfig:
    """A Python-backend model; `batch` (default: the spec's) 0 for one that does not batch."""
    batch = spec.max_batch_size if batch is None else batch
    config = ModelConfig(
        name=name,
        backend="python",
        max_batch_size=batch,
        input=[t.as_input() for t in inputs],
        output=[t.as_output() for t in outputs],
        instance_group=[
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
        ],
        parameters={k: mc.ModelParameter(string_value=str(v)) for k, v in parameters.items()},
    )
    if batch:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us)
        )
    return config
