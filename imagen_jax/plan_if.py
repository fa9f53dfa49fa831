"""Will a DeepFloyd IF U-Net sample on a TPU slice that is not here?

    python -m imagen_jax.plan_if --unet tests/data/if_configs/IF-I-XL-v1.0.json \\
        --topology v5e:2x4 --mesh fsdp=-1 --batch 4
    python -m imagen_jax.plan_if --unet tests/data/if_configs/IF-II-L-v1.0.json \\
        --topology v4:2x2x1 --mesh fsdp=-1 --batch 4 --resolution 256

`imagen-jax plan` (`imagen_jax.plan`) compiles a stage config's train step and whole sampler —
ours, and IF fine-tune configs (configs/if_finetune.py) given an IF directory with its scheduler
configs. This planner needs only a diffusers `unet/config.json`, and plans sampling's cost alone:
the step every sampler repeats, one classifier-free-guided forward of the U-Net
(`imagen_jax.diffusion.guidance.guided_output` over `IFDenoiser`, both branches in one batch of
2 × batch rows, T5-XXL text of 77 × 4096; stage II adds the upscaled low-res image and its noise
level). It is compiled ahead of time for the slice from libtpu's compile-only topology
(`imagen_jax.plan.tpu_devices`) with `jax.ShapeDtypeStruct` inputs: the parameters in `dtype`,
laid out by `if_param_shardings` over the mesh (weights' input dims over fsdp, output dims over
tensor), the batch over data × fsdp when it divides. Nothing is allocated, no weights are read.

The figures are XLA's for the TPU target, per device, as `imagen-jax plan` reports them
(`imagen_jax.plan._compile`): arguments (parameters + inputs), temporaries (activations,
gathered weights, collective buffers), outputs, and the peak; a forward that cannot fit fails to
compile with XLA's CompileTimeHbmOom, reported instead of raised. A sampler's loop holds only the
image and its own state besides, so the forward's peak is the sampler's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax import plan as planner
from imagen_jax import sharding as shd

TEXT_LENGTH = 77  # IF's tokenizer pads every prompt to 77 tokens; all 77 states go to the U-Net


@dataclasses.dataclass
class IFSamplingPlan:
  """The answer for one IF U-Net on one slice and mesh."""

  name: str
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict[str, int]
  batch: int  # prompts; the forward runs 2 × batch rows
  resolution: int
  dtype: str
  num_params: int
  hbm_bytes: float
  param_bytes: int  # per device, from the shardings
  input_bytes: int  # per device: image, text, low-res image, …
  forward: planner.CompiledFigures

  @property
  def fits(self) -> bool:
    return not self.forward.oom and self.forward.peak <= self.hbm_bytes


def read_unet_config(source: str | os.PathLike[str] | Mapping[str, Any]
                     ) -> tuple[str, dict[str, Any]]:
  """(name, diffusers config dict) from a dict, a config.json file or a model directory."""
  if isinstance(source, Mapping):
    return str(source.get("_name_or_path", "IF U-Net")), dict(source)
  path = Path(source)
  file = path / "config.json" if path.is_dir() else path
  if not file.is_file():
    raise planner.PlanError(f"no diffusers U-Net config at {path} (a config.json file, or a "
                            f"directory holding one)")
  config = json.loads(file.read_text())
  return str(config.get("_name_or_path") or (path.name if path.is_dir() else path.stem)), config


def _mesh_shape(text: str) -> dict[str, int]:
  if not text:
    raise planner.PlanError("--mesh is required, e.g. fsdp=-1 or data=2,fsdp=4")
  return planner.parse_mesh(text, None)


def plan_if_sampling(unet_config: str | os.PathLike[str] | Mapping[str, Any], topology: str, *,
                     mesh: str = "fsdp=-1", batch: int = 4, resolution: int | None = None,
                     dtype: str = "bfloat16", remat: bool = False,
                     devices: list[Any] | None = None) -> IFSamplingPlan:
  """Compile one guided forward of the IF U-Net of `unet_config` for `topology`.

  `batch` prompts (2 × batch rows through the U-Net), at `resolution` px (default the config's
  sample_size; IF-II's configs have none: give 256), parameters and compute in `dtype`.
  `devices` replaces the TPU topology (e.g. CPU devices, for tests of the plumbing)."""
  from imagen_jax.diffusion.diffusers_scheduler import (IF_STAGE_I_SCHEDULER_CONFIG,
                                                        from_diffusers_config)
  from imagen_jax.diffusion.guidance import guided_output
  from imagen_jax.models.if_config import IFUNetConfig
  from imagen_jax.models.if_weights import abstract_params, if_param_shardings
  from imagen_jax.pretrained.deepfloyd_if import IFDenoiser

  name, config = read_unet_config(unet_config)
  cfg = IFUNetConfig.from_diffusers(config, dtype=dtype, param_dtype=dtype, remat=remat)
  size = resolution or cfg.sample_size
  if not isinstance(size, int):
    raise planner.PlanError(f"{name}: the config gives no (square) sample_size ({size!r}): "
                            "pass the resolution")
  if size % cfg.downsampling:
    raise planner.PlanError(f"resolution {size} is not a multiple of the U-Net's downsampling "
                            f"{cfg.downsampling}")
  devices = planner.tpu_devices(topology) if devices is None else devices
  try:
    the_mesh = shd.make_mesh(_mesh_shape(mesh), devices)
  except ValueError as e:
    raise planner.PlanError(f"{e} (topology {topology} has {len(devices)} devices)") from e

  boxed = abstract_params(cfg)
  shardings = shd.strip_boxes(if_param_shardings(cfg, the_mesh))
  params = jax.tree.map(lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
                        shd.strip_boxes(boxed), shardings)
  replicas = the_mesh.shape["data"] * the_mesh.shape["fsdp"]
  rep = shd.replicated(the_mesh)
  rows = lambda ndim: shd.batch_sharding(the_mesh, ndim) if batch % replicas == 0 else rep
  compute = jnp.dtype(dtype)

  def arg(shape, dt, sharding=None):
    return jax.ShapeDtypeStruct(shape, dt, sharding=sharding or rows(len(shape)))

  image_channels = cfg.out_channels // 2  # ε and the learned-range variance per channel
  x = arg((batch, size, size, image_channels), jnp.float32)
  logsnr = arg((batch,), jnp.float32)
  cond = {"text": arg((batch, TEXT_LENGTH, cfg.text_dim), compute)}
  if cfg.class_embed_type == "timestep":  # stage II: the noised upscaled image, its noise level
    cond["lowres"] = arg((batch, size, size, cfg.in_channels - image_channels), jnp.float32)
    cond["noise_level"] = arg((batch,), jnp.float32)
  null_text = arg((TEXT_LENGTH, cfg.text_dim), compute, rep)  # the encoding of ""
  weight = arg((), jnp.float32, rep)
  denoiser = IFDenoiser(cfg, from_diffusers_config(IF_STAGE_I_SCHEDULER_CONFIG).schedule)

  def guided_forward(params, x, logsnr, cond, null_text, weight):
    null_cond = {**cond, "text": jnp.broadcast_to(null_text, cond["text"].shape)}
    return guided_output(denoiser, params, x, logsnr, cond, null_cond, weight,
                         learned_variance=True)

  with jax.set_mesh(the_mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    lowered = jax.jit(guided_forward, out_shardings=rows(4)).lower(
        params, x, logsnr, cond, null_text, weight)
    figures = planner._compile(lowered)

  kind = getattr(devices[0], "device_kind", "unknown")
  return IFSamplingPlan(
      name=name, topology=topology, device_kind=kind, num_devices=len(devices),
      mesh=dict(the_mesh.shape), batch=batch, resolution=size, dtype=compute.name,
      num_params=sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
      hbm_bytes=planner.HBM_GIB.get(kind, float("inf")) * planner.GIB,
      param_bytes=planner._shard_bytes(params),
      input_bytes=planner._shard_bytes((x, logsnr, cond, null_text)), forward=figures)


def format_if_plan(plan: IFSamplingPlan) -> str:
  """A human-readable report: per-device memory (GiB), FLOPs, fit."""
  gib = planner._gib
  fig = plan.forward
  lines = [planner.slice_line(plan.name, plan),
           f"  {plan.num_params / 1e6:.1f}M parameters in {plan.dtype}; one guided forward of "
           f"{plan.batch} prompts ({2 * plan.batch} rows) at {plan.resolution}² px",
           f"  per device, GiB (from the shardings): params {gib(plan.param_bytes)}  inputs "
           f"{gib(plan.input_bytes)}"]
  lines.append(planner.figures_line(fig, plan.hbm_bytes))
  if fig.oom:
    return "\n".join(lines)
  lines.append(f"  {fig.flops / 1e12:.2f} TFLOP per device, "
               f"{fig.flops * plan.num_devices / 1e12:.2f} TFLOP in total per guided forward")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unet", required=True, help="diffusers unet/config.json or its directory")
  parser.add_argument("--topology", required=True, help="e.g. v5e:2x4, v4:2x2x1")
  parser.add_argument("--mesh", default="fsdp=-1", help="e.g. fsdp=-1, data=2,fsdp=4")
  parser.add_argument("--batch", type=int, default=4, help="prompts (2 × batch rows)")
  parser.add_argument("--resolution", type=int, default=None)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", action="store_true")
  args = parser.parse_args(argv)
  plan = plan_if_sampling(args.unet, args.topology, mesh=args.mesh, batch=args.batch,
                          resolution=args.resolution, dtype=args.dtype, remat=args.remat)
  print(format_if_plan(plan))


if __name__ == "__main__":
  main()
