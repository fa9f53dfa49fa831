"""Dynamic thresholding's percentile: `python -m benchmarks.threshold`.

Times, per sampling step, the per-sample 99.5th percentile of |x̂₀| that dynamic thresholding
needs: `imagen_jax.diffusion.guidance.row_percentile` (bisection on the float bit patterns, no
sort) against `jnp.percentile` (a sort per sample), each jitted alone, at the batch and image
sizes of BENCH-A and of the cascade's three stages. Prints a markdown table; times are the median
of `--calls` calls after two warm-up calls.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_seconds
from imagen_jax.diffusion.guidance import row_percentile

CASES = (("BENCH-A guided step (2 × 16 images)", 32, 32), ("64² base, 8 images", 8, 64),
         ("256² SR, 4 images", 4, 256), ("1024² SR, 1 image", 1, 1024))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.threshold",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--percentile", type=float, default=99.5)
  parser.add_argument("--calls", type=int, default=5)
  args = parser.parse_args(argv)
  bisect = jax.jit(lambda x: row_percentile(x, args.percentile))
  sort = jax.jit(lambda x: jnp.percentile(x, args.percentile, axis=1))
  print(f"p = {args.percentile}, {jax.devices()[0].platform}, median of {args.calls} calls")
  print()
  print("| case | values per sample | row_percentile ms | jnp.percentile (sort) ms | speed-up |")
  print("|---|--:|--:|--:|--:|")
  rng = np.random.default_rng(0)
  for name, batch, size in CASES:
    x = jnp.asarray(np.abs(rng.standard_normal((batch, 3 * size * size), np.float32)))
    np.testing.assert_allclose(np.asarray(bisect(x)), np.asarray(sort(x)), rtol=1e-5)
    a = median_seconds(bisect, x, calls=args.calls)
    b = median_seconds(sort, x, calls=args.calls)
    print(f"| {name} | {3 * size * size} | {a * 1e3:.2f} | {b * 1e3:.2f} | {b / a:.1f}× |")


if __name__ == "__main__":
  main()
