"""`train(config, workdir)`: one cascade stage, from a laptop CPU to a TPU pod.

    imagen-jax train --config configs/base64.py --workdir W [--config.train.batch_size=512 ...]

Reads the stage's prepared dataset and the text-embedding cache (`imagen-jax data`, `imagen-jax
encode`; the T5 is never loaded here), builds the mesh and the train state directly sharded on it,
and runs the jit-compiled step. Under `W/<stage>/`: `config.json`, `checkpoints/` (Orbax: state,
data-iterator state, config), `metrics.jsonl` and TensorBoard event files, `samples/` grids.

Resume is automatic: the newest valid checkpoint (state + data-iterator position) is restored, so
an interrupted run continues with exactly the batches and losses of an uninterrupted one. SIGTERM
(TPU preemption) saves the current step and exits cleanly. Updates with a non-finite loss or
gradient are skipped and counted; `max_nonfinite_run` of them in a row save and stop the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from imagen_jax import sharding as shd
from imagen_jax.configlib import config_to_json
from imagen_jax.data.pipeline import PipelineConfig, make_pipeline, open_split
from imagen_jax.paths import record_path, resolve_path
from imagen_jax.diffusion import (
  LossConfig,
  NoiseAugmentation,
  SamplerConfig,
  Thresholding,
  jit_sample,
  stage_schedule,
)
from imagen_jax.models.unet import UNet, UNetConfig, UNetDenoiser, null_text
from imagen_jax.text.cache import EmbeddingCache
from imagen_jax.train.checkpoint import Checkpointer, PreemptionGuard
from imagen_jax.train.metrics import MetricsWriter, StepTimer
from imagen_jax.train import if_finetune
from imagen_jax.train.state import (
  OptimizerConfig,
  abstract_sharded_state,
  create_sharded_state,
  learning_rate,
  make_optimizer,
  param_count,
)
from imagen_jax.train.step import StepConfig, make_train_step

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite updates."""


def optimizer_config(train: ml_collections.ConfigDict) -> OptimizerConfig:
  return OptimizerConfig(name=train.optimizer, lr=train.lr, warmup_steps=train.warmup_steps,
                         schedule=train.lr_schedule, total_steps=train.num_steps,
                         grad_clip=train.grad_clip, weight_decay=train.weight_decay)


# LossConfig fields a stage config may lack (written before they existed): LossConfig's defaults
_HIGH_NOISE = ("high_noise_fraction", "high_noise_from", "high_noise_weight")


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  d = config.diffusion
  schedule = stage_schedule(d)
  aug = NoiseAugmentation(max_level=d.aug_max_level) if config.lowres_resolution else None
  if config.model.get("lowres_residual") and d.prediction != "x0":
    raise ValueError("model.lowres_residual adds the upsampled low-res image to the U-Net's "
                     f"output, which is an image only with diffusion.prediction='x0' (it is "
                     f"{d.prediction!r})")
  return StepConfig(model=UNetConfig.from_dict(config.model.to_dict()), schedule=schedule,
                    loss=LossConfig(prediction=d.prediction, weighting=d.loss_weighting,
                                    min_snr_gamma=d.min_snr_gamma, norm=d.loss_norm,
                                    **{k: d[k] for k in _HIGH_NOISE if k in d}),
                    p_uncond=d.p_uncond, ema_decay=config.train.ema_decay,
                    ema_warmup=config.train.get("ema_warmup", True),
                    noise_augmentation=aug)


class SimulatedHosts:
  """The batches `n` hosts would feed a pod, concatenated in host order, in one process — a pod
  run's exact data order reproduced on one machine (`config.data.simulate_hosts`)."""

  def __init__(self, datasets):
    self.iterators = [iter(d) for d in datasets]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict[str, Any]:
    return {"hosts": [it.get_state() for it in self.iterators]}

  def set_state(self, state: dict[str, Any]) -> None:
    for it, s in zip(self.iterators, state["hosts"], strict=True):
      it.set_state(s)


