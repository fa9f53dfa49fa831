"""Sampling a chain of stages: `Cascade` (text → base image → super-resolution stages, and
image repair through them), the stage interface `CascadeStage`, a stage trained here (`Stage`),
per-stage `SamplingOptions`, and chaining stages by resolution. Loading stages from a workdir is
`imagen_jax.cascade.workdir`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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

