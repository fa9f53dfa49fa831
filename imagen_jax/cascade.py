"""The cascade: text → base image → super-resolution stages, loaded from a training workdir.

    from imagen_jax.cascade import load_cascade, SamplingOptions
    cascade = load_cascade("W")                      # every trained stage under W/, EMA weights
    images = cascade.sample(["a red circle"], seed=0, options={"base64": SamplingOptions(5.0)})
    images["base64"], images["sr256"]                # float32 NHWC in [-1, 1], per stage

A workdir holds one folder per stage (`base64`, `sr256`, `sr1024`, or any `config.stage`), each with
`config.json` and Orbax checkpoints. Stages are chained by resolution: each SR stage's
`lowres_resolution` must be the previous stage's resolution. Prompts are encoded with the text
encoder the stages were trained with (`config.text.encoder`, or the embedded tiny T5 in
`W/text/default_t5`), and its fingerprint is checked against the training cache. Every stage's
sampler is compiled once per batch shape and reused (the guidance weight is a traced argument).

A stage is anything with the small interface of `CascadeStage`: its name, resolution and
low-resolution input size, parameters, and what sampling it needs — its denoiser, schedule,
prediction and sampler config for given `SamplingOptions` (`StageSampling`), its unconditional
(null) conditioning for classifier-free guidance, and its conditioning on the previous stage's
images. `Stage` is a stage trained here; DeepFloyd IF's released stages
(`imagen_jax.pretrained.deepfloyd_if`, `load_if_cascade`) are the other kind. `Cascade.sample` and
`Cascade.repair` only talk to that interface.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import sharding as shd
from imagen_jax.diffusion import (
  NoiseAugmentation,
  RePaint,
  SamplerConfig,
  Thresholding,
  jit_repair_sample,
  jit_sample,
  stage_schedule,
  start_index,
)
from imagen_jax.diffusion.objectives import DenoiseFn, Prediction
from imagen_jax.diffusion.samplers import MULTISTEP
from imagen_jax.diffusion.schedules import AnySchedule
from imagen_jax.models.unet import UNetConfig, UNetDenoiser, null_text
from imagen_jax.text.cache import CacheSpec
from imagen_jax.text.encoder import TextEncoder

KNOWN_STAGES = ("base64", "sr256", "sr1024")


class CascadeError(ValueError):
  """A workdir or request the cascade cannot serve; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """Per-stage sampling settings; a field left None takes the stage's default.

  Trained stages (`Stage`): guidance weight 5, 'dpmpp_2m', 25 steps, 'dynamic' thresholding, the
  config's `aug_sample_level` (`TRAINED_STAGE_DEFAULTS`). DeepFloyd IF stages: IF's pipelines' —
  the scheduler config's sampler (learned-range DDPM) and thresholding, 100 steps at w 7 (stage
  I) / 50 steps at w 4 with noise level 250 (stage II). `aug_level` (∈ [0, 1]) is the noise-
  augmentation level of a trained SR stage, `noise_level` (a timestep of its image-noising
  schedule, 0–999) that of an IF stage II; each kind of stage refuses the other's.
  """

  guidance_weight: float | None = None
  sampler: str | None = None  # 'ddpm' | 'ddim' | 'dpmpp_2m' | 'dpmpp_2m_sde'
  num_steps: int | None = None
  thresholding: str | None = None  # 'none' | 'static' | 'dynamic'
  aug_level: float | None = None  # trained SR stages: noise-augmentation level
  noise_level: int | None = None  # IF stage II: the image-noising scheduler's timestep

  def with_defaults(self, **defaults: Any) -> SamplingOptions:
    """These options with every None field named in `defaults` set to its default."""
    return dataclasses.replace(
        self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

  def sampler_config(self) -> SamplerConfig:
    """The sampler config of a trained stage (None fields: `TRAINED_STAGE_DEFAULTS`)."""
    o = self.with_defaults(**TRAINED_STAGE_DEFAULTS)
    return SamplerConfig(o.sampler, num_steps=o.num_steps,
                         thresholding=Thresholding(o.thresholding))


TRAINED_STAGE_DEFAULTS = {"guidance_weight": 5.0, "sampler": "dpmpp_2m", "num_steps": 25,
                          "thresholding": "dynamic"}


@dataclasses.dataclass(frozen=True)
class StageSampling:
  """What `jit_sample` / `jit_repair_sample` need to sample one stage with some options.
  `denoiser` is hashable (a static argument: equal objects share one compiled sampler)."""

  denoiser: DenoiseFn
  schedule: AnySchedule
  config: SamplerConfig
  prediction: Prediction
  guidance_weight: float


class CascadeStage(Protocol):
  """The interface `Cascade` samples a stage through (`Stage`, or an IF stage)."""

  name: str
  params: Any

  @property
  def resolution(self) -> int: ...  # output size (square)

  @property
  def lowres_resolution(self) -> int: ...  # input size of an SR stage; 0 for a base stage

  @property
  def text_dim(self) -> int: ...  # width of the text embeddings it is conditioned on

  def sampling(self, options: SamplingOptions) -> StageSampling:
    """The sampler for `options` (None fields: this stage's defaults)."""

  def null_cond(self, cond: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The unconditional input of classifier-free guidance, given the conditional one."""

  def lowres_cond(self, lowres: jax.Array, options: SamplingOptions, key: jax.Array
                  ) -> dict[str, jax.Array]:
    """An SR stage's conditioning entries for the previous stage's images `lowres` (n,
    lowres_resolution, lowres_resolution, 3), e.g. noise-augmented with `key`."""


@dataclasses.dataclass
class Stage:
  """One trained stage: its config, U-Net and (EMA) parameters."""

  name: str
  config: ml_collections.ConfigDict
  unet: UNetConfig
  params: Any
  step: int

  @property
  def resolution(self) -> int:
    return self.config.resolution

  @property
  def lowres_resolution(self) -> int:
    return self.config.lowres_resolution

  @property
  def text_dim(self) -> int:
    return self.unet.text_dim

  def sampling(self, options: SamplingOptions) -> StageSampling:
    if options.noise_level is not None:
      raise CascadeError(f"{self.name} is a trained stage: set its noise augmentation with "
                         "aug_level (in [0, 1]), not noise_level (an IF stage II option)")
    o = options.with_defaults(**TRAINED_STAGE_DEFAULTS)
    return StageSampling(UNetDenoiser(self.unet), stage_schedule(self.config.diffusion),
                         o.sampler_config(), self.config.diffusion.prediction,
                         o.guidance_weight)

  def null_cond(self, cond: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return null_text(cond)

  def lowres_cond(self, lowres: jax.Array, options: SamplingOptions, key: jax.Array
                  ) -> dict[str, jax.Array]:
    level = self.config.diffusion.aug_sample_level if options.aug_level is None else \
        options.aug_level
    noised, aug_level = NoiseAugmentation().fixed(lowres, float(level), key)
    return {"lowres": noised, "aug_level": aug_level}


def read_stage_config(stage_dir: Path) -> ml_collections.ConfigDict:
  path = stage_dir / "config.json"
  if not path.is_file():
    raise CascadeError(f"{stage_dir} has no config.json: is it a stage trained with "
                       "`imagen-jax train`?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_stage(stage_dir: str | Path, *, use_ema: bool = True, step: int | None = None
               ) -> CascadeStage:
  """Restore a stage's parameters (EMA by default) from its newest (or given) checkpoint: a
  `Stage`, or for a fine-tuned DeepFloyd IF stage an `IFStage` (its `negative_text` is set by
  `load_cascade`, from the text encoder)."""
  from imagen_jax.train import if_finetune
  from imagen_jax.train.checkpoint import Checkpointer
  from imagen_jax.train.loop import build_program
  from imagen_jax.train.state import abstract_sharded_state

  stage_dir = Path(stage_dir)
  config = read_stage_config(stage_dir)
  is_if = if_finetune.is_if_stage(config)
  if is_if and not (if_finetune.config_dir(stage_dir) / "unet" / "config.json").is_file():
    raise CascadeError(f"{stage_dir} is a DeepFloyd IF stage without its configs "
                       f"({if_finetune.CONFIG_DIR}/unet/config.json, written by its first "
                       "training run)")
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  program = build_program(config, config.text.max_length, stage_dir)
  target, _ = abstract_sharded_state(program.init_params, program.optimizer, mesh,
                                     shd.DEFAULT_RULES)
  name = "ema_params" if use_ema else "params"
  with Checkpointer(stage_dir / "checkpoints", read_only=True) as ckpt:
    if not ckpt.all_steps():
      raise CascadeError(f"stage {config.stage}: no checkpoint in {stage_dir / 'checkpoints'}; "
                         "train it first (imagen-jax train --config ... --workdir ...)")
    # only the parameters are read: not the optimiser state, not the other copy of the weights
    restored_step, params = ckpt.restore_subtree(name, getattr(target, name), step=step)
  if is_if:
    from imagen_jax.pretrained.deepfloyd_if import inspect_if_stage

    stage = inspect_if_stage(if_finetune.config_dir(stage_dir), config.lowres_resolution or None)
    unet = dataclasses.replace(program.step_config.unet, sample_size=config.resolution,
                               remat=False)
    return dataclasses.replace(stage, name=config.stage, unet=unet, params=params,
                               step=restored_step)
  return Stage(config.stage, config, program.step_config.model, params, restored_step)


def chain_stages(stages: Sequence[CascadeStage]) -> list[CascadeStage]:
  """Order stages by resolution and check that each SR stage takes its predecessor's output."""
  ordered = sorted(stages, key=lambda s: s.resolution)
  if not ordered:
    raise CascadeError("no stages to chain")
  if ordered[0].lowres_resolution:
    raise CascadeError(f"the lowest stage {ordered[0].name} is a super-resolution stage "
                       f"(lowres {ordered[0].lowres_resolution}); the cascade needs a base stage")
  for prev, cur in zip(ordered, ordered[1:]):
    if cur.lowres_resolution != prev.resolution:
      raise CascadeError(f"incompatible stage resolutions: {cur.name} upsamples from "
                         f"{cur.lowres_resolution} px but {prev.name} makes {prev.resolution} px")
    if cur.text_dim != ordered[0].text_dim:
      raise CascadeError(f"{cur.name} and {ordered[0].name} were trained on different text "
                         "encoders (text_dim differs)")
  return ordered


def encoder_for(workdir: Path, config: ml_collections.ConfigDict) -> TextEncoder:
  """The text encoder the stages were trained with (a T5 or DeepFloyd IF directory, as
  `imagen-jax encode` loaded it); checked against the training cache."""
  from imagen_jax.text.encode import load_encoder, resolve_encoder_dir

  directory = (resolve_encoder_dir(config, workdir) if config.text.encoder else
               workdir / "text" / "default_t5")
  if not directory.is_dir():
    raise CascadeError(f"text encoder {directory} not found (config.text.encoder, or the "
                       "embedded default built by `imagen-jax encode`)")
  try:
    encoder = load_encoder(config, workdir, batch_size=8)
  except (FileNotFoundError, ValueError) as e:
    raise CascadeError(f"cannot load the text encoder {directory}: {e}") from e
  check_trained_encoder(workdir, config, encoder.fingerprint, f"the text encoder in {directory}")
  return encoder


def check_trained_encoder(workdir: Path, config: ml_collections.ConfigDict, fingerprint: str,
                          what: str) -> None:
  """Refuse an encoder (`what`, its `fingerprint`) that is not the one that encoded the captions
  the stage of `config` was trained on, as its caption cache's manifest records it (a stage
  whose cache is gone is not checked)."""
  from imagen_jax.text.encode import cache_dir_for

  manifest = cache_dir_for(config, workdir, config.data.split) / "manifest.json"
  if manifest.is_file():
    spec = CacheSpec(**json.loads(manifest.read_text())["spec"])
    if spec.encoder_fingerprint != fingerprint:
      raise CascadeError(f"{what} is not the one stage {config.stage} was trained with (its "
                         f"cache {manifest.parent} has fingerprint {spec.encoder_fingerprint}, "
                         f"the encoder {fingerprint})")


@dataclasses.dataclass
class Cascade:
  """Stages chained by resolution plus the text encoder (anything with `encode(prompts)` →
  (embeddings, mask, tokens), as `TextEncoder`)."""

  stages: list[CascadeStage]
  encoder: TextEncoder

  def encode(self, prompts: Sequence[str]) -> dict[str, jax.Array]:
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
      raise CascadeError("empty prompt: give at least one non-empty prompt")
    emb, mask, _ = self.encoder.encode(prompts)
    return {"text": jnp.asarray(emb), "text_mask": jnp.asarray(mask)}

  def sample(self, prompts: Sequence[str], *, seed: int = 0,
             options: dict[str, SamplingOptions] | None = None,
             lowres: np.ndarray | None = None, stages: Sequence[str] | None = None
             ) -> dict[str, np.ndarray]:
    """Images of every stage for the prompts, float32 NHWC in [−1, 1], keyed by stage name.

    `lowres` starts the chain at the first SR stage from given images (upscaling); `stages`
    restricts which stages run (in cascade order); `options` maps stage names to
    `SamplingOptions` (a stage not named samples with its defaults). The i-th stage that runs
    samples with the key fold_in(key(seed), i) (`jit_sample`'s); an SR stage's conditioning
    noise is drawn from fold_in(that key, 1).
    """
    return self.sample_encoded(self.encode(prompts), seed=seed, options=options, lowres=lowres,
                               stages=stages)

  def sample_encoded(self, cond: dict[str, Any], *, seed: int = 0,
                     options: dict[str, SamplingOptions] | None = None,
                     lowres: np.ndarray | None = None, stages: Sequence[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """`sample` for text already encoded: `cond` = {"text": (n, L, D) embeddings, "text_mask":
    (n, L)} as the encoder (or the training cache) gives them."""
    options = options or {}
    cond = {"text": jnp.asarray(cond["text"]), "text_mask": jnp.asarray(cond["text_mask"])}
    n = cond["text"].shape[0]
    run = [s for s in self.stages if stages is None or s.name in stages]
    if lowres is not None:
      run = [s for s in run if s.lowres_resolution]
      if not run:
        raise CascadeError("upscaling needs a super-resolution stage in the workdir")
    out: dict[str, np.ndarray] = {}
    previous = None if lowres is None else jnp.asarray(lowres, jnp.float32)
    for i, stage in enumerate(run):
      opts = options.get(stage.name, SamplingOptions())
      plan = stage.sampling(opts)
      key = jax.random.fold_in(jax.random.key(seed), i)
      stage_cond = self._stage_cond(stage, cond, previous, opts, key)
      size = stage.resolution
      images = jit_sample(plan.denoiser, stage.params, (n, size, size, 3), key, stage_cond,
                          schedule=plan.schedule, config=plan.config, prediction=plan.prediction,
                          null_cond=stage.null_cond(stage_cond),
                          guidance_weight=jnp.float32(plan.guidance_weight))
      previous = jnp.clip(images, -1.0, 1.0)
      out[stage.name] = np.asarray(previous)
    return out

  def repair(self, prompts: Sequence[str], image: np.ndarray, *, mask: np.ndarray | None = None,
             strength: float = 1.0, repaint: RePaint | None = None, seed: int = 0,
             options: dict[str, SamplingOptions] | None = None,
             stages: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Inpaint (`mask` given) or re-render (image-to-image) `image` through the cascade.

    image: (n, H, W, 3) float32 in [−1, 1], square, any size; mask: (n, H, W) or (n, H, W, 1),
    1 (or > 0.5) where the prompt fills in, 0 where the image is kept. Every stage repairs at its
    own resolution with the image and mask resized to it (area-averaged; the mask thresholded at
    0.5), so the known pixels are kept at every stage, and each SR stage is conditioned on the
    previous stage's repaired output — diffusers' IF inpainting / img2img super-resolution
    pipelines do the same. `strength` ∈ (0, 1] sets every stage's start step
    (`diffusion.start_index`); `repaint` resamples (stages sampled with 'ddpm' or 'ddim').
    Returns every stage's images, float32 NHWC in [−1, 1], keyed by stage name.
    """
    options = options or {}
    image = np.asarray(image, np.float32)
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] != image.shape[2]:
      raise CascadeError(f"image must be a batch of square RGB images (n, H, H, 3), got shape "
                         f"{image.shape}")
    if mask is not None:
      mask = np.asarray(mask, np.float32)
      mask = mask[..., None] if mask.ndim == 3 else mask
      if mask.shape != image.shape[:3] + (1,):
        raise CascadeError(f"mask of shape {mask.shape[:3]} does not match the image's "
                           f"{image.shape[:3]}: give one mask per image, of the image's size")
    try:
      start_index(1, strength)  # validates strength
    except (TypeError, ValueError) as e:
      raise CascadeError(str(e)) from e
    if repaint is not None and (mask is None or strength != 1.0):
      raise CascadeError("RePaint resamples an inpainting run from pure noise: give a mask and "
                         "leave strength at 1")
    cond = self.encode(prompts)
    n = cond["text"].shape[0]
    if image.shape[0] != n:
      raise CascadeError(f"{image.shape[0]} images for {n} prompts: give one prompt per image")
    run = [s for s in self.stages if stages is None or s.name in stages]
    out: dict[str, np.ndarray] = {}
    previous = None
    for i, stage in enumerate(run):
      opts = options.get(stage.name, SamplingOptions())
      plan = stage.sampling(opts)
      if repaint is not None and plan.config.name in MULTISTEP:
        raise CascadeError(f"RePaint needs an ancestral sampler for {stage.name}: use 'ddpm' "
                           "(or 'ddim')")
      key = jax.random.fold_in(jax.random.key(seed), i)
      if previous is None and stage.lowres_resolution:  # SR stages alone: the image is the input
        previous = jnp.asarray(resize_images(image, stage.lowres_resolution))
      stage_cond = self._stage_cond(stage, cond, previous, opts, key)
      size = stage.resolution
      target = resize_images(image, size)
      keep = None if mask is None else (resize_images(mask, size) <= 0.5).astype(np.float32)
      kwargs = {} if repaint is not None else {
          "start": jnp.int32(start_index(plan.config.num_steps, strength))}
      images = jit_repair_sample(plan.denoiser, stage.params, target, key, stage_cond,
                                 keep=keep, repaint=repaint, schedule=plan.schedule,
                                 config=plan.config, prediction=plan.prediction,
                                 null_cond=stage.null_cond(stage_cond),
                                 guidance_weight=jnp.float32(plan.guidance_weight), **kwargs)
      previous = jnp.clip(images, -1.0, 1.0)
      out[stage.name] = np.asarray(previous)
    return out

  def _stage_cond(self, stage: CascadeStage, cond: dict, previous: jax.Array | None,
                  opts: SamplingOptions, key: jax.Array) -> dict:
    """The stage's conditioning: the text, and for an SR stage the previous stage's images as
    the stage takes them (e.g. noise-augmented at the sampling level)."""
    stage_cond = dict(cond)
    if stage.lowres_resolution:
      if previous is None:
        raise CascadeError(f"{stage.name} needs a low-resolution input")
      n = cond["text"].shape[0]
      want = (n, stage.lowres_resolution, stage.lowres_resolution, 3)
      if previous.shape != want:
        raise CascadeError(f"{stage.name} expects low-res inputs of shape {want}, got "
                           f"{tuple(previous.shape)}")
      stage_cond.update(stage.lowres_cond(previous, opts, jax.random.fold_in(key, 1)))
    return stage_cond


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """NHWC float images (or masks) to size × size: area-averaging (antialiased) when shrinking,
  bilinear when enlarging."""
  images = np.asarray(images, np.float32)
  if images.shape[1:3] == (size, size):
    return images
  shape = (images.shape[0], size, size, images.shape[3])
  return np.asarray(jax.image.resize(jnp.asarray(images), shape, "linear", antialias=True))


def stage_dirs(workdir: Path) -> list[Path]:
  """Folders of `workdir` that hold a trained stage (config.json + checkpoints/)."""
  return sorted(d for d in workdir.iterdir()
                if (d / "config.json").is_file() and (d / "checkpoints").is_dir())


def workdir_stage_dirs(workdir: str | Path, stages: Sequence[str] | None = None
                       ) -> dict[str, Path]:
  """The folders of `workdir`'s trained stages (or of the named ones), by stage folder name."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise CascadeError(f"workdir {workdir} does not exist")
  found = {d.name: d for d in stage_dirs(workdir)}
  if stages:
    missing = [s for s in stages if s not in found]
    if missing:
      raise CascadeError(f"workdir {workdir} has no trained stage(s) {missing}; it has "
                         f"{sorted(found) or 'none'}")
    found = {s: found[s] for s in stages}
  if not found:
    raise CascadeError(f"workdir {workdir} has no trained stages (folders with config.json and "
                       "checkpoints/); train one with `imagen-jax train`")
  return found


def set_negative_text(stages: Sequence[CascadeStage], encoder: Any) -> None:
  """DeepFloyd IF stages (released or fine-tuned) guide against the empty prompt's encoding."""
  for stage in stages:
    if hasattr(stage, "negative_text"):
      stage.negative_text = encoder.null_embedding()[None]


def load_cascade(workdir: str | Path, stages: Sequence[str] | None = None,
                 use_ema: bool = True) -> Cascade:
  """Load every trained stage of `workdir` (or the named ones) and the text encoder."""
  found = workdir_stage_dirs(workdir, stages)
  loaded = chain_stages([load_stage(d, use_ema=use_ema) for d in found.values()])
  config = read_stage_config(found[loaded[0].name])
  encoder = encoder_for(Path(workdir), config)
  set_negative_text(loaded, encoder)
  return Cascade(loaded, encoder)


def continuation_stage_dirs(workdir: Path, stages: Sequence[str] | None,
                            taken: Sequence[str]) -> dict[str, Path]:
  """`workdir_stage_dirs`, checked (from their configs alone) to be super-resolution stages
  whose names are not `taken` by the stages they follow."""
  found = workdir_stage_dirs(workdir, stages)
  for name, folder in found.items():
    config = read_stage_config(folder)
    if not config.get("lowres_resolution"):
      raise CascadeError(f"stage {name} of {workdir} is a base stage (text → "
                         f"{config.get('resolution')} px); after the pretrained stages only "
                         "super-resolution stages can follow: choose them with --stages")
    if config.get("stage") in taken:
      raise CascadeError(f"stage {config.stage} is both a pretrained stage and one of "
                         f"{workdir}'s: give one of them")
  return found


def continue_cascade(cascade: Cascade, workdir: str | Path, stages: Sequence[str] | None = None,
                     use_ema: bool = True) -> Cascade:
  """`cascade` (e.g. DeepFloyd IF's released stages, `load_if_cascade`) continued by super-
  resolution stages trained in `workdir` (all of its stages, or the named ones) — e.g. IF-I →
  IF-II → a 256 → 1024 stage of ours. Those stages must have been trained on captions encoded
  by `cascade`'s text encoder (`imagen-jax encode --config.text.encoder=IF_I_DIR`), and must
  each take the previous stage's images."""
  workdir = Path(workdir)
  found = continuation_stage_dirs(workdir, stages, [s.name for s in cascade.stages])
  for folder in found.values():
    check_trained_encoder(workdir, read_stage_config(folder), cascade.encoder.fingerprint,
                          "the pretrained stages' text encoder")
  loaded = [load_stage(d, use_ema=use_ema) for d in found.values()]
  set_negative_text(loaded, cascade.encoder)
  return Cascade(chain_stages([*cascade.stages, *loaded]), cascade.encoder)