def open_data(config: ml_collections.ConfigDict, workdir: Path, process_index: int | None = None,
              process_count: int | None = None):
  """(an iterator over this host's batches — `get_state`/`set_state` — and the embedding cache)."""
  from imagen_jax.text.encode import cache_dir_for

  if not config.data.dataset:
    raise ValueError("config.data.dataset is empty: name the prepared TFDS dataset to train on "
                     "(imagen-jax data ... prints its directory)")
  cache = EmbeddingCache(cache_dir_for(config, workdir, config.data.split))
  if cache.spec.width != config.model.text_dim:
    raise ValueError(f"the embedding cache holds {cache.spec.width}-wide text embeddings but "
                     f"config.model.text_dim is {config.model.text_dim}: set it to the text "
                     "encoder's width")
  pipeline = PipelineConfig(
      batch_size=config.train.batch_size, resolution=config.resolution,
      lowres_size=config.lowres_resolution or None, crop_size=config.crop_size or None,
      seed=config.train.seed, num_threads=config.data.num_threads)
  source = open_split(resolve_path(config.data.dataset, workdir), config.data.split)
  simulated = config.data.get("simulate_hosts", 0)
  if simulated and simulated > 1:
    if jax.process_count() > 1:
      raise ValueError("data.simulate_hosts is for single-process runs")
    return SimulatedHosts([make_pipeline(source, pipeline, cache, process_index=i,
                                         process_count=simulated) for i in range(simulated)]), cache
  return iter(make_pipeline(source, pipeline, cache, process_index=process_index,
                            process_count=process_count)), cache


def example_inputs(config: ml_collections.ConfigDict, text_len: int) -> tuple[tuple, dict]:
  size = config.crop_size or config.resolution
  args = (jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
          jnp.zeros((1, text_len, config.model.text_dim)), jnp.ones((1, text_len), bool))
  extra = {}
  if config.lowres_resolution:
    low = size * config.lowres_resolution // config.resolution
    extra = dict(lowres=jnp.zeros((1, low, low, 3)), aug_level=jnp.zeros((1,)))
  return args, extra


# Jitted train steps of this process, by what they compute and how they are laid out (few: each
# holds a compiled executable).
_JITTED_STEPS: dict[Any, Any] = {}
_MAX_JITTED_STEPS = 4


