"""FLOPs per call, counted the same way for every framework: matmuls, convolutions and attention
(2 per multiply-add), nothing elementwise.

  * PyTorch: `torch.utils.flop_counter.FlopCounterMode` over one call (forward and backward
    kernels as they run). Its registry (torch 2.13) lacks the CPU flash-attention kernels that
    `F.scaled_dot_product_attention` dispatches to on this machine, so they are mapped to its own
    sdpa formulas (`TORCH_CPU_SDPA`).
  * JAX: `jaxpr_flops` walks the jaxpr of the jitted function — `dot_general` and
    `conv_general_dilated`, nested jaxprs (pjit, custom_jvp/vjp, remat, cond: the costliest
    branch) and `scan` bodies times their length. A convolution with input dilation (the gradient
    of a strided convolution) is counted without the inserted zeros, as PyTorch counts its
    transposed convolution.

XLA's own `cost_analysis()` (ours only) also counts elementwise work and counts a loop body once;
the harness reports it separately, never in the ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _prod(xs) -> int:
  return int(math.prod(int(x) for x in xs))


def dot_general_flops(lhs_shape, out_shape, contracting_dims) -> int:
  """2 · (output elements) · (contracted size)."""
  return 2 * _prod(out_shape) * _prod(lhs_shape[d] for d in contracting_dims)


def conv_flops(rhs_shape, out_shape, rhs_spec, lhs_dilation=None) -> int:
  """2 · (output elements) · (kernel input features × kernel window), less the zeros of input
  dilation. `rhs_spec` = (out-feature dim, in-feature dim, *spatial dims) of the kernel."""
  k = rhs_shape[rhs_spec[1]] * _prod(rhs_shape[d] for d in rhs_spec[2:])
  flops = 2 * _prod(out_shape) * k
  if lhs_dilation:
    flops //= _prod(lhs_dilation)
  return flops


def _sub_jaxprs(value) -> list:
  from jax.extend import core

  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_flops(jaxpr) -> int:
  """Dot and convolution FLOPs of a (closed) jaxpr, nested jaxprs included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      total += dot_general_flops(eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape, lhs_contract)
    elif name == "conv_general_dilated":
      dn = eqn.params["dimension_numbers"]
      total += conv_flops(eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape, dn.rhs_spec,
                          eqn.params.get("lhs_dilation"))
    elif name == "cond":
      total += max((jaxpr_flops(b) for b in _sub_jaxprs(eqn.params["branches"])), default=0)
    else:
      inner = sum(jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * (int(eqn.params["length"]) if name == "scan" else 1)
  return total


def jax_flops(fn: Callable, *args, **kwargs) -> int:
  """Dot and convolution FLOPs of one call of `fn(*args, **kwargs)` (traced, not run)."""
  import jax

  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def xla_flops(compiled) -> float:
  """The 'flops' entry of a compiled executable's `cost_analysis()`."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def torch_cpu_sdpa_mapping() -> dict[Any, Any]:
  """FlopCounterMode formulas for the CPU flash-attention kernels (absent from torch's registry):
  those of the CUDA flash kernels, which take the same leading arguments (grad_out,) q, k, v."""
  import torch
  from torch.utils import flop_counter

  aten = torch.ops.aten

  def raw(formula):  # registered formulas already turn tensors into shapes
    def counted(*args, **kwargs):
      return formula(*args, **kwargs)

    counted._get_raw = True
    return counted

  pairs = (("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
           ("_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_flash_attention_backward"))
  mapping = {}
  for cpu_op, known in pairs:
    if hasattr(aten, cpu_op) and getattr(aten, known) in flop_counter.flop_registry:
      mapping[getattr(aten, cpu_op)] = raw(flop_counter.flop_registry[getattr(aten, known)])
  return mapping


def torch_flops(fn: Callable[[], Any]) -> int:
  """FLOPs of one call of `fn()` as `FlopCounterMode` counts them (CPU attention included)."""
  from torch.utils.flop_counter import FlopCounterMode

  with FlopCounterMode(display=False, custom_mapping=torch_cpu_sdpa_mapping()) as counter:
    fn()
  return int(counter.get_total_flops())
