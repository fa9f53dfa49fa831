"""Fine-tuning DeepFloyd IF's released stages with our trainer.

    imagen-jax encode --config configs/text.py --workdir W --config.data.captions=tfds:D \\
        --config.text.encoder=IF-I-XL-v1.0 --config.text.max_length=77
    imagen-jax train --config configs/if_finetune.py:I --workdir W --init-from IF-I-XL-v1.0 \\
        --config.data.dataset=D
    imagen-jax sample --workdir W --prompt "a corgi in the style of my dataset"

A stage whose `config.model.kind` is "deepfloyd_if" trains `IFUNet` (models/if_unet.py) with the
same loop as ours (`train/loop.py`: mesh, sharded state, checkpoints, SIGTERM, resume, metrics),
through `IFStageProgram`, the IF counterpart of `StageProgram`:

  * The U-Net's config and the diffusion schedules come from the IF directory (`unet/config.json`,
    `scheduler/`, stage II's `image_noising_scheduler/`); the first run copies them into
    `W/<stage>/deepfloyd_if/` (weights excluded), so the workdir samples and resumes on its own.
  * The initial parameters are the directory's weights (`load_if_unet`), read tensor by tensor
    straight onto their shardings; EMA and optimiser state are then built on the mesh from them.
    A resumed run restores its checkpoint and reads no weights.
  * The objective is the one IF was trained with — improved DDPM's hybrid loss on the 1000-step
    discrete schedule (`diffusion/learned_variance.py`): ε MSE + the variational bound, which
    trains the learned-range variance channels. Timesteps are integers drawn uniformly.
  * Text dropout for classifier-free guidance replaces the text of a `p_uncond` share of the
    examples by the encoding of "" (IF's unconditional input, which the embedding cache stores:
    `EmbeddingCache.null_embedding`), not by zeros; the U-Net gets all 77 positions and no mask.
  * Stage II's low-res input is upsampled with aligned corners (`upsample_align_corners`) and
    noised by the image-noising schedule at an integer level drawn uniformly below
    `aug_max_level`·1000, which is also the U-Net's class label — what `IFStage` does at sampling
    time at IF's fixed level 250.

The fine-tuned stage samples with `imagen-jax sample --workdir W` (`cascade.load_stage` builds an
`IFStage` from the copied configs and the checkpoint's EMA weights).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imagen_jax import sharding as shd
from imagen_jax.diffusion.diffusers_scheduler import from_diffusers_config
from imagen_jax.diffusion.learned_variance import LearnedVarianceTables, hybrid_loss, q_sample
from imagen_jax.diffusion.schedules import DiscreteSchedule
from imagen_jax.models.if_config import IFUNetConfig
from imagen_jax.models.if_unet import IFUNet
from imagen_jax.models.if_weights import load_if_unet
from imagen_jax.train.state import TrainState, init_state
from imagen_jax.train.step import apply_gradients

Array = jax.Array
KIND = "deepfloyd_if"
CONFIG_DIR = "deepfloyd_if"  # under the stage's folder: the IF directory's configs, no weights
# the files copied from an IF directory (relative paths; stage II's noising scheduler optional)
CONFIG_FILES = ("unet/config.json", "scheduler/scheduler_config.json",
                "image_noising_scheduler/scheduler_config.json", "model_index.json")


def is_if_stage(config: ml_collections.ConfigDict) -> bool:
  return config.get("model", {}).get("kind", "imagen") == KIND


@dataclasses.dataclass(frozen=True)
class IFStepConfig:
  """What an IF train step needs besides the state and the batch (static under jit)."""

  unet: IFUNetConfig
  schedule: DiscreteSchedule  # the stage's training / sampling schedule
  noising: DiscreteSchedule | None = None  # stage II: the image-noising schedule
  p_uncond: float = 0.1
  aug_max_level: float = 1.0  # stage II: noise levels drawn in [0, aug_max_level · T_noise)
  ema_decay: float = 0.9999
  ema_warmup: bool = True

  @property
  def stage_II(self) -> bool:
    return self.unet.class_embed_type == "timestep"

  def max_noise_level(self) -> int:
    n = self.noising.num_timesteps
    return max(1, min(n, int(round(self.aug_max_level * n))))


def drop_text_to_null(key: Array, embeddings: Array, null: Array, p_uncond: float) -> Array:
  """The embeddings with a random `p_uncond` share of the examples' text replaced by `null`
  ((1, L, D): the encoding of "", IF's unconditional input)."""
  keep = jax.random.bernoulli(key, 1.0 - p_uncond, (embeddings.shape[0],))
  return jnp.where(keep[:, None, None], embeddings, null.astype(embeddings.dtype))


def noised_lowres(noising: DiscreteSchedule, lowres: Array, size: int, key: Array,
                  max_level: int) -> tuple[Array, Array]:
  """Stage II's conditioning in training: what `IFStage.lowres_cond` does at sampling time
  (`_noised_upscale`: aligned-corner upsampling to `size`, then the image-noising schedule's
  α·x + σ·z), at an integer level drawn uniformly in [0, max_level) per example (also returned:
  the U-Net's class labels)."""
  from imagen_jax.pretrained.deepfloyd_if import _noised_upscale

  level_key, noise_key = jax.random.split(key)
  levels = jax.random.randint(level_key, (lowres.shape[0],), 0, max_level)
  alpha_bar = jnp.asarray(noising.alphas_cumprod(), jnp.float32)[levels][:, None, None, None]
  return _noised_upscale(lowres, size, noise_key, jnp.sqrt(alpha_bar),
                         jnp.sqrt(1.0 - alpha_bar)), levels


def cast_kernels(params: Any, dtype: str) -> Any:
  """Weights of rank ≥ 2 (kernels, embeddings) cast to the compute dtype before the forward pass,
  as each layer would cast them anyway; norms and biases stay as stored. Under fsdp the all-gather
  then moves — and the backward pass keeps — the compute-dtype copy: IF-I-XL's gathered weights
  are 8.6 GB in bfloat16 instead of 17.2 GB in float32. A no-op when they already match."""
  target = jnp.dtype(dtype)
  return jax.tree.map(lambda p: p.astype(target) if p.ndim >= 2 and p.dtype != target else p,
                      params)


def make_if_train_step(config: IFStepConfig, optimizer: optax.GradientTransformation,
                       learning_rate: Callable[[Array], Array]
                       ) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict]]:
  """`step(state, batch) -> (state, metrics)` for an IF stage; batch: 'image' (B, H, W, 3) in
  [−1, 1], 'text_embeddings' (B, 77, D) as cached (padding positions kept), 'null_text' (1, 77,
  D), and for stage II 'lowres' (B, h, w, 3). Metrics add the loss's two terms ('mse', 'vb')."""
  model = IFUNet(config.unet)
  tables = LearnedVarianceTables.from_schedule(config.schedule)
  num_timesteps = config.schedule.num_timesteps

  def step(state: TrainState, batch: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    drop_key, aug_key, t_key, noise_key = jax.random.split(key, 4)
    x0 = batch["image"].astype(jnp.float32)
    text = drop_text_to_null(drop_key, batch["text_embeddings"], batch["null_text"],
                             config.p_uncond)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = q_sample(tables, x0, noise, t)
    sample, labels = x_t, None
    if config.stage_II:
      lowres, labels = noised_lowres(config.noising, batch["lowres"], x0.shape[1], aug_key,
                                     config.max_noise_level())
      sample = jnp.concatenate([x_t, lowres], axis=-1)

    def loss_fn(params):
      out = model.apply({"params": cast_kernels(params, config.unet.dtype)}, sample, t, text,
                        None, labels)
      per_example, terms = hybrid_loss(tables, x0, noise, x_t, t, out.astype(jnp.float32))
      return jnp.mean(per_example), {k: jnp.mean(v) for k, v in terms.items()}

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, loss, grads, optimizer, learning_rate, config.ema_decay,
                           config.ema_warmup, terms)

  return step


