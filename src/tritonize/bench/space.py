"""What `tune` sweeps and how it measures: the engine settings of one candidate (`Knobs`), the
space of candidates, and the measuring plan. Light to import: the CLI reads its defaults."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tritonize.errors import SpecError
from tritonize.spec import Target

if TYPE_CHECKING:
    from tritonize.repository.configs import ModelConfig


@dataclass(frozen=True)
class Knobs:
    """The engine step's settings that tune sweeps (BuildSpec's names for them)."""

    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    engine_instances: int
    engine_threads: int  # 0: the engine's default (local: the cores shared among instances)

    @classmethod
    def of(cls, config: ModelConfig) -> Knobs:
        """The settings `config` serves with."""
        from tritonize.repository.configs import THREAD_PARAMETERS, engine_target

        parameter = THREAD_PARAMETERS.get(engine_target(config))
        threads = (
            config.parameters[parameter].string_value if parameter in config.parameters else ""
        )
        return cls(
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
            engine_instances=sum(group.count for group in config.instance_group) or 1,
            engine_threads=int(threads or 0),
        )

    def apply(self, config: ModelConfig) -> None:
        """Set these settings in an engine step's `config`."""
        from tritonize.repository.configs import THREAD_PARAMETERS, engine_target

        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = self.max_queue_delay_us
        batching.preferred_batch_size[:] = self.preferred_batch_sizes
        del config.instance_group[1:]
        config.instance_group[0].count = self.engine_instances
        parameter = THREAD_PARAMETERS.get(engine_target(config))
        if parameter is not None:
            if self.engine_threads:
                config.parameters[parameter].string_value = str(self.engine_threads)
            elif parameter in config.parameters:
                del config.parameters[parameter]

    def spec(self) -> dict[str, Any]:
        """The settings as BuildSpec fields (for the derived build's manifest)."""
        return {
            **dataclasses.asdict(self),
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }

    def label(self) -> str:
        preferred = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        threads = self.engine_threads or "auto"
        return (
            f"delay {self.max_queue_delay_us}us, preferred {preferred}, "
            f"{self.engine_instances} inst x {threads} thr"
        )


DEFAULT_PREFERRED: tuple[tuple[int, ...], ...] = ((), (8, 16))


@dataclass(frozen=True)
class Space:
    """What to sweep: every combination of these values."""

    delays_us: tuple[int, ...] = (0, 1000, 4000)
    preferred: tuple[tuple[int, ...], ...] | None = None  # None: DEFAULT_PREFERRED, cut to fit
    instances: tuple[int, ...] = (1, 2)
    threads: tuple[int, ...] = (0,)

    def candidates(self, target: Target, max_batch_size: int) -> list[Knobs]:
        if target is Target.TENSORRT and any(self.threads):
            raise SpecError("tune: --threads: a TensorRT engine has no thread setting; pass 0")
        return [
            Knobs(delay, sizes, instances, threads)
            for delay, sizes, instances, threads in itertools.product(
                self.delays_us, self._preferred(max_batch_size), self.instances, self.threads
            )
        ]

    def _preferred(self, max_batch_size: int) -> tuple[tuple[int, ...], ...]:
        """The sizes asked for, each within the engine's max_batch_size; the defaults are cut
        to it instead (a build of max_batch_size 8 sweeps none and 8)."""
        if self.preferred is None:
            fitted = (tuple(s for s in sizes if s <= max_batch_size) for sizes in DEFAULT_PREFERRED)
            return tuple(dict.fromkeys(fitted))
        for sizes in self.preferred:
            if any(not 1 <= size <= max_batch_size for size in sizes):
                raise SpecError(
                    f"tune: --preferred {','.join(map(str, sizes))}: each size must be 1.."
                    f"{max_batch_size} (the engine's max_batch_size)"
                )
        return self.preferred


@dataclass(frozen=True)
class Plan:
    """How each candidate is measured."""

    concurrency: tuple[int, ...] = (1, 16, 64)
    seconds: float = 5.0
    warmup_s: float = 1.5
    protocol: str = "grpc"
    confirm_rounds: int = 2  # winner and serving config again, alternating, for the gain
