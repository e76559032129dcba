"""The public model during a canary: it sends each request to the candidate build with the
canary's probability and to the serving build otherwise (by BLS, calling each build's entry by
its own name), and answers with that build's response plus `MODEL_VERSION`, the build that
made it (Triton's `model_version` names the router's version, the serving build's number).

The gates of `tritonize rollout --canary` read what the router saw, per build: requests and
failures, latency (a histogram), and, for a request/response model, how often the serving
build answers a canary request alike (every canary request is also sent to it, compared
output by output; streams are not mirrored).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import MODEL_VERSION, metric_labels, model_parameters
from .compare import disagreement

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None

REQUESTS = "tritonize_canary_requests_total"
LATENCY = "tritonize_canary_latency_seconds"
COMPARED = "tritonize_canary_compared_total"
# 1 ms to ~70 s, 25% apart: fine enough that two builds' p95s compare to within a bucket.
LATENCY_BUCKETS = [round(0.001 * 1.25**k, 6) for k in range(51)]


@dataclass(frozen=True)
class Build:
    entry: str  # the build's entry model, NAME.vN
    version: int


@dataclass(frozen=True)
class Split:
    serving: Build
    candidate: Build
    share: float  # of requests the candidate answers, 0..1

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Split:
        return cls(
            Build(params["serving_entry"], int(params["serving_version"])),
            Build(params["candidate_entry"], int(params["candidate_version"])),
            float(params["canary_share"]),
        )

    def choose(self, draw: float) -> Build:
        """The build for a request, given a uniform draw in [0, 1)."""
        return self.candidate if draw < self.share else self.serving


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.split = Split.from_parameters(model_parameters(args))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.random = random.Random()
        self.metrics = _Metrics(args["model_name"], self.split)

    def execute(self, requests: list[Any]) -> Coroutine[Any, Any, Any]:
        """A coroutine for the stub to run: BLS's `async_exec` lets one instance wait on
        many builds' answers at once (for a decoupled model, the stub runs it beside others)."""
        builds = [self.split.choose(self.random.random()) for _ in requests]
        if self.decoupled:
            return self._stream_all(requests, builds)
        return self._answer_all(requests, builds)

    async def _answer_all(self, requests: list[Any], builds: list[Build]) -> list[Any]:
        return list(await asyncio.gather(*map(self._answer, requests, builds)))

    async def _stream_all(self, requests: list[Any], builds: list[Build]) -> None:
        await asyncio.gather(*map(self._stream, requests, builds))

    # -- request / response ------------------------------------------------------------------
    async def _answer(self, request: Any, build: Build) -> Any:
        started = time.perf_counter()
        mirror = None
        if build == self.split.candidate:  # mirrored to the serving build, to compare
            mirror = asyncio.ensure_future(self._forward(request, self.split.serving).async_exec())
        answer = await self._forward(request, build).async_exec()
        self.metrics.record(build, "failed" if answer.has_error() else "ok", started)
        if mirror is not None:
            serving = await mirror
            if not answer.has_error():
                self.metrics.compare(answer, serving)
        if answer.has_error():
            return pb_utils.InferenceResponse(error=_error_of(answer))
        return pb_utils.InferenceResponse(
            output_tensors=[*answer.output_tensors(), self._version(request, build)]
        )

    # -- streams -----------------------------------------------------------------------------
    async def _stream(self, request: Any, build: Build) -> None:
        """Forward a stream's responses as they come; a cancelled stream stops being
        forwarded (BLS cannot cancel the build's request: it runs to its end unseen)."""
        sender = request.get_response_sender()
        started, outcome = time.perf_counter(), "ok"
        try:
            responses = await self._forward(request, build).async_exec(decoupled=True)
            for response in responses:
                if request.is_cancelled():
                    outcome = "cancelled"
                    break
                if response.has_error():
                    outcome = "failed"
                    sender.send(pb_utils.InferenceResponse(error=_error_of(response)))
                elif response.output_tensors():
                    tensors = [*response.output_tensors(), self._version(request, build)]
                    sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
                await asyncio.sleep(0)  # the other streams' responses, in turn
        except Exception as exc:  # the stream ends with an error, never silently
            outcome = "failed"
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(repr(exc))))
        finally:
            self.metrics.record(build, outcome, started)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    # -- helpers -----------------------------------------------------------------------------
    def _forward(self, request: Any, build: Build) -> Any:
        parameters = json.loads(request.parameters() or "{}")
        return pb_utils.InferenceRequest(
            model_name=build.entry,
            inputs=request.inputs(),
            requested_output_names=[
                n for n in request.requested_output_names() if n != MODEL_VERSION
            ],
            parameters=parameters,
        )

    def _version(self, request: Any, build: Build) -> Any:
        rows = request.inputs()[0].shape()[0] if self.batched and request.inputs() else None
        shape = (rows, 1) if rows is not None else (1,)
        return pb_utils.Tensor(MODEL_VERSION, np.full(shape, build.version, dtype=np.int64))


def _error_of(response: Any) -> Any:
    error = response.error()
    try:
        return pb_utils.TritonError(error.message(), error.code())
    except (AttributeError, TypeError):
        return pb_utils.TritonError(error.message())


class _Metrics:
    """What the router saw, per build (families kept alive beside their metrics)."""

    def __init__(self, model: str, split: Split) -> None:
        family = pb_utils.MetricFamily
        self.families = [
            family(name=name, description=text, kind=kind)
            for name, text, kind in (
                (REQUESTS, "Canary requests by build and outcome", family.COUNTER),
                (LATENCY, "Canary request latency by build", family.HISTOGRAM),
                (COMPARED, "Canary requests the serving build also answered", family.COUNTER),
            )
        ]
        labels = metric_labels(model)
        builds = (split.serving, split.candidate)
        self.requests = {
            (b, outcome): self.families[0].Metric(
                labels={**labels, "build": str(b.version), "outcome": outcome}
            )
            for b in builds
            for outcome in ("ok", "failed", "cancelled")
        }
        self.latency = {
            b: self.families[1].Metric(
                labels={**labels, "build": str(b.version)}, buckets=LATENCY_BUCKETS
            )
            for b in builds
        }
        self.compared = {
            outcome: self.families[2].Metric(labels={**labels, "outcome": outcome})
            for outcome in ("agree", "disagree")
        }

    def record(self, build: Build, outcome: str, started: float) -> None:
        self.requests[build, outcome].increment(1)
        self.latency[build].observe(time.perf_counter() - started)

    def compare(self, candidate: Any, serving: Any) -> None:
        if serving.has_error():
            return  # the serving build failed: nothing to compare with
        outputs = [
            {t.name(): t.as_numpy() for t in response.output_tensors()}
            for response in (candidate, serving)
        ]
        self.compared["agree" if disagreement(*outputs) is None else "disagree"].increment(1)