# ---- The stage's configs in the workdir ------------------------------------------------------


def config_dir(stage_dir: str | Path) -> Path:
  return Path(stage_dir) / CONFIG_DIR


def resolve_config(config: ml_collections.ConfigDict, stage_dir: Path) -> None:
  """Fill what an IF stage's config leaves empty, before it is saved with the run: `init_from`
  from the stage's earlier run (a resumed run may omit --init-from), `text.encoder` from the
  `init_from` directory when it carries IF's T5 (stage I downloads do)."""
  source = config_dir(stage_dir) / "SOURCE"
  if not config.get("init_from") and source.is_file():
    config.init_from = source.read_text().strip()
  if not config.text.encoder and config.get("init_from") and \
      (Path(config.init_from) / "text_encoder" / "config.json").is_file():
    config.text.encoder = str(config.init_from)


def prepare_stage_dir(config: ml_collections.ConfigDict, stage_dir: Path) -> Path:
  """The stage's copy of its IF directory's configs (made on the first run, from
  `config.init_from`); returns it. A resumed run reads its own copy, so the IF directory may
  have moved; a first run without `init_from` is an error naming the fix."""
  target = config_dir(stage_dir)
  if (target / "unet" / "config.json").is_file():
    return target
  source = Path(config.get("init_from") or "")
  if not str(config.get("init_from") or ""):
    raise ValueError(f"stage {config.stage} fine-tunes DeepFloyd IF but no weights were named: "
                     "pass --init-from IF_DIR (a diffusers-format IF-I-* or IF-II-* download) "
                     "or --config.init_from=IF_DIR")
  if not (source / "unet" / "config.json").is_file():
    raise ValueError(f"--init-from {source} is not a DeepFloyd IF stage directory: it has no "
                     "unet/config.json (expected a diffusers-format download such as "
                     "IF-I-XL-v1.0/ with unet/ and scheduler/)")
  tmp = target.with_name(target.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  for name in CONFIG_FILES:
    if (source / name).is_file():
      (tmp / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(source / name, tmp / name)
  (tmp / "SOURCE").write_text(f"{source.resolve()}\n")
  tmp.rename(target)
  return target


def read_stage_files(directory: Path) -> tuple[IFUNetConfig, dict[str, Any],
                                                DiscreteSchedule | None]:
  """(U-Net config, raw scheduler config, stage II's noising schedule) of an IF directory (or a
  stage's copy of its configs), checked as `inspect_if_stage` checks a download."""
  from imagen_jax.pretrained.deepfloyd_if import inspect_if_stage

  stage = inspect_if_stage(directory)
  return stage.unet, stage.scheduler_config, stage.noising


@dataclasses.dataclass(frozen=True)
class IFStageProgram:
  """What an IF stage's training compiles (the counterpart of `loop.StageProgram`), and how its
  first state is made: from the IF directory's weights, not a random init."""

  step_config: IFStepConfig
  optimizer: optax.GradientTransformation
  init_params: Callable[[Array], Any]  # random init: shapes and logical axes only
  step_fn: Callable[..., Any]
  weights_dir: Path | None  # the IF directory whose unet/ holds the initial weights

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, text_len: int,
            stage_dir: Path | None = None) -> IFStageProgram:
    """`stage_dir` holds the stage's copy of the IF configs (`prepare_stage_dir`); without one
    (planning ahead of time) they are read from `config.init_from`."""
    from imagen_jax.train.loop import optimizer_config
    from imagen_jax.train.state import learning_rate, make_optimizer

    source = config_dir(stage_dir) if stage_dir is not None else Path(config.init_from)
    unet, raw, noising = read_stage_files(source)
    m = config.model
    unet = dataclasses.replace(unet, dtype=m.get("dtype", "float32"),
                               param_dtype=m.get("param_dtype", "float32"),
                               remat=bool(m.get("remat", False)),
                               attention_impl=m.get("attention_impl", unet.attention_impl))
    check_resolutions(config, unet)
    if config.model.text_dim != unet.text_dim:
      raise ValueError(f"stage {config.stage}: the IF U-Net takes {unet.text_dim}-wide text but "
                       f"config.model.text_dim is {config.model.text_dim}; set "
                       f"--config.model.text_dim={unet.text_dim}")
    schedule = from_diffusers_config(raw).schedule
    d = config.diffusion
    step_cfg = IFStepConfig(unet, schedule, noising, p_uncond=d.p_uncond,
                            aug_max_level=d.get("aug_max_level", 1.0),
                            ema_decay=config.train.ema_decay,
                            ema_warmup=config.train.get("ema_warmup", True))
    opt_cfg = optimizer_config(config.train)
    optimizer = make_optimizer(opt_cfg)
    size = config.crop_size or config.resolution
    sample = jnp.zeros((1, size, size, unet.in_channels))
    text = jnp.zeros((1, text_len, unet.text_dim))
    labels = jnp.zeros((1,), jnp.int32) if unet.class_embed_type else None
    model = IFUNet(unet)
    init = lambda k: model.init(k, sample, jnp.zeros((1,), jnp.int32), text, None,
                                labels)["params"]
    weights = Path(config.init_from) if config.get("init_from") else None
    return cls(step_cfg, optimizer, init, make_if_train_step(step_cfg, optimizer,
                                                             learning_rate(opt_cfg)), weights)

  def jit_step(self, shardings: Any, batch_sh: dict[str, Any], mesh: jax.sharding.Mesh):
    return jax.jit(self.step_fn, in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))

  def initial_state(self, seed: int, mesh: jax.sharding.Mesh, rules: shd.Rules,
                    shardings: TrainState) -> TrainState:
    """The first state on the mesh: the IF directory's weights (cast to the config's
    param_dtype), read onto their shardings tensor by tensor; EMA = those weights; fresh
    optimiser state; the step's PRNG key from `seed`."""
    if self.weights_dir is None:
      raise ValueError("no IF weights to start from: pass --init-from IF_DIR")
    unet_dir = self.weights_dir / "unet"
    expected = self.step_config.unet
    try:
      cfg, params = load_if_unet(unet_dir, dtype=expected.param_dtype,
                                 shardings=shardings.params)
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"cannot load the IF U-Net in {unet_dir}: {e}") from e
    same = lambda c: {k: v for k, v in c.to_diffusers().items() if k != "sample_size"}
    if same(cfg) != same(expected):
      raise ValueError(f"{unet_dir}/config.json is not the U-Net this stage was started from "
                       f"(its copy in the workdir differs); point --init-from at the same "
                       "IF directory, or start a new workdir")
    # `init_state` with the loaded weights in place of a random init (same key use as ours)
    make = lambda p: init_state(lambda _: p, self.optimizer, jax.random.key(seed))
    with jax.set_mesh(mesh):
      return jax.jit(make, out_shardings=shardings, donate_argnums=0)(params)

  def extra_batch(self, cache: Any, mesh: jax.sharding.Mesh) -> dict[str, Array]:
    """Inputs every step takes besides the data: the unconditional text (1, L, D) from the
    embedding cache, put on the devices once."""
    null = read_null_embedding(cache)[None]
    return {"null_text": jax.device_put(null, shd.replicated(mesh))}