@dataclasses.dataclass(frozen=True)
class StageProgram:
  """What one stage's training compiles: the model's init, the optimiser and the step function.
  Shared by `train` (concrete state) and `imagen_jax.plan` (abstract state, ahead of time)."""

  step_config: StepConfig
  optimizer: optax.GradientTransformation
  init_params: Callable[[jax.Array], Any]
  step_fn: Callable[..., Any]
  optimizer_config: OptimizerConfig | None = None  # with step_config: what the step computes

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, text_len: int) -> StageProgram:
    step_cfg = step_config(config)
    opt_cfg = optimizer_config(config.train)
    optimizer = make_optimizer(opt_cfg)
    args, extra = example_inputs(config, text_len)
    model = UNet(step_cfg.model)
    return cls(step_cfg, optimizer, lambda k: model.init(k, *args, **extra)["params"],
               make_train_step(step_cfg, optimizer, learning_rate(opt_cfg)), opt_cfg)

  def jit_step(self, shardings: Any, batch_sh: dict[str, Any], mesh: jax.sharding.Mesh):
    """The step jitted with explicit shardings, the state donated. A run that trains the same
    step on the same layout again in this process (a resumed or continued run, a notebook
    re-running a cell) reuses the jitted step and so its compiled executable."""
    key = None
    if self.optimizer_config is not None:
      leaves, tree = jax.tree.flatten((shardings, batch_sh))
      key = (self.step_config, self.optimizer_config, mesh, tree, tuple(leaves))
      if key in _JITTED_STEPS:
        return _JITTED_STEPS[key]
    jitted = jax.jit(self.step_fn, in_shardings=(shardings, batch_sh),
                     out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))
    if key is not None:
      if len(_JITTED_STEPS) >= _MAX_JITTED_STEPS:  # the oldest goes, with its executable
        del _JITTED_STEPS[next(iter(_JITTED_STEPS))]
      _JITTED_STEPS[key] = jitted
    return jitted

  def initial_state(self, seed: int, mesh: jax.sharding.Mesh, rules: shd.Rules,
                    shardings: Any) -> Any:
    """A fresh state, initialised directly on the mesh."""
    del shardings  # the same as create_sharded_state's
    return create_sharded_state(self.init_params, self.optimizer, seed, mesh, rules)[0]

  def extra_batch(self, cache: Any, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    del cache, mesh  # our stages' null text is zeros, applied inside the step
    return {}


def build_program(config: ml_collections.ConfigDict, text_len: int,
                  stage_dir: Path | None = None):
  """The stage's `StageProgram`, or an `IFStageProgram` for a DeepFloyd IF stage
  (`config.model.kind == "deepfloyd_if"`, train/if_finetune.py)."""
  if if_finetune.is_if_stage(config):
    return if_finetune.IFStageProgram.build(config, text_len, stage_dir)
  return StageProgram.build(config, text_len)


def batch_keys(config: ml_collections.ConfigDict) -> list[str]:
  return ["image", "text_embeddings", "text_mask"] + (["lowres"] if config.lowres_resolution
                                                       else [])


def batch_shardings(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                    ) -> dict[str, Any]:
  """Every batch array split along its leading (example) dimension over data × fsdp (and an IF
  stage's unconditional text, the same for every example, replicated)."""
  ndim = {"image": 4, "lowres": 4, "text_embeddings": 3, "text_mask": 2}
  sh = {k: shd.batch_sharding(mesh, ndim[k]) for k in batch_keys(config)}
  if if_finetune.is_if_stage(config):
    sh["null_text"] = shd.replicated(mesh)
  return sh


def global_batch(local: dict[str, np.ndarray], shardings: dict[str, Any]) -> dict[str, jax.Array]:
  """Assemble the global batch from each host's share (no host holds the whole batch)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v)
          for k, v in local.items() if k in shardings}


def sample_grid(config: ml_collections.ConfigDict, step_cfg: StepConfig, params: Any,
                batch: dict[str, np.ndarray], seed: int) -> np.ndarray:
  """A few samples of the EMA model for the batch's first captions (and low-res inputs)."""
  n = min(config.train.num_samples, len(batch["text_embeddings"]))
  cond = {"text": jnp.asarray(batch["text_embeddings"][:n]),
          "text_mask": jnp.asarray(batch["text_mask"][:n])}
  size = config.crop_size or config.resolution
  if step_cfg.model.lowres_cond:
    low, level = step_cfg.noise_augmentation.fixed(jnp.asarray(batch["lowres"][:n]),
                                                   config.diffusion.aug_sample_level,
                                                   jax.random.key(seed + 1))
    cond.update(lowres=low, aug_level=level)
  sampler = SamplerConfig("dpmpp_2m", num_steps=config.train.sample_steps,
                          guidance_weight=config.train.guidance_weight,
                          thresholding=Thresholding("dynamic"))
  out = jit_sample(UNetDenoiser(step_cfg.model), params, (n, size, size, 3), jax.random.key(seed),
                   cond, schedule=step_cfg.schedule, config=sampler,
                   prediction=config.diffusion.prediction, null_cond=null_text(cond))
  return np.asarray(out)


def measure_step_seconds(config: ml_collections.ConfigDict, steps: int = 20, warmup: int = 3
                         ) -> dict[str, float]:
  """Time the stage's train step on this machine: the step `train` would run (same program,
  mesh and layout, from a fresh state) on a random batch of the stage's shapes — the step's cost
  does not depend on the pixels. Returns {"compile_s": the first call's seconds (the compile),
  "step_s": seconds per step over `steps` steps after `warmup`}. The jitted step is the one
  `train` reuses for an equal config in this process, so calling this first costs no extra
  compile (`imagen_jax.demo` sizes its training with it)."""
  tc = config.train
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.get("num_devices") else None
  mesh = shd.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                        "tensor": config.mesh.tensor}, devices)
  rules = shd.rules_from_config(config.mesh.get("rules"))
  text_len = config.text.max_length
  program = build_program(config, text_len)
  _, shardings = abstract_sharded_state(program.init_params, program.optimizer, mesh, rules)
  state = program.initial_state(tc.seed, mesh, rules, shardings)
  rng = np.random.default_rng(0)
  size, b = config.crop_size or config.resolution, tc.batch_size
  host = {"image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
          "text_embeddings": rng.standard_normal((b, text_len, config.model.text_dim)
                                                 ).astype(np.float32),
          "text_mask": np.ones((b, text_len), bool)}
  if config.lowres_resolution:
    low = size * config.lowres_resolution // config.resolution
    host["lowres"] = rng.uniform(-1, 1, (b, low, low, 3)).astype(np.float32)
  batch_sh = batch_shardings(config, mesh)
  compiled = program.jit_step(shardings, batch_sh, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = global_batch(host, batch_sh)
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - start
    for _ in range(warmup - 1):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):  # dispatched back to back, as the training loop does
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
  return {"compile_s": compile_s, "step_s": (time.perf_counter() - start) / steps}


