"""`imagen-jax plan`: will a stage's training fit on a TPU slice that is not here?

    imagen-jax plan --config configs/base64.py --topology v5e:16x16
    imagen-jax plan --config configs/sr256.py --topology v4:4x4x4 --mesh data=-1,fsdp=8
    imagen-jax plan --config configs/base64.py --topology v5e:16x16 --config.model.remat=True

Compiles the real training step (`imagen_jax.train.loop.StageProgram`, the function `train` runs)
and the real sampler (`imagen_jax.diffusion.sample` with classifier-free guidance) ahead of time for
the slice, with `jax.ShapeDtypeStruct` inputs laid out by the stage's shardings: nothing is
allocated, and no TPU is needed. The slice's devices come from libtpu's compile-only topology
(`pip install 'imagen-jax[plan]'`, libtpu from PyPI; `jax.experimental.topologies`), and the
figures are XLA's own for the TPU target:

  * per device: parameters, EMA, optimiser state, the batch (from the shardings), and XLA's
    argument / output / temporaries (activations, gradients, collectives' buffers) sizes; the peak
    is arguments + temporaries + outputs − donated (aliased) bytes;
  * the chip's HBM and whether the peak fits; a step that cannot fit fails to compile with XLA's
    `CompileTimeHbmOom`, which is reported (with XLA's figures) instead of raised;
  * FLOPs per step (XLA's cost analysis of the partitioned program, per device and in total).

v4 and v5p slices are planned with one device per chip (megacore), as JAX runs them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import sharding as shd

# Usable HBM per chip as XLA's TPU compiler reports it ("exceeds available HBM (…)"), in GiB.
HBM_GIB = {"TPU v3": 15.48, "TPU v4": 31.25, "TPU v5 lite": 15.75, "TPU v5": 95.74,
           "TPU v6 lite": 31.25}
GENERATIONS = ("v3", "v4", "v5e", "v5p", "v6e")
MEGACORE = ("v4", "v5p")  # two TensorCores per chip, run by JAX as one device
GIB = 2.0 ** 30


class PlanError(ValueError):
  """Bad input to the planner (unknown topology, mesh that does not match, no libtpu)."""


def _quiet_libtpu() -> None:
  # libtpu looks for a real TPU VM's metadata when loaded and warns loudly when there is none;
  # a compile-only topology needs none of it.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # libtpu takes /tmp/libtpu_lockfile for exclusive use of the chips; compiling for a topology
  # uses none, so two plans (or a plan beside the test-suite) may run at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def tpu_devices(topology: str) -> list[Any]:
  """The devices of a TPU slice named like 'v5e:16x16' or 'v4:4x4x4' (compile-only)."""
  match = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+){1,2})", topology.strip())
  if not match or match.group(1) not in GENERATIONS:
    raise PlanError(f"topology {topology!r} is not '<generation>:<chips per dimension>' with a "
                    f"generation in {GENERATIONS}, e.g. v5e:16x16, v4:4x4x4, v5p:8x8x8")
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise PlanError("planning for a TPU needs libtpu (compile-only, no TPU required): "
                    "pip install 'imagen-jax[plan]'") from e
  _quiet_libtpu()
  from jax.experimental import topologies

  kwargs = {"chip_config_name": "megacore"} if match.group(1) in MEGACORE else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
  except Exception as e:  # libtpu's error names the problem (e.g. an impossible shape)
    raise PlanError(f"libtpu cannot describe topology {topology!r}: {e}") from e
  return list(desc.devices)


def parse_mesh(text: str | None, config: ml_collections.ConfigDict) -> dict[str, int]:
  """'data=-1,fsdp=8' (unnamed axes 1) or, when empty, the config's mesh section."""
  if not text:
    return {a: int(config.mesh[a]) for a in shd.MESH_AXES}
  try:
    return shd.parse_mesh_shape(text)
  except ValueError as e:
    raise PlanError(f"--mesh {e}") from None


