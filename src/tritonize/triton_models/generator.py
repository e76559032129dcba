"""Generator step: a decoupled Python model decoding many requests together.

Continuous batching: new requests are prefilled and join the running batch between decode
steps; finished or cancelled ones leave it. Every active sequence advances by one token per
step in a single call of the decoder (ONNX Runtime, or a TensorRT plan on a GPU), whose KV
cache stays in the runtime between steps (decoding.py). Public tensors use TensorRT-LLM's names.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from .common import RequestError, metric_labels, model_parameters, rejection, version_dir
from .decoding import DecoderRuntime, DecoderSession, OnnxDecoderRuntime
from .features import INPUT, PREDICTION, feature_metrics, output_counts, prompt_counts
from .generation import (
    MAX_STOP_WORDS,
    REQUEST_DEFAULTS,
    REQUEST_FIELDS,
    GenerationParams,
    IncrementalDetokenizer,
    PromptEncoder,
    Sampler,
    StopMatcher,
    check_fields,
    check_stop_words,
    check_token_id,
)
from .sampling import RequestSampler

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None


@dataclass(eq=False)
class Sequence:
    """One request being generated."""

    prompt: list[int]
    params: GenerationParams
    tokenizer: tokenizers.Tokenizer
    owner: Any = None  # the Triton response sender
    prompt_text: str = ""
    text: str = ""  # what a non-streamed response will carry
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    created: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.params)
        self.detokenizer = IncrementalDetokenizer(self.tokenizer, self.prompt)
        self.stop = StopMatcher(self.params.stop_words)


@dataclass(frozen=True)
class Event:
    """Text for one sequence after a step; `final` when it has finished."""

    sequence: Sequence
    text: str
    final: bool
    first_token_s: float | None = None  # time to first token, on the first event
    inter_token_s: float | None = None
    reason: str | None = None  # why it finished (features.STOP_REASONS), on the final event


class Scheduler:
    """Continuous batching over a `DecoderSession` (thread-safe `submit`, `step` in one thread)."""

    def __init__(self, session: DecoderSession, max_active: int, context_window: int) -> None:
        self.session = session
        self.max_active = max_active
        self.context_window = context_window
        self.waiting: queue.Queue[Sequence] = queue.Queue()
        self.active: list[Sequence] = []

    def submit(self, sequence: Sequence) -> None:
        self.waiting.put(sequence)

    def step(self, idle_wait_s: float = 0.05) -> list[Event]:
        """Admit waiting sequences (one prefill), then advance every active one by one token."""
        events: list[Event] = []
        for sequence in self.active:
            if sequence.cancelled:
                self.session.release(sequence)
        running = [s for s in self.active if not s.cancelled]  # each has had a token already
        admitted: list[Sequence] = []
        while len(running) + len(admitted) < self.max_active:
            try:
                wait = idle_wait_s if not (running or admitted) else 0
                admitted.append(self.waiting.get(timeout=wait))
            except queue.Empty:
                break
        self.active = running + admitted  # before the calls: should one fail, all are answered
        if admitted:  # prefilled together, in one call
            logits = self.session.prefill({s: s.prompt for s in admitted})
            for row, sequence in enumerate(admitted):
                events.append(self._advance(sequence, sequence.sampler.next_token(logits[row])))
        if running:
            logits = self.session.decode(running, [s.generated[-1] for s in running])
            for row, sequence in enumerate(running):
                events.append(self._advance(sequence, sequence.sampler.next_token(logits[row])))
        self.active = [s for s in self.active if not s.finished]
        if not self.active:
            self.session.reset()
        return events

    def abort(self) -> list[Sequence]:
        """After a failed step: drop every active sequence (to be answered) and free caches."""
        dropped, self.active = self.active, []
        self.session.reset()
        return dropped

    def _advance(self, sequence: Sequence, token: int) -> Event:
        now = time.perf_counter()
        first = now - sequence.created if sequence.last_token_at is None else None
        gap = None if sequence.last_token_at is None else now - sequence.last_token_at
        sequence.last_token_at = now
        if token in sequence.params.end_ids:
            return self._finish(sequence, "", first, gap, "end")
        sequence.generated.append(token)
        text, stopped = sequence.stop.feed(sequence.detokenizer.push(token))
        if stopped:
            return self._finish(sequence, text, first, gap, "stop_word")
        if len(sequence.generated) >= sequence.params.max_tokens:
            return self._finish(sequence, text, first, gap, "max_tokens")
        if len(sequence.prompt) + len(sequence.generated) >= self.context_window:
            return self._finish(sequence, text, first, gap, "window")
        return Event(sequence, text, False, first, gap)

    def _finish(
        self, sequence: Sequence, text: str, first: float | None, gap: float | None, reason: str
    ) -> Event:
        if reason != "stop_word":  # text held back as a possible stop word's start is due
            text += sequence.stop.feed(sequence.detokenizer.flush())[0] + sequence.stop.flush()
        sequence.finished = True
        self.session.release(sequence)
        return Event(sequence, text, True, first, gap, reason)


# -- the Triton adapter -------------------------------------------------------------------------


class TritonPythonModel:
    """Decoupled: `execute` queues requests; a thread steps the scheduler and sends responses."""

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        directory = version_dir(args)
        self.name = args["model_name"]
        self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.end_ids = frozenset(json.loads(params["end_ids"]))
        self.context_window = int(params["context_window"])
        self.max_tokens_limit = int(params["max_tokens_limit"])
        self.prompts = PromptEncoder(self.tokenizer, self.context_window)
        device = int(args.get("model_instance_device_id") or 0)  # KIND_GPU: this instance's GPU
        runtime = _runtime(directory, params, device)
        self.vocab_size = int(runtime.vocab)
        session = DecoderSession(runtime)
        self.scheduler = Scheduler(session, int(params["max_active"]), self.context_window)
        self.metrics = _GeneratorMetrics(self.name)
        self.sampler = RequestSampler.for_model(self.name)
        self.features = feature_metrics(pb_utils, args, INPUT, PREDICTION)
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                sequence = self._sequence(request)
            except Exception as exc:  # never let a request take the stub down: answer it
                final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                sender.send(self._refusal(exc), flags=final)
                continue
            sequence.owner = sender
            self.scheduler.submit(sequence)
        return None

    def _refusal(self, exc: Exception) -> Any:
        """The client's mistake as INVALID_ARGUMENT; anything else as a logged INTERNAL error.
        Both are counted: Triton counts a decoupled model's error responses as successes."""
        if isinstance(exc, RequestError):
            self.metrics.fail("invalid_argument")
            return rejection(pb_utils, exc)
        pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
        self.metrics.fail("internal")
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}"))

    def finalize(self) -> None:
        self.running = False
        self.thread.join(timeout=10)
        if self.sampler is not None:
            self.sampler.close()
        if self.features is not None:
            self.features.flush()

    def _sequence(self, request: Any) -> Sequence:
        check_fields(_parameter_names(request))
        values = _read_inputs(request)
        prompt_text = values.get("text_input")
        if not isinstance(prompt_text, str):
            raise RequestError("`text_input` is missing: expected a prompt")
        for name in ("end_id", "pad_id"):
            if name in values:
                check_token_id(name, int(values[name]), self.vocab_size)
        check_stop_words(values.get("stop_words", []))  # before the prompt's tokenization
        prompt = self.prompts.encode(prompt_text)
        if self.sampler is not None:
            self.sampler.offer({"text_input": [prompt_text]})
        if self.features is not None:
            self.features.add(prompt_counts([prompt_text], [len(prompt)]))
        end_ids = self.end_ids | ({values["end_id"]} if "end_id" in values else set())
        values = {**REQUEST_DEFAULTS, **values}
        params = GenerationParams(
            max_tokens=int(values["max_tokens"]),
            temperature=float(values["temperature"]),
            top_k=int(values["top_k"]),
            top_p=float(values["top_p"]),
            seed=int(values["seed"]) if "seed" in values else None,
            stop_words=tuple(values["stop_words"]),
            end_ids=frozenset(end_ids),
            stream=bool(values["stream"]),
            exclude_input_in_output=bool(values["exclude_input_in_output"]),
        )
        params.check(self.max_tokens_limit)
        text = "" if params.exclude_input_in_output else prompt_text
        return Sequence(prompt, params, self.tokenizer, prompt_text=prompt_text, text=text)

    def _loop(self) -> None:
        while self.running:
            for sequence in self.scheduler.active:
                if sequence.owner.is_cancelled():
                    sequence.cancelled = True
                    sequence.owner.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            try:
                events = self.scheduler.step()
            except Exception as exc:  # answer every active request rather than hang them
                pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
                self._fail_all(str(exc))
                continue
            for event in events:
                self._emit(event)
            self.metrics.active.set(len(self.scheduler.active))

    def _emit(self, event: Event) -> None:
        sequence, sender = event.sequence, event.sequence.owner
        self.metrics.observe(event)
        if event.reason and self.features is not None:
            self.features.add(output_counts([len(sequence.generated)], [event.reason]))
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if event.final else 0
        if sequence.params.stream:
            text = event.text
            if not sequence.params.exclude_input_in_output and len(sequence.generated) <= 1:
                text = sequence.prompt_text + text
            if text or event.final:
                sender.send(self._response(sequence, text), flags=final)
            return
        sequence.text += event.text
        if event.final:
            sender.send(self._response(sequence, sequence.text), flags=final)

    def _response(self, sequence: Sequence, text: str) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=object)),
                pb_utils.Tensor("num_input_tokens", np.array([[len(sequence.prompt)]], np.int32)),
                pb_utils.Tensor(
                    "num_output_tokens", np.array([[len(sequence.generated)]], np.int32)
                ),
            ]
        )

    def _fail_all(self, message: str) -> None:
        for sequence in self.scheduler.abort():
            self.metrics.fail("internal")
            sequence.owner.send(
                pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"generation failed: {message}")
                ),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )


def _runtime(directory: Path, params: dict[str, str], device: int) -> DecoderRuntime:
    """The decoder the build wrote: a TensorRT plan (GPU) or the ONNX graph (ONNX Runtime)."""
    if params.get("runtime") == "tensorrt":
        try:
            from .tensorrt_decoder import TensorRTDecoderRuntime
        except ImportError as exc:
            raise RuntimeError(
                f"this generator's decoder is a TensorRT plan, which needs {exc.name!r} here: "
                "build the Triton image with TensorRT's Python package and CUDA PyTorch "
                "(`GENERATION_TENSORRT=true docker compose build triton`)"
            ) from exc
        return TensorRTDecoderRuntime(directory / "model.plan", device)
    return OnnxDecoderRuntime(directory / "model.onnx")


def _parameter_names(request: Any) -> set[str]:
    """Names of the request's parameters: over HTTP `/generate`, Triton turns every JSON field
    that is not one of the model's inputs into a parameter, so a misspelt field lands here."""
    return set(json.loads(request.parameters() or "{}"))


def _read_inputs(request: Any) -> dict[str, Any]:
    """The request's tensors as Python values; a batch of several prompts is refused."""
    values: dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        array = tensor.as_numpy()
        if array.shape[0] != 1:
            raise RequestError(
                f"`{name}` has batch size {array.shape[0]}: send one prompt per request "
                "(concurrent requests are batched by the generator)"
            )
        flat = array.reshape(-1)
        if name == "stop_words":
            values[name] = _stop_words(flat)
        elif name == "text_input":
            raw = flat[0]
            try:
                values[name] = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError as exc:
                raise RequestError(f"`text_input` is not valid UTF-8 (byte {exc.start})") from None
        elif flat.size:
            values[name] = flat[0].item()
    return values


