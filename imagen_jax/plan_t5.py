"""Will T5 encoding fit on a TPU slice that is not here, and how fast can it go?

    python -m imagen_jax.plan_t5 --size xxl --topology v5e:2x4 --mesh data=-1 --batch 256
    python -m imagen_jax.plan_t5 --size xxl --topology v4:2x2x1 --mesh fsdp=-1 --max-length 77

`imagen-jax encode` runs the frozen encoder on each host's own devices (`text.mesh`, e.g.
`data=-1`: the weights replicated, the batch split; `fsdp=-1`: the weights split too). This
planner compiles that very program — `imagen_jax.text.encoder`'s jitted T5 forward, with the
parameters laid out by `t5_param_shardings` on the mesh and the token batch split over data × fsdp
— ahead of time for one host's slice (libtpu's compile-only topology, as `imagen-jax plan`), with
`jax.ShapeDtypeStruct` inputs: nothing is allocated and no weights are read.

Reported, per device, from XLA's figures for the TPU target: parameters (from the shardings),
arguments, temporaries, outputs and the peak against the chip's HBM (a program that cannot fit
fails to compile with XLA's CompileTimeHbmOom, reported instead of raised); FLOPs per call; and
the projected captions/s of the slice if every chip ran at its peak bf16 rate (Google's published
figures below) — an upper bound: a real run also spends time in the host's tokenizer, the
transfers and the cache writes.

Sizes are Google's t5-v1_1 encoders (the XXL is Imagen's: 4.76B parameters in the encoder;
DeepFloyd IF's T5 is the same network), hyper-parameters from their config.json files.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax import plan as planner
from imagen_jax import sharding as shd

_V1_1 = {"vocab_size": 32128, "feed_forward_proj": "gated-gelu"}
T5_V1_1 = {  # Hugging Face T5Config fields of google/t5-v1_1-{size}
    "small": {"d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8, "num_heads": 6, **_V1_1},
    "base": {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12, **_V1_1},
    "large": {"d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24, "num_heads": 16,
              **_V1_1},
    "xl": {"d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32, **_V1_1},
    "xxl": {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            **_V1_1},
}
# Peak dense bf16 FLOP/s per JAX device (cloud.google.com/tpu/docs: per chip; a v3 chip is two
# devices, v4 and v5p chips one megacore device each).
PEAK_BF16_FLOPS = {"TPU v3": 61.5e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
                   "TPU v5": 459e12, "TPU v6 lite": 918e12}


@dataclasses.dataclass
class EncodePlan:
  """The answer for one encoder on one host's slice and mesh."""

  size: str
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict[str, int]
  batch: int  # captions per call, over the whole mesh
  max_length: int
  dtype: str
  num_params: int
  hbm_bytes: float
  param_bytes: int  # per device, from the shardings
  forward: planner.CompiledFigures

  @property
  def fits(self) -> bool:
    return not self.forward.oom and self.forward.peak <= self.hbm_bytes

  @property
  def captions_per_s_at_peak(self) -> float | None:
    """Captions/s of the mesh if every device ran its FLOPs at the chip's peak bf16 rate."""
    peak = PEAK_BF16_FLOPS.get(self.device_kind)
    if not peak or not self.forward.flops:
      return None
    return self.batch / (self.forward.flops / peak)  # flops: per device, per call


def t5_config(size: str, dtype: str = "bfloat16"):
  from imagen_jax.text.t5 import T5Config

  if size not in T5_V1_1:
    raise planner.PlanError(f"unknown T5 size {size!r}; choose one of {sorted(T5_V1_1)}")
  dt = jnp.dtype(dtype)
  return T5Config(**T5_V1_1[size], dtype=dt, param_dtype=dt)