def _shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass
class CompiledFigures:
  """XLA's per-device figures for one compiled program (bytes, FLOPs)."""

  arguments: int = 0
  outputs: int = 0
  aliased: int = 0
  temporaries: int = 0
  code: int = 0
  flops: float = 0.0
  oom: str = ""  # XLA's CompileTimeHbmOom message when the program cannot fit

  @property
  def peak(self) -> int:
    return self.arguments + self.temporaries + self.outputs - self.aliased + self.code


def _compile(lowered: Any) -> CompiledFigures:
  try:
    compiled = lowered.compile()
  except Exception as e:  # jax raises JaxRuntimeError; match on XLA's error code
    message = str(e)
    if "RESOURCE_EXHAUSTED" in message or "HbmOom" in message:
      return CompiledFigures(oom=message.splitlines()[0])
    raise
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return CompiledFigures(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                         aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
                         code=mem.generated_code_size_in_bytes,
                         flops=float((cost or {}).get("flops", 0.0)))


@dataclasses.dataclass
class Plan:
  """The answer for one stage on one slice and mesh."""

  stage: str
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict[str, int]
  batch_size: int
  num_params: int
  hbm_bytes: float
  state_bytes: dict[str, int]  # per device: params, ema, optimizer, other, batch
  train: CompiledFigures
  sample: CompiledFigures | None
  sample_batch: int
  sample_steps: int = 25

  @property
  def fits(self) -> bool:
    return not self.train.oom and self.train.peak <= self.hbm_bytes