def _stop_words(flat: np.ndarray) -> list[str]:
    """The stop words as text; too many are refused before any is decoded."""
    if flat.size > MAX_STOP_WORDS:
        raise RequestError(f"`stop_words` has {flat.size} words: at most {MAX_STOP_WORDS} allowed")
    words = []
    for i, word in enumerate(flat):
        try:
            words.append(word.decode("utf-8") if isinstance(word, bytes) else str(word))
        except UnicodeDecodeError as exc:
            raise RequestError(f"`stop_words`[{i}] is not valid UTF-8 (byte {exc.start})") from None
    return words


class _GeneratorMetrics:
    """tritonize_* generation metrics (families kept alive beside their metrics)."""

    def __init__(self, model: str) -> None:
        family = pb_utils.MetricFamily
        labels = metric_labels(model)
        seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
        declared = [
            (
                "tritonize_time_to_first_token_seconds",
                "Request arrival to first token",
                "HISTOGRAM",
            ),
            ("tritonize_inter_token_latency_seconds", "Between tokens of a request", "HISTOGRAM"),
            ("tritonize_generated_tokens_total", "Tokens generated", "COUNTER"),
            ("tritonize_active_sequences", "Sequences in the running batch", "GAUGE"),
            (
                "tritonize_request_failures_total",
                "Generation requests answered with an error, by reason (invalid_argument: "
                "refused as the client's mistake; internal: failed in the server)",
                "COUNTER",
            ),
        ]
        self.families = [
            family(name=name, description=text, kind=getattr(family, kind))
            for name, text, kind in declared
        ]
        self.ttft = self.families[0].Metric(labels=labels, buckets=seconds)
        self.itl = self.families[1].Metric(labels=labels, buckets=seconds)
        self.tokens = self.families[2].Metric(labels=labels)
        self.active = self.families[3].Metric(labels=labels)
        self.failures = {
            reason: self.families[4].Metric(labels={**labels, "reason": reason})
            for reason in ("invalid_argument", "internal")
        }

    def fail(self, reason: str) -> None:
        self.failures[reason].increment(1)

    def observe(self, event: Event) -> None:
        if event.first_token_s is not None:
            self.ttft.observe(event.first_token_s)
        if event.inter_token_s is not None:
            self.itl.observe(event.inter_token_s)
        self.tokens.increment(1)