def sample_grid(config: ml_collections.ConfigDict, program: IFStageProgram, stage_dir: Path,
                params: Any, batch: dict[str, np.ndarray], null_text: np.ndarray,
                seed: int) -> np.ndarray:
  """A few samples of the stage (`params`: its EMA weights) for the batch's first captions —
  stage II: from their low-res images — drawn as `imagen-jax sample --workdir` draws the
  checkpoint (`Cascade.sample_encoded` on the stage `load_stage` makes: IF's scheduler and
  thresholding, guidance against the empty prompt's encoding `null_text`) with
  `train.sample_steps` steps at `train.guidance_weight`; seeded with `seed`."""
  from imagen_jax.cascade import Cascade, SamplingOptions
  from imagen_jax.pretrained.deepfloyd_if import inspect_if_stage

  n = min(config.train.num_samples, len(batch["text_embeddings"]))
  stage = inspect_if_stage(config_dir(stage_dir), config.lowres_resolution or None)
  unet = dataclasses.replace(program.step_config.unet, sample_size=config.resolution,
                             remat=False)
  stage = dataclasses.replace(stage, name=config.stage, unet=unet, params=params)
  stage.negative_text = jnp.asarray(null_text, jnp.float32)[None]
  options = {stage.name: SamplingOptions(config.train.guidance_weight,
                                         num_steps=config.train.sample_steps)}
  cond = {"text": batch["text_embeddings"][:n], "text_mask": batch["text_mask"][:n]}
  lowres = batch["lowres"][:n] if config.lowres_resolution else None
  return Cascade([stage], encoder=None).sample_encoded(cond, seed=seed, options=options,
                                                       lowres=lowres)[stage.name]


