"""DeepFloyd IF's released stages, read from their diffusers-format directories, as cascade stages.

    from imagen_jax.pretrained import load_if_cascade
    cascade = load_if_cascade("IF-I-XL-v1.0", "IF-II-L-v1.0", dtype="bfloat16")
    images = cascade.sample(["a corgi wearing a red beret"], seed=0)
    images["if_I"], images["if_II"]          # 64 px, 256 px: float32 NHWC in [−1, 1]
    cascade.repair(prompts, image, mask=mask)  # inpainting / image-to-image, as for our stages

A stage directory is what a user downloads: `unet/` (config.json + safetensors), `scheduler/
scheduler_config.json`, `tokenizer/`, `text_encoder/` (T5-v1.1-XXL; stage I's — stage II's may be
absent) and, for stage II, `image_noising_scheduler/scheduler_config.json`. The stage's kind comes
from its U-Net: stage I takes 3 channels, stage II 6 (the noisy image and the upscaled low-res
image) with `class_embed_type="timestep"` (the low-res image's noise level).

What is reproduced is diffusers' `IFPipeline` → `IFSuperResolutionPipeline` (tested against both
on tiny random pipelines, tests/test_deepfloyd_if.py):

  * Text (`IFTextEncoder`, `IFPipeline.encode_prompt`): each prompt lower-cased and stripped —
    IF's `_text_preprocessing` without `clean_caption`, whose cleaning needs bs4 and ftfy: they
    are not dependencies here, and the pipeline itself falls back to exactly this without them —
    then tokenized by the directory's tokenizer (padding to max_length 77, truncation, </s>) and
    encoded by our Flax T5 with that attention mask (`TextEncoder.from_if_directory`, which
    `imagen-jax encode` uses for IF's embedding caches too). All 77 hidden states go
    to the U-Net, padding positions included and *no* mask (the pipelines pass none). The
    unconditional branch of guidance is the encoding of "" (the pipelines' default negative
    prompt, not zeros), computed once when the cascade is loaded (`IFStage.negative_text`).
  * Denoising (`IFDenoiser`): λ → IF's integer timestep on the stage's 1000-step table
    (`timestep_from_logsnr`); the U-Net's 6 output channels (ε, then the learned-range variance)
    go to our samplers with `SamplerConfig(learned_variance=True)`.
  * Sampling (`IFStage.sampling`): the scheduler config read by `diffusers_scheduler` (IF's:
    learned-range DDPM, 'leading' spacing, dynamic thresholding 0.95 / 1.5 for stage I and a clip
    to [−1, 1] for stage II) and the pipelines' defaults, 100 steps at guidance 7 (stage I) and
    50 at 4 (stage II) — `SamplingOptions` fields left None. Another `sampler` reads the same
    config as diffusers' `DDIMScheduler` / `DPMSolverMultistepScheduler.from_config` would.
  * Stage II's low-res input (`IFStage.lowres_cond`): bilinear upsampling with
    align_corners=True to the stage's size (`upsample_align_corners`: torch's `F.interpolate`,
    which `jax.image.resize`'s half-pixel sampling is not), noised by the image-noising
    scheduler's `add_noise` at `noise_level` (default 250, a timestep of that schedule; the same
    noise for both guidance branches), and the level is the U-Net's `class_labels`.

Our cascade clips each stage's output to [−1, 1] before the next stage; IF's stage I ends on a
thresholded x̂₀, already in [−1, 1], so stage II gets what `output_type="pt"` hands it in diffusers.
Stage names are "if_I" and "if_II". No safety checker and no watermark are applied.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.cascade import (Cascade, CascadeError, SamplingOptions, StageSampling,
                                chain_stages, continuation_stage_dirs,
                                continue_cascade)
from imagen_jax.diffusion.diffusers_scheduler import (IF_PIPELINE_DEFAULTS, DiffusersScheduler,
                                                      from_diffusers_config,
                                                      timestep_from_logsnr)
from imagen_jax.diffusion.guidance import Thresholding
from imagen_jax.diffusion.schedules import DiscreteSchedule
from imagen_jax.models.if_unet import IFUNet, IFUNetConfig
from imagen_jax.models.if_weights import if_param_shardings, load_if_unet, read_if_config
# IF_MAX_LENGTH, load_if_tokenizer and preprocess_prompt are re-exported: they lived here
from imagen_jax.text.deepfloyd_if import (IF_MAX_LENGTH, load_if_tokenizer,  # noqa: F401
                                          preprocess_prompt)
from imagen_jax.text.encoder import TextEncoder

Array = jax.Array
STAGE_NAMES = {"stage_I": "if_I", "stage_II": "if_II"}
STAGE_II_LOWRES = 64  # IF-I's output size: stage II's input when loaded without a stage I
# our sampler name → the diffusers scheduler class (and option) `from_config` would build
_SCHEDULER_CLASSES = {
    "ddpm": ("DDPMScheduler", {}), "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
}


# ---- Text ---------------------------------------------------------------------------------------


class IFTextEncoder(TextEncoder):
  """IF's prompt encoding (`IFPipeline.encode_prompt`): a `TextEncoder` in IF's convention
  (`TextEncoder.from_if_directory`: lower-cased prompts, 77 tokens, padding positions kept),
  whose `encode` returns the token ids as its third element."""

  def tokenize(self, prompts: Sequence[str], warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (n, max_length) int32 and attention mask (n, max_length) bool, as the pipeline
    tokenizes."""
    tokens = self.tokenizer(prompts, warn=warn)
    return tokens.input_ids, tokens.attention_mask

  def encode(self, prompts: Sequence[str], warn_truncation: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden states (n, max_length, width) float32, mask (n, max_length) bool, token ids)."""
    embeddings, mask, tokens = super().encode(prompts, warn_truncation)
    return embeddings, mask, tokens.input_ids


def load_if_text_encoder(path: str | Path, *, dtype: Any = None, batch_size: int = 8
                         ) -> IFTextEncoder:
  """The text side of an IF directory: `tokenizer/` and the T5 of `text_encoder/` (parameters
  cast to `dtype`, e.g. "bfloat16" for T5-XXL: 9.5 GB instead of 19)."""
  try:
    return IFTextEncoder.from_if_directory(
        path, batch_size=batch_size, param_dtype=None if dtype is None else jnp.dtype(dtype))
  except (FileNotFoundError, ValueError) as e:
    raise CascadeError(f"cannot load IF's text encoder from {path}: {e}") from e


# ---- Denoiser and low-res conditioning -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IFDenoiser:
  """`denoise_fn(params, x, logsnr, cond)` of an IF U-Net; hashable (a static argument of
  `jit_sample`). λ becomes the integer timestep of `schedule`'s table; `cond` holds 'text'
  (B, L, D), no mask, and for stage II 'lowres' (B, H, W, 3) — the noised upscaled image,
  concatenated after x as the pipeline does along NCHW's channels — and 'noise_level' (B,), the
  class labels. Returns the U-Net's 2·3 channels: ε, then the learned-range variance."""

  unet: IFUNetConfig
  schedule: DiscreteSchedule

  def __call__(self, params: Any, x: Array, logsnr: Array, cond: dict[str, Array]) -> Array:
    t = timestep_from_logsnr(self.schedule, logsnr)
    sample, labels = x, None
    if self.unet.class_embed_type == "timestep":
      sample = jnp.concatenate([x, cond["lowres"].astype(x.dtype)], axis=-1)
      labels = cond["noise_level"]
    return IFUNet(self.unet).apply({"params": params}, sample, t, cond["text"], None, labels)