def plan_stage(config: ml_collections.ConfigDict, topology: str, mesh: str | None = None, *,
               sample: bool = True, sample_batch: int | None = None,
               devices: list[Any] | None = None) -> Plan:
  """Compile `config`'s train step (and sampler) for `topology`; see the module docstring.

  `devices` replaces the TPU topology (e.g. CPU devices, for tests of the plumbing)."""
  from imagen_jax.diffusion import SamplerConfig, Thresholding, sample as sample_fn, stage_schedule
  from imagen_jax.models.unet import UNetDenoiser, null_text
  from imagen_jax.train import if_finetune
  from imagen_jax.train.loop import batch_shardings, build_program
  from imagen_jax.train.state import abstract_sharded_state, param_count

  devices = tpu_devices(topology) if devices is None else devices
  try:
    the_mesh = shd.make_mesh(parse_mesh(mesh, config), devices)
  except ValueError as e:
    raise PlanError(f"{e} (topology {topology} has {len(devices)} devices)") from e
  batch = int(config.train.batch_size)
  replicas = the_mesh.shape["data"] * the_mesh.shape["fsdp"]
  if batch % replicas:
    raise PlanError(f"train.batch_size {batch} is not divisible by data × fsdp = {replicas}: "
                    "change --config.train.batch_size or --mesh")
  rules = shd.rules_from_config(config.mesh.get("rules"))
  text_len = int(config.text.max_length)
  is_if = if_finetune.is_if_stage(config)
  try:
    program = build_program(config, text_len)
  except (ValueError, FileNotFoundError) as e:
    raise PlanError(str(e)) from e
  state, shardings = abstract_sharded_state(program.init_params, program.optimizer, the_mesh,
                                            rules)
  batch_sh = batch_shardings(config, the_mesh)
  size = config.crop_size or config.resolution
  shapes = {"image": (batch, size, size, 3), "text_embeddings": (batch, text_len,
                                                                   config.model.text_dim),
            "text_mask": (batch, text_len)}
  if config.lowres_resolution:
    low = size * config.lowres_resolution // config.resolution
    shapes["lowres"] = (batch, low, low, 3)
  if is_if:
    shapes["null_text"] = (1, text_len, config.model.text_dim)
  abstract_batch = {k: jax.ShapeDtypeStruct(shapes[k], bool if k == "text_mask" else jnp.float32,
                                            sharding=batch_sh[k]) for k in batch_sh}
  with jax.set_mesh(the_mesh), nn.logical_axis_rules(rules):
    train = _compile(program.jit_step(shardings, batch_sh, the_mesh).lower(state, abstract_batch))

  opt_bytes = _shard_bytes(state.opt_state)
  state_bytes = {"params": _shard_bytes(state.params), "ema": _shard_bytes(state.ema_params),
                 "optimizer": opt_bytes, "batch": _shard_bytes(abstract_batch)}
  state_bytes["other"] = _shard_bytes(state) - sum(
      state_bytes[k] for k in ("params", "ema", "optimizer"))

  figures, n, steps = None, 0, 25
  if sample and is_if:
    n = sample_batch or replicas
    figures, steps = _compile_if_sampler(config, program, state.ema_params, the_mesh, rules, n,
                                         replicas, text_len)
  elif sample:
    n = sample_batch or replicas
    step_cfg = program.step_config
    denoiser = UNetDenoiser(step_cfg.model)
    sampler = SamplerConfig("dpmpp_2m", num_steps=25, thresholding=Thresholding("dynamic"))
    rep = shd.replicated(the_mesh)
    images_sh = shd.batch_sharding(the_mesh, 4) if n % replicas == 0 else rep
    sample_size = config.resolution  # the sampler runs on whole images (fully convolutional)
    cond = {"text": jax.ShapeDtypeStruct((n, text_len, config.model.text_dim), jnp.float32,
                                         sharding=rep),
            "text_mask": jax.ShapeDtypeStruct((n, text_len), bool, sharding=rep)}
    if config.lowres_resolution:
      cond["lowres"] = jax.ShapeDtypeStruct((n, config.lowres_resolution,
                                             config.lowres_resolution, 3), jnp.float32,
                                            sharding=images_sh)
      cond["aug_level"] = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=rep)

    def run(params, key, cond, weight):
      return sample_fn(denoiser, params, (n, sample_size, sample_size, 3), key, cond,
                       schedule=stage_schedule(config.diffusion), config=sampler,
                       prediction=config.diffusion.prediction, null_cond=null_text(cond),
                       guidance_weight=weight)

    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    weight = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    with jax.set_mesh(the_mesh), nn.logical_axis_rules(rules):
      figures = _compile(jax.jit(run, out_shardings=images_sh).lower(
          state.ema_params, key, cond, weight))

  kind = getattr(devices[0], "device_kind", "unknown")
  hbm = HBM_GIB.get(kind, float("inf")) * GIB
  return Plan(stage=config.stage, topology=topology, device_kind=kind, num_devices=len(devices),
              mesh=dict(the_mesh.shape), batch_size=batch,
              num_params=param_count(state.params), hbm_bytes=hbm, state_bytes=state_bytes,
              train=train, sample=figures, sample_batch=n, sample_steps=steps)


def _compile_if_sampler(config: ml_collections.ConfigDict, program: Any, params: Any,
                        the_mesh: Any, rules: Any, n: int, replicas: int, text_len: int
                        ) -> tuple[CompiledFigures, int]:
  """A DeepFloyd IF stage's sampler as `imagen-jax sample` runs it by default: the scheduler
  config's sampler (IF's learned-range DDPM) for IF's default steps, guidance against the
  encoding of "" (`IFStage.sampling`), in the stage's compute dtype."""
  from imagen_jax.cascade import SamplingOptions
  from imagen_jax.diffusion import sample as sample_fn
  from imagen_jax.pretrained.deepfloyd_if import IFDenoiser, inspect_if_stage

  stage = inspect_if_stage(config.init_from, config.lowres_resolution or None)
  plan = stage.sampling(SamplingOptions())
  denoiser = IFDenoiser(dataclasses.replace(program.step_config.unet, remat=False),
                        plan.schedule)
  rep = shd.replicated(the_mesh)
  images_sh = shd.batch_sharding(the_mesh, 4) if n % replicas == 0 else rep
  size = config.resolution
  text = jax.ShapeDtypeStruct((n, text_len, config.model.text_dim), jnp.float32, sharding=rep)
  cond = {"text": text}
  if config.lowres_resolution:
    cond["lowres"] = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32, sharding=images_sh)
    cond["noise_level"] = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rep)

  def run(params, key, cond, negative, weight):
    return sample_fn(denoiser, params, (n, size, size, 3), key, cond, schedule=plan.schedule,
                     config=plan.config, prediction=plan.prediction,
                     null_cond={**cond, "text": negative}, guidance_weight=weight)

  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
  weight = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
  with jax.set_mesh(the_mesh), nn.logical_axis_rules(rules):
    figures = _compile(jax.jit(run, out_shardings=images_sh).lower(params, key, cond, text,
                                                                   weight))
  return figures, plan.config.num_steps