RECORDED_PATHS = (("data", "dataset"), ("text", "encoder"), ("text", "cache_dir"))


def recorded_config(config: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
  """The config as a stage's `config.json` and checkpoints record it: its dataset, text encoder
  and caption cache as `imagen_jax.paths.record_path` writes them (inside the workdir:
  `{workdir}/...`; elsewhere: absolute), so that the record still names them when the workdir is
  moved or used from another directory."""
  recorded = copy.deepcopy(config)
  for section, field in RECORDED_PATHS:
    if recorded.get(section) is not None and recorded[section].get(field):
      recorded[section][field] = record_path(recorded[section][field], workdir)
  return recorded


def _data_source(config: dict[str, Any]) -> tuple[Any, ...]:
  """What a recorded config trained on — dataset, split and caption cache (unset: the workdir's
  default, as `text.encode.cache_dir_for` reads it) — which a resumed data-iterator state belongs
  to."""
  data, text = config.get("data") or {}, config.get("text") or {}
  return (data.get("dataset"), data.get("split"),
          text.get("cache_dir") or "{workdir}/text_cache")


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, progress: bool = True,
          process_index: int | None = None, process_count: int | None = None) -> dict[str, Any]:
  """Train one stage (see the module docstring). Returns a summary of the run."""
  workdir = Path(workdir)
  if not config.train.num_steps or config.train.num_steps < 0:
    raise ValueError(f"stage {config.stage}: train.num_steps is {config.train.num_steps}; give "
                     "the number of steps to train (--config.train.num_steps=N; the demo sizes "
                     "its base stage's to the machine, `imagen-jax demo` does that)")
  stage_dir = workdir / config.stage
  stage_dir.mkdir(parents=True, exist_ok=True)
  is_if = if_finetune.is_if_stage(config)
  if is_if:
    if_finetune.resolve_config(config, stage_dir)
  recorded = recorded_config(config, workdir)
  if jax.process_index() == 0:
    (stage_dir / "config.json").write_text(config_to_json(recorded))
  tc = config.train
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.get("num_devices") else None
  mesh = shd.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                        "tensor": config.mesh.tensor}, devices)
  rules = shd.rules_from_config(config.mesh.get("rules"))
  iterator, cache = open_data(config, workdir, process_index, process_count)
  if is_if:
    null_text = if_finetune.read_null_embedding(cache)  # before any weights are read
    if_finetune.prepare_stage_dir(config, stage_dir)
  program = build_program(config, cache.spec.max_length, stage_dir)
  step_cfg = program.step_config
  target, shardings = abstract_sharded_state(program.init_params, program.optimizer, mesh, rules)
  num_params = param_count(target.params)
  config_dict = json.loads(config_to_json(recorded))
  with Checkpointer(stage_dir / "checkpoints", max_to_keep=tc.keep_checkpoints,
                    save_interval_steps=tc.checkpoint_every) as ckpt, \
      PreemptionGuard() as guard, MetricsWriter(stage_dir) as writer:
    start = 0
    restored = ckpt.restore(target)  # before any initialisation: IF's weights are read only once
    if restored is not None:
      state, start = restored.state, restored.step
      before, now = _data_source(restored.config), _data_source(config_dict)
      if before == now:
        iterator.set_state(restored.data_state)
        print(f"[{config.stage}] resumed from step {start}")
      else:  # a curriculum's next phase, or fine-tuning on new data: its own order from the start
        changed = ", ".join(f"{name} {a} → {b}" for name, a, b in
                            zip(("dataset", "split", "caption cache"), before, now) if a != b)
        print(f"[{config.stage}] resumed from step {start}, on other data than it was trained "
              f"on so far ({changed}): the new data's order starts from its beginning")
    else:
      state = program.initial_state(tc.seed, mesh, rules, shardings)
      if is_if:
        print(f"[{config.stage}] initialised from {program.weights_dir}")
    print(f"[{config.stage}] {num_params / 1e6:.2f}M parameters; mesh "
          f"{dict(mesh.shape)}; global batch {tc.batch_size}; steps {start} → {tc.num_steps}")
    extra = program.extra_batch(cache, mesh)
    batch_sh = batch_shardings(config, mesh)
    compiled = program.jit_step(shardings, batch_sh, mesh)
    timer = StepTimer()
    pending, history = [], []
    step, stopped = start, False
    bar = tqdm(total=tc.num_steps, initial=start, desc=f"train {config.stage}", unit="step",
               disable=not progress or jax.process_index() != 0, mininterval=1.0)
    while step < tc.num_steps:
      local = next(iterator)
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, metrics = compiled(state, {**global_batch(local, batch_sh), **extra})
      step += 1
      pending.append(metrics)
      bar.update(1)
      if step % tc.log_every == 0 or step == tc.num_steps:
        fetched = jax.device_get(pending)  # metrics reach the host on logging steps only
        pending = []
        rates = timer.tick(len(fetched), len(fetched) * tc.batch_size)
        row = {"loss": float(np.mean([m["loss"] for m in fetched])),
               "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
               "learning_rate": float(fetched[-1]["learning_rate"]),
               "skipped_updates": int(sum(m["skipped"] for m in fetched)), **rates}
        writer.write_scalars(step, row)
        history.append({"step": step, **row})
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        worst_run = max(int(m["nonfinite_run"]) for m in fetched)
        if worst_run >= tc.max_nonfinite_run:
          ckpt.save(step, state, iterator.get_state(), config_dict, force=True)
          ckpt.wait_until_finished()
          raise NonFiniteError(
              f"[{config.stage}] {worst_run} consecutive updates had a non-finite loss or "
              f"gradient (up to step {step}); stopped with a checkpoint. Lower train.lr, check "
              "the data, or use bfloat16 only for compute (model.param_dtype='float32').")
      if tc.sample_every and step % tc.sample_every == 0:
        grid = (if_finetune.sample_grid(config, program, stage_dir, state.ema_params, local,
                                        null_text, seed=step) if is_if else
                sample_grid(config, step_cfg, state.ema_params, local, seed=step))
        writer.write_images(step, "samples", grid)
      # multi-host, asking every host is a collective: once per logging interval is enough
      stopped = guard.should_stop(step) if (
          jax.process_count() == 1 or step % tc.log_every == 0) else False
      ckpt.save(step, state, iterator.get_state(), config_dict,
                force=stopped or step == tc.num_steps)
      if stopped:
        print(f"[{config.stage}] stop requested (SIGTERM): saved step {step}, exiting")
        break
    bar.close()
    ckpt.wait_until_finished()
  return {"stage": config.stage, "start_step": start, "step": step, "stopped": stopped,
          "num_params": num_params, "history": history,
          "nonfinite_total": int(jax.device_get(state.nonfinite_total))}
