"""This machine's fp32 roof, measured in the same run: one large square matmul per call.

n = 4096 (2·n³ ≈ 137 GFLOP per call) in numpy (its BLAS), jax (XLA's dot) and torch (its BLAS);
the harness takes the best median as the roof the other figures are a share of.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N = 4096


def matmul_flops(m: int, n: int, k: int) -> int:
  return 2 * m * n * k


def build(framework: str, n: int = N) -> tuple[Any, dict[str, Any]]:
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  info: dict[str, Any] = {"framework": framework, "n": n, "flops": matmul_flops(n, n, n),
                          "params": None}
  if framework == "numpy":
    out = np.empty((n, n), np.float32)
    info["numpy"] = np.__version__
    return (lambda: np.matmul(a, b, out=out)), info
  if framework == "jax":
    import jax
    import jax.numpy as jnp

    da, db = jax.device_put(a), jax.device_put(b)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest")).lower(da, db).compile()
    info["jax"] = jax.__version__
    return (lambda: jax.block_until_ready(mm(da, db))), info
  if framework == "torch":
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = torch.empty((n, n))
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return (lambda: torch.mm(ta, tb, out=out)), info
  raise ValueError(f"roof: unknown framework {framework!r}")