def _gib(b: float) -> str:
  return f"{b / GIB:.2f}"


def figures_line(fig: CompiledFigures, hbm_bytes: float, label: str = "") -> str:
  """XLA's per-device memory figures of one program and whether its peak fits `hbm_bytes`."""
  if fig.oom:
    return f"  {label}DOES NOT FIT — {fig.oom}"
  return (f"  {label}XLA per device, GiB: arguments {_gib(fig.arguments)}  temporaries "
          f"{_gib(fig.temporaries)}  outputs {_gib(fig.outputs)}  donated {_gib(fig.aliased)}  "
          f"code {_gib(fig.code)}  → peak {_gib(fig.peak)} "
          f"({'fits' if fig.peak <= hbm_bytes else 'DOES NOT FIT'})")


def slice_line(name: str, plan: Any) -> str:
  """The first line of every plan report: what was planned, on which slice and mesh (`plan` has
  topology, num_devices, device_kind, hbm_bytes and mesh, as `Plan` and the IF/T5 plans do)."""
  mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
  return (f"{name} on {plan.topology} ({plan.num_devices} × {plan.device_kind}, "
          f"HBM {_gib(plan.hbm_bytes)} GiB/device), mesh {mesh}")


def format_plan(plan: Plan) -> str:
  """A human-readable report: per-device memory (GiB), FLOPs, fit."""
  sb = plan.state_bytes
  lines = [slice_line(plan.stage, plan),
           f"  {plan.num_params / 1e6:.1f}M parameters; global batch {plan.batch_size} "
           f"({plan.batch_size // (plan.mesh['data'] * plan.mesh['fsdp'])} per data replica)",
           "  per device, GiB (from the shardings):",
           f"    params {_gib(sb['params'])}  EMA {_gib(sb['ema'])}  optimiser "
           f"{_gib(sb['optimizer'])}  other state {_gib(sb['other'])}  batch {_gib(sb['batch'])}"]
  for name, fig, extra in (("train step", plan.train, ""),
                           ("sampler", plan.sample, f" ({plan.sample_batch} images, "
                                                    f"{plan.sample_steps} steps, CFG)")):
    if fig is None:
      continue
    lines.append(figures_line(fig, plan.hbm_bytes, f"{name}{extra}: "))
    if fig.oom:
      continue
    lines.append(f"    {fig.flops / 1e12:.2f} TFLOP per device, "
                 f"{fig.flops * plan.num_devices / 1e15:.3f} PFLOP in total")
  return "\n".join(lines)


def plan_row(plan: Plan) -> dict[str, Any]:
  """One row of the docs' table (GiB per device)."""
  return {"stage": plan.stage, "topology": plan.topology,
          "mesh": ",".join(f"{k}={v}" for k, v in plan.mesh.items() if v != 1) or "1 device",
          "batch/replica": plan.batch_size // (plan.mesh["data"] * plan.mesh["fsdp"]),
          "state GiB": round((sum(plan.state_bytes.values()) - plan.state_bytes["batch"]) / GIB,
                             2),
          "temps GiB": round(plan.train.temporaries / GIB, 2) if not plan.train.oom else None,
          "peak GiB": round(plan.train.peak / GIB, 2) if not plan.train.oom else None,
          "HBM GiB": round(plan.hbm_bytes / GIB, 2), "fits": plan.fits,
          "TFLOP/step/device": round(plan.train.flops / 1e12, 2) if not plan.train.oom else None}
