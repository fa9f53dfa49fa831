"""The timing loop the small profiling benchmarks share."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, *args, calls: int, warmup: int = 2) -> float:
  """Median wall seconds of `fn(*args)` run to completion (`jax.block_until_ready`), over `calls`
  calls after `warmup` discarded ones (the first compiles)."""
  import jax

  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)
