"""Progress lines for long work (export, validation, engine builds) so nothing looks hung."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print `title`, run the block, then print how long it took (or that it failed)."""
    print(f"-> {title} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"   failed after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        raise
    print(f"   done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A progress detail under the current step."""
    print(f"   {message}", file=sys.stderr, flush=True)