def check_resolutions(config: ml_collections.ConfigDict, unet: IFUNetConfig) -> None:
  """The stage config's sizes against the IF U-Net: resolutions divisible by its downsampling,
  a low-res input for stage II only."""
  size = config.crop_size or config.resolution
  if size % unet.downsampling:
    raise ValueError(f"stage {config.stage}: training size {size} px is not a multiple of the "
                     f"IF U-Net's total downsampling {unet.downsampling}")
  stage_II = unet.class_embed_type == "timestep"
  if stage_II != bool(config.lowres_resolution):
    which = "II (super-resolution)" if stage_II else "I (base)"
    raise ValueError(f"stage {config.stage}: the IF directory holds a stage {which} U-Net but "
                     f"config.lowres_resolution is {config.lowres_resolution}; use "
                     f"configs/if_finetune.py:{'II' if stage_II else 'I'}")


def read_null_embedding(cache: Any) -> np.ndarray:
  """The cache's unconditional text, checked to be IF's (the encoding of "", not zeros)."""
  if not np.any(cache.null_embedding):
    raise ValueError("the text-embedding cache has no encoding of \"\" (IF's unconditional input "
                     "for classifier-free guidance): encode the captions with the IF directory's "
                     "T5 — imagen-jax encode --config configs/text.py --workdir W "
                     "--config.text.encoder=IF_DIR --config.text.max_length=77")
  return np.asarray(cache.null_embedding, np.float32)