def plan_encode(size: str, topology: str, *, mesh: str = "data=-1", batch: int = 256,
                max_length: int = 128, dtype: str = "bfloat16",
                devices: list[Any] | None = None) -> EncodePlan:
  """Compile the encoder's forward for `topology`; see the module docstring. `devices` replaces
  the TPU topology (CPU devices, for tests of the plumbing)."""
  from imagen_jax.text.encoder import _apply, t5_param_shardings
  from imagen_jax.text.t5 import T5Encoder

  config = t5_config(size, dtype)
  devices = planner.tpu_devices(topology) if devices is None else devices
  try:
    the_mesh = shd.make_mesh(shd.parse_mesh_shape(mesh), devices)
  except ValueError as e:
    raise planner.PlanError(f"{e} (topology {topology} has {len(devices)} devices)") from e
  replicas = the_mesh.shape["data"] * the_mesh.shape["fsdp"]
  if batch % replicas:
    raise planner.PlanError(f"--batch {batch} must be a multiple of data × fsdp = {replicas}")
  shardings = t5_param_shardings(config, the_mesh)
  ids = jnp.zeros((1, 8), jnp.int32)
  abstract = shd.strip_boxes(jax.eval_shape(
      lambda: T5Encoder(config).init(jax.random.key(0), ids, ids > 0))["params"])
  params = jax.tree.map(lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
                        abstract, shardings)
  rows = shd.batch_sharding(the_mesh, 2)
  tokens = jax.ShapeDtypeStruct((batch, max_length), jnp.int32, sharding=rows)
  mask = jax.ShapeDtypeStruct((batch, max_length), jnp.bool_, sharding=rows)
  with jax.set_mesh(the_mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    lowered = jax.jit(_apply, static_argnums=(0, 4)).lower(config, params, tokens, mask, True)
    figures = planner._compile(lowered)
  kind = getattr(devices[0], "device_kind", "unknown")
  return EncodePlan(
      size=size, topology=topology, device_kind=kind, num_devices=len(devices),
      mesh=dict(the_mesh.shape), batch=batch, max_length=max_length, dtype=config.dtype.name,
      num_params=sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
      hbm_bytes=planner.HBM_GIB.get(kind, float("inf")) * planner.GIB,
      param_bytes=planner._shard_bytes(params), forward=figures)


def format_encode_plan(plan: EncodePlan) -> str:
  gib = planner._gib
  fig = plan.forward
  lines = [planner.slice_line(f"T5-{plan.size} encoder", plan),
           f"  {plan.num_params / 1e9:.2f}B parameters in {plan.dtype}; {plan.batch} captions of "
           f"{plan.max_length} tokens per call; params per device {gib(plan.param_bytes)} GiB"]
  lines.append(planner.figures_line(fig, plan.hbm_bytes))
  if fig.oom:
    return "\n".join(lines)
  rate = plan.captions_per_s_at_peak
  lines.append(f"  {fig.flops / 1e12:.2f} TFLOP per device per call ("
               f"{fig.flops * plan.num_devices / plan.batch / 1e9:.1f} GFLOP per caption); at the "
               f"chips' peak bf16 rate: {rate:,.0f} captions/s" if rate else
               f"  {fig.flops / 1e12:.2f} TFLOP per device per call")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="xxl", choices=sorted(T5_V1_1))
  parser.add_argument("--topology", required=True, help="one host's slice, e.g. v5e:2x4, v4:2x2x1")
  parser.add_argument("--mesh", default="data=-1", help="e.g. data=-1, fsdp=-1, data=2,fsdp=4")
  parser.add_argument("--batch", type=int, default=256, help="captions per call (whole mesh)")
  parser.add_argument("--max-length", type=int, default=128, help="Imagen: 128; DeepFloyd IF: 77")
  parser.add_argument("--dtype", default="bfloat16")
  args = parser.parse_args(argv)
  try:
    plan = plan_encode(args.size, args.topology, mesh=args.mesh, batch=args.batch,
                       max_length=args.max_length, dtype=args.dtype)
  except planner.PlanError as e:
    parser.error(str(e))
  print(format_encode_plan(plan))


if __name__ == "__main__":
  main()
