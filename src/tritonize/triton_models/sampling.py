"""Opt-in request sampling: a share of the requests' texts kept as JSON lines, the material of
the next training round. Off unless the server's environment turns it on (`tritonize serve
--sample-rate`, or the variables below in a container). The files hold users' text.

One file set per model and stub process (`<dir>/<model>.<pid>.jsonl`, then `.1`, `.2`, ... as
it rotates), so that no two processes write one file; each set stays under its size cap.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

from .common import build_of

RATE_VARIABLE = "TRITONIZE_SAMPLE_RATE"
DIR_VARIABLE = "TRITONIZE_SAMPLE_DIR"
MAX_BYTES_VARIABLE = "TRITONIZE_SAMPLE_MAX_BYTES"
DEFAULT_MAX_BYTES = 100 * 2**20
SAMPLING_VARIABLES = (RATE_VARIABLE, DIR_VARIABLE, MAX_BYTES_VARIABLE)
BACKUPS = 4  # rotated files kept beside the one being written


class SamplingError(ValueError):
    """The sampling settings are unusable; the message names the variable."""


@dataclass(frozen=True)
class Sampling:
    """Keep each request with probability `rate` in `directory`, at most `max_bytes` of it
    per model and process (the oldest rotated file goes first)."""

    rate: float
    directory: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise SamplingError(
                f"{RATE_VARIABLE}={self.rate} (serve --sample-rate): expected a share in (0, 1]"
            )
        if self.max_bytes < 1024:
            raise SamplingError(
                f"{MAX_BYTES_VARIABLE}={self.max_bytes} (serve --sample-max-mb): expected at "
                "least 1024 bytes"
            )

    def environment(self) -> dict[str, str]:
        """The variables that turn sampling on in the server's Python steps."""
        return {
            RATE_VARIABLE: repr(self.rate),
            DIR_VARIABLE: str(self.directory.resolve()),
            MAX_BYTES_VARIABLE: str(self.max_bytes),
        }

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Sampling | None:
        """The settings in `environ`, or None (off) where the rate is unset, empty or 0."""
        rate = environ.get(RATE_VARIABLE, "").strip()
        if rate in ("", "0", "0.0"):
            return None
        directory = environ.get(DIR_VARIABLE, "").strip()
        if not directory:
            raise SamplingError(f"{RATE_VARIABLE} is set: {DIR_VARIABLE} must name a directory")
        max_bytes = environ.get(MAX_BYTES_VARIABLE, "").strip() or str(DEFAULT_MAX_BYTES)
        try:
            return cls(float(rate), Path(directory), int(max_bytes))
        except ValueError as exc:
            if isinstance(exc, SamplingError):
                raise
            raise SamplingError(
                f"{RATE_VARIABLE}={rate!r}, {MAX_BYTES_VARIABLE}={max_bytes!r}: expected a share "
                "in (0, 1] and a whole number of bytes"
            ) from None


class RequestSampler:
    """Writes a sampled request's inputs as one JSON line: time, model, inputs."""

    def __init__(self, model: str, settings: Sampling, seed: int | None = None) -> None:
        self.model = model
        self.rate = settings.rate
        self.random = random.Random(seed)
        # Users' text: a directory this tool creates is its owner's alone.
        settings.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = settings.directory / f"{model}.{os.getpid()}.jsonl"
        self.handler = RotatingFileHandler(
            path, maxBytes=settings.max_bytes // (BACKUPS + 1), backupCount=BACKUPS,
            encoding="utf-8",
        )  # fmt: skip
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    @classmethod
    def for_model(cls, model: str) -> RequestSampler | None:
        """The sampler the server's environment asks for, or None when sampling is off."""
        settings = Sampling.from_environment()
        return None if settings is None else cls(model, settings)

    def offer(self, inputs: Mapping[str, Sequence[str]]) -> bool:
        """Keep one request's `inputs` (tensor name -> its texts) with the sampling rate."""
        if self.random.random() >= self.rate:
            return False
        name, version = build_of(self.model)
        record = {"time": time.time(), "model": name, "version": version, "inputs": dict(inputs)}
        line = json.dumps(record, ensure_ascii=False)
        self.handler.emit(logging.makeLogRecord({"msg": line, "args": None}))
        return True

    def close(self) -> None:
        self.handler.close()