def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices i0, i1 and the weight of i1 per output index, as torch's CPU kernel computes
  them in float32: src = ((n_in − 1)/(n_out − 1))·i, i0 = ⌊src⌋, i1 = min(i0 + 1, n_in − 1)."""
  scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
  src = scale * np.arange(n_out, dtype=np.float32)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  frac = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  return i0, np.minimum(i0 + 1, n_in - 1), frac


@functools.partial(jax.jit, static_argnums=1)
def upsample_align_corners(images: Array, size: int) -> Array:
  """NHWC images to size × size by bilinear interpolation with align_corners=True (torch's
  `F.interpolate(..., mode="bilinear", align_corners=True)`, IF stage II's upsampling): the
  corner pixels of input and output coincide. `jax.image.resize` samples at pixel centres
  (align_corners=False) and would give another image."""
  out = jnp.asarray(images, jnp.float32)
  for axis in (1, 2):  # rows, then columns
    i0, i1, frac = _align_corners_taps(out.shape[axis], size)
    frac = jnp.asarray(frac).reshape([size if a == axis else 1 for a in range(4)])
    out = (1.0 - frac) * jnp.take(out, i0, axis=axis) + frac * jnp.take(out, i1, axis=axis)
  return out


@functools.partial(jax.jit, static_argnums=1)
def _noised_upscale(lowres: Array, size: int, key: Array, alpha: Array, sigma: Array) -> Array:
  """The image-noising scheduler's `add_noise` (α·x + σ·z) of the upsampled image."""
  upscaled = upsample_align_corners(lowres, size)
  return alpha * upscaled + sigma * jax.random.normal(key, upscaled.shape, jnp.float32)


# ---- The stage ----------------------------------------------------------------------------------


@dataclasses.dataclass
class IFStage:
  """One DeepFloyd IF stage as a cascade stage (`imagen_jax.cascade.CascadeStage`).

  kind: 'stage_I' or 'stage_II'; scheduler: its `scheduler/scheduler_config.json` read by
  `diffusers_scheduler` (raw: `scheduler_config`); noising: stage II's image-noising schedule;
  lowres_resolution: stage II's input size (the stage I it follows); negative_text: (1, L, D) the
  T5 encoding of "" — the unconditional branch — set by `load_if_cascade`.
  """

  name: str
  kind: str
  unet: IFUNetConfig
  params: Any
  scheduler: DiffusersScheduler
  scheduler_config: dict[str, Any]
  noising: DiscreteSchedule | None = None
  lowres_resolution: int = 0
  negative_text: Any = None
  step: int | None = None  # the checkpoint's step, for a stage fine-tuned with imagen-jax train

  @property
  def resolution(self) -> int:
    size = self.unet.sample_size
    return size[0] if isinstance(size, tuple) else size

  @property
  def text_dim(self) -> int:
    return self.unet.text_dim

  @property
  def defaults(self) -> dict[str, Any]:
    """IF's pipeline defaults for this stage (steps, guidance weight, stage II's noise level)."""
    return IF_PIPELINE_DEFAULTS[self.kind]

  def scheduler_for(self, sampler: str) -> DiffusersScheduler:
    """This stage's scheduler config read as the diffusers class that `sampler` reproduces (the
    config's own class for its own sampler), as `<Class>.from_config(config)` would use it."""
    if sampler == self.scheduler.sampler:
      return self.scheduler
    if sampler not in _SCHEDULER_CLASSES:
      raise CascadeError(f"unknown sampler {sampler!r}; choose one of {list(_SCHEDULER_CLASSES)}")
    class_name, extra = _SCHEDULER_CLASSES[sampler]
    try:
      return from_diffusers_config({**self.scheduler_config, **extra}, class_name)
    except ValueError as e:
      raise CascadeError(f"{self.name}: sampler {sampler!r} on this scheduler config: {e}") from e

  def sampling(self, options: SamplingOptions) -> StageSampling:
    """None fields: IF's defaults (`defaults`, the scheduler config's sampler and thresholding).
    A thresholding kind equal to the config's keeps the config's parameters (stage I's 'dynamic'
    is IF's 0.95 quantile capped at 1.5); another kind is our `Thresholding(kind)`."""
    if options.aug_level is not None:
      raise CascadeError(f"{self.name} is a DeepFloyd IF stage: set stage II's noise "
                         "augmentation with noise_level (0–999), not aug_level")
    if options.noise_level is not None and self.kind != "stage_II":
      raise CascadeError(f"{self.name} takes no low-res input, so no noise_level")
    o = options.with_defaults(guidance_weight=self.defaults["guidance_weight"],
                              num_steps=self.defaults["num_steps"],
                              sampler=self.scheduler.sampler)
    sched = self.scheduler_for(o.sampler)
    try:  # the weight is a traced argument of the sampler, not part of its (static) config
      config = sched.sampler_config(o.num_steps)
      if o.thresholding is not None and o.thresholding != sched.thresholding.kind:
        config = dataclasses.replace(config, thresholding=Thresholding(o.thresholding))
    except ValueError as e:
      raise CascadeError(f"{self.name}: {e}") from e
    return StageSampling(IFDenoiser(self.unet, sched.schedule), sched.schedule, config,
                         sched.prediction, float(o.guidance_weight))

  def null_cond(self, cond: dict[str, Array]) -> dict[str, Array]:
    """The conditioning with the text replaced by the encoding of the negative prompt ""."""
    if self.negative_text is None:
      raise CascadeError(f"{self.name} has no negative-prompt embedding for classifier-free "
                         "guidance: load it with load_if_cascade (or set negative_text to the "
                         "T5 encoding of \"\")")
    text = cond["text"]
    negative = jnp.asarray(self.negative_text, text.dtype)
    if negative.shape[1:] != text.shape[1:]:
      raise CascadeError(f"{self.name}: the negative-prompt embedding has shape "
                         f"{negative.shape[1:]} but the prompts' {text.shape[1:]}")
    return {**cond, "text": jnp.broadcast_to(negative, text.shape)}

  def lowres_cond(self, lowres: Array, options: SamplingOptions, key: Array) -> dict[str, Array]:
    """Stage II: `lowres` upsampled (align corners) to the stage's size and noised by the
    image-noising scheduler's `add_noise` at `noise_level`, which is also the class label."""
    level = self.defaults["noise_level"] if options.noise_level is None else options.noise_level
    n_levels = self.noising.num_timesteps
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or \
        not 0 <= level < n_levels:
      raise CascadeError(f"{self.name}: noise_level must be an integer timestep in [0, "
                         f"{n_levels}) of the image-noising scheduler, got {level!r}")
    alpha_bar = float(self.noising.alphas_cumprod()[int(level)])
    noised = _noised_upscale(lowres, self.resolution, key, np.float32(alpha_bar ** 0.5),
                             np.float32((1.0 - alpha_bar) ** 0.5))
    return {"lowres": noised, "noise_level": jnp.full((lowres.shape[0],), int(level), jnp.int32)}


# ---- Loading ------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
  if not path.is_file():
    raise CascadeError(f"{path.parent.parent} has no {path.parent.name}/{path.name} ({what})")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CascadeError(f"{path} is not valid JSON: {e}") from e


def inspect_if_stage(path: str | Path, lowres_resolution: int | None = None) -> IFStage:
  """An `IFStage` of the directory without its weights (params None): its configs read and
  checked, so that a wrong directory fails before any weights are read."""
  path = Path(path)
  if not path.is_dir():
    raise CascadeError(f"DeepFloyd IF stage directory {path} does not exist")
  unet_dir = path / "unet"
  if not (unet_dir / "config.json").is_file():
    raise CascadeError(f"{path} is not a DeepFloyd IF stage directory: it has no "
                       "unet/config.json (expected a diffusers-format download such as "
                       "IF-I-XL-v1.0/ with unet/, scheduler/, tokenizer/, text_encoder/)")
  try:
    cfg = read_if_config(unet_dir)
  except (FileNotFoundError, ValueError) as e:
    raise CascadeError(f"{unet_dir} is not a DeepFloyd IF U-Net we can run: {e}") from e
  if cfg.in_channels == 3 and cfg.class_embed_type is None:
    kind = "stage_I"
  elif cfg.in_channels == 6 and cfg.class_embed_type == "timestep":
    kind = "stage_II"
  else:
    raise CascadeError(f"{unet_dir}: in_channels={cfg.in_channels}, class_embed_type="
                       f"{cfg.class_embed_type!r} is neither IF stage I (3 channels) nor stage "
                       "II (6 channels, class_embed_type='timestep'); IF's stage III is Stable "
                       "Diffusion's x4 upscaler, not supported")
  size = cfg.sample_size
  if isinstance(size, tuple) and len(set(size)) == 1:
    size = size[0]
  if not isinstance(size, int) or size % cfg.downsampling:
    raise CascadeError(f"{unet_dir}/config.json: sample_size={cfg.sample_size!r} must be one "
                       f"size (square images) and a multiple of {cfg.downsampling}")
  raw = _read_json(path / "scheduler" / "scheduler_config.json", "the sampling scheduler")
  try:
    scheduler = from_diffusers_config(raw)
  except ValueError as e:
    raise CascadeError(f"{path}/scheduler/scheduler_config.json: {e}") from e
  if scheduler.learned_variance != (cfg.out_channels == 2 * 3):
    raise CascadeError(f"{path}: the U-Net has {cfg.out_channels} output channels but the "
                       f"scheduler's variance_type is {raw.get('variance_type')!r} (IF: 6 "
                       "channels and 'learned_range')")
  noising = None
  if kind == "stage_II":
    noising_raw = _read_json(path / "image_noising_scheduler" / "scheduler_config.json",
                             "stage II's image-noising scheduler")
    try:
      noising = from_diffusers_config(noising_raw).schedule
    except ValueError as e:
      raise CascadeError(f"{path}/image_noising_scheduler/scheduler_config.json: {e}") from e
  lowres = 0 if kind == "stage_I" else (lowres_resolution or STAGE_II_LOWRES)
  return IFStage(STAGE_NAMES[kind], kind, dataclasses.replace(cfg, sample_size=size), None,
                 scheduler, raw, noising, lowres)


def load_if_stage(path: str | Path, *, dtype: Any = None, compute_dtype: Any = None,
                  shardings: Any = None, mesh: jax.sharding.Mesh | None = None,
                  lowres_resolution: int | None = None) -> IFStage:
  """One IF stage directory as an `IFStage` (without `negative_text`; `load_if_cascade` sets it).

  dtype: the U-Net's parameter dtype ("bfloat16" halves IF-I-XL's 17 GB); compute_dtype: its
  activations'; shardings (or a `mesh` to derive them from the parameters' logical axes): each
  tensor goes onto its devices as it is read (`load_if_unet`). lowres_resolution: stage II's
  input size (default 64, IF-I's output).
  """
  stage = inspect_if_stage(path, lowres_resolution)
  unet_dir = Path(path) / "unet"
  if mesh is not None and shardings is None:
    shardings = if_param_shardings(stage.unet, mesh)
  try:
    cfg, params = load_if_unet(unet_dir, dtype=dtype, shardings=shardings)
  except (FileNotFoundError, ValueError) as e:
    raise CascadeError(f"cannot load the U-Net in {unet_dir}: {e}") from e
  cfg = dataclasses.replace(cfg, sample_size=stage.unet.sample_size)
  if compute_dtype is not None:
    cfg = dataclasses.replace(cfg, dtype=jnp.dtype(compute_dtype).name)
  return dataclasses.replace(stage, unet=cfg, params=params)


def load_if_cascade(stage_I_dir: str | Path, stage_II_dir: str | Path | None = None, *,
                    dtype: Any = None, compute_dtype: Any = None, text_dtype: Any = None,
                    mesh: jax.sharding.Mesh | None = None, workdir: str | Path | None = None,
                    workdir_stages: Sequence[str] | None = None) -> Cascade:
  """DeepFloyd IF's stage I (and stage II) as a `Cascade`: stages "if_I" (e.g. 64 px) and
  "if_II" (e.g. 256 px), the text encoder of the first directory with a `text_encoder/` (stage
  I's, normally). `dtype`/`compute_dtype`/`mesh` apply to the U-Nets (`load_if_stage`),
  `text_dtype` to T5's parameters (default: `dtype`). With `workdir`, its trained
  super-resolution stages (or those named in `workdir_stages`) follow IF's — e.g. a 256 → 1024 stage trained
  on captions encoded by this IF directory (`imagen_jax.cascade.continue_cascade`)."""
  # Every directory's configs first: a wrong one fails before minutes of weight reading.
  first = inspect_if_stage(stage_I_dir)
  if first.kind != "stage_I":
    raise CascadeError(f"{stage_I_dir} holds IF stage II (a super-resolution U-Net); the first "
                       "directory must be a stage I (IF-I-*), the second a stage II")
  dirs = [Path(stage_I_dir)]
  if stage_II_dir is not None:
    second = inspect_if_stage(stage_II_dir, first.resolution)
    if second.kind != "stage_II":
      raise CascadeError(f"{stage_II_dir} holds IF stage I; the second directory must be a "
                         "stage II (IF-II-*)")
    if second.text_dim != first.text_dim:
      raise CascadeError(f"{stage_I_dir} and {stage_II_dir} take text of different widths "
                         f"({first.text_dim}, {second.text_dim})")
    dirs.append(Path(stage_II_dir))
  if workdir is not None:
    continuation_stage_dirs(Path(workdir), workdir_stages, ["if_I", "if_II"][:len(dirs)])
  text_dir = next((d for d in dirs if (d / "text_encoder" / "config.json").is_file()), None)
  if text_dir is None:
    raise CascadeError(f"no text_encoder/ in {', '.join(map(str, dirs))}: IF's T5-v1.1-XXL "
                       "comes with the stage I download")
  encoder = load_if_text_encoder(text_dir, dtype=text_dtype if text_dtype is not None else dtype)
  if encoder.width != first.text_dim:
    raise CascadeError(f"the T5 in {text_dir / 'text_encoder'} is {encoder.width} wide but the "
                       f"U-Nets take {first.text_dim}")
  stages = [load_if_stage(d, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh,
                          lowres_resolution=first.resolution) for d in dirs]
  negative = encoder.null_embedding()[None]  # the pipelines' default negative prompt, ""
  for stage in stages:
    stage.negative_text = negative
  cascade = Cascade(chain_stages(stages), encoder)
  return cascade if workdir is None else continue_cascade(cascade, workdir, workdir_stages)