# ---- Export -------------------------------------------------------------------------------------


def export_stage(stage_dir: str | Path, out: str | Path, *, use_ema: bool = True,
                 step: int | None = None, dtype: Any = None) -> Path:
  """Write a fine-tuned IF stage as a diffusers-format IF directory at `out`: `unet/` (config.json
  + safetensors of the checkpoint's EMA — or raw — weights, cast to `dtype` if given), the
  scheduler configs and model_index.json copied from the stage's IF configs, and `text_encoder/`
  and `tokenizer/` linked (symlinks, not copies of T5-XXL's 19 GB) from the IF directory it was
  started from when that has them. diffusers' `from_pretrained` and `--pretrained` then load it.
  An existing `out` is refused: nothing already there is overwritten."""
  from imagen_jax.cascade import CascadeError, load_stage
  from imagen_jax.models.if_weights import save_if_unet

  stage_dir, out = Path(stage_dir), Path(out)
  if out.exists():
    raise ValueError(f"{out} exists: export writes a new directory (remove it or pick another)")
  stage = load_stage(stage_dir, use_ema=use_ema, step=step)
  if not hasattr(stage, "negative_text"):
    raise CascadeError(f"{stage_dir} is not a fine-tuned DeepFloyd IF stage: export writes IF "
                       "stages in diffusers' format")
  params = stage.params
  if dtype is not None:
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)
  tmp = out.with_name(f".{out.name}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  save_if_unet(tmp / "unet", stage.unet, params)
  source = config_dir(stage_dir)
  for name in CONFIG_FILES[1:]:
    if (source / name).is_file():
      (tmp / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(source / name, tmp / name)
  origin = Path((source / "SOURCE").read_text().strip()) if (source / "SOURCE").is_file() else None
  for name in ("text_encoder", "tokenizer"):
    if origin is not None and (origin / name).is_dir():
      (tmp / name).symlink_to((origin / name).resolve(), target_is_directory=True)
  tmp.rename(out)
  return out
