"""BENCH-A (issue 9): the shared problem every framework runs, and the cases measured on it.

A text-conditioned U-Net at 32×32×3: width 64, channel multipliers (1, 2, 4) (32, 16 and 8 px),
2 ResBlocks per level, self- and cross-attention only at 8×8, text 16 tokens × 256 dims with a
mask, batch 16, float32. Inputs are generated here with numpy from one seed, so every framework
gets the same numbers (NHWC for ours, NCHW for the PyTorch peers).

Nothing in this module imports jax or torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

IMAGE_SIZE = 32
CHANNELS = 3
WIDTH = 64
CHANNEL_MULTS = (1, 2, 4)
NUM_RES_BLOCKS = 2
ATTENTION_LEVELS = (False, False, True)  # attention at 8×8 only
HEAD_DIM = 64
TEXT_LEN = 16
TEXT_DIM = 256
BATCH = 16
GUIDANCE = 5.0  # classifier-free guidance weight w (ŷ = ŷ_u + w·(ŷ_c − ŷ_u)) in every sampler
LR = 1e-4  # Adam's learning rate in every train step
SEED = 0

# Sampling step counts. imagen-pytorch: `Imagen(timesteps=1000)` is its default, with its only
# sampler (ancestral DDPM on continuous cosine times). diffusers: its text-to-image pipelines
# default to `num_inference_steps=50`; the harness uses DDIM (η = 0) there. Ours: 25 steps of
# DPM-Solver++(2M), the project's default sampler.
IMAGEN_DEFAULT_STEPS = 1000
DIFFUSERS_DEFAULT_STEPS = 50
OURS_DEFAULT_STEPS = 25

# The embedding-cache case: the embedded tiny T5 (imagen_jax.text.default.TINY_T5, width 64), and
# a random encoder with t5-v1_1-base's blocks (12 layers, d_model 768, 12 heads, gated GELU; the
# tiny tokenizer's 512-token vocabulary) — the smallest real T5 shape, for a sense of scale
# (Imagen's T5-XXL encoder is ~44× its block parameters).
CACHE_CAPTIONS = 512
CACHE_T5 = {"tiny": {}, "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                                     num_heads=12)}


@dataclasses.dataclass(frozen=True)
class Inputs:
  """One BENCH-A batch: images in [−1, 1] (B, H, W, C), text (B, L, D) zero on padding, mask."""

  images: np.ndarray
  text: np.ndarray
  mask: np.ndarray

  def nchw_images(self) -> np.ndarray:
    return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2))


def text_lengths(batch: int = BATCH, text_len: int = TEXT_LEN, seed: int = SEED) -> np.ndarray:
  """Real tokens per prompt, between 1 and `text_len` (T5 masks are prefixes)."""
  return np.random.default_rng([seed, 1]).integers(1, text_len + 1, batch)


def make_inputs(batch: int = BATCH, image_size: int = IMAGE_SIZE, text_len: int = TEXT_LEN,
                text_dim: int = TEXT_DIM, seed: int = SEED) -> Inputs:
  rng = np.random.default_rng([seed, 0])
  images = rng.uniform(-1.0, 1.0, (batch, image_size, image_size, CHANNELS)).astype(np.float32)
  mask = np.arange(text_len)[None, :] < text_lengths(batch, text_len, seed)[:, None]
  text = rng.standard_normal((batch, text_len, text_dim)).astype(np.float32) * mask[..., None]
  return Inputs(images, text.astype(np.float32), mask)


# Our two U-Net layouts at BENCH-A's sizes. 'adm' (the default, `efficient=False`): 2 ResBlocks
# per level going down, 3 going up (each taking a skip), a middle block — the block structure of
# diffusers' UNet2DConditionModel, so the like-for-like comparison. 'efficient' (Imagen App. B.1,
# `efficient=True`): 2 ResBlocks per level down and up, no middle block — Imagen's own U-Net for
# its SR stages, measured as a second entry of ours, never in place of the first.
LAYOUTS = ("adm", "efficient")


def bench_a_unet_config(text_dim: int = TEXT_DIM, layout: str = "adm", **overrides: Any
                        ) -> dict[str, Any]:
  """Our `UNetConfig` fields for BENCH-A (a plain dict: this module does not import jax).

  cond_dim = text_dim: the text enters cross-attention at its own width, as in diffusers
  (cross_attention_dim = 256); the transformer-style attention block (self-attention,
  cross-attention, feed-forward ×2) is the closest to diffusers' `Transformer2DModel` and to
  imagen-pytorch's attention at the same level.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
  levels = len(CHANNEL_MULTS)
  config = dict(width=WIDTH, channel_mults=CHANNEL_MULTS, num_res_blocks=(NUM_RES_BLOCKS,) * levels,
                self_attention=ATTENTION_LEVELS, cross_attention=ATTENTION_LEVELS,
                efficient=layout == "efficient",
                attention_style="transformer", attention_per_block=True, head_dim=HEAD_DIM,
                ff_mult=2, text_dim=text_dim, cond_dim=text_dim, dtype="float32",
                param_dtype="float32")
  config.update(overrides)
  return config


# --- cases --------------------------------------------------------------------------------------

# case → (what one call does, default timed calls per repetition)
CASES: dict[str, tuple[str, int]] = {
  "roof": ("one 4096×4096×4096 fp32 matmul (2·n³ FLOPs)", 3),
  "train": ("one training step: loss + backward + Adam update, batch 16", 2),
  "forward": ("one denoiser forward, batch 16, no gradients", 3),
  "cfg_step": ("one classifier-free guided sampling step (cond + uncond), 16 images", 2),
  "sample_default": ("a full guided 16-image sample at the peer's default step count", 1),
  "sample_ours": (f"a full guided 16-image sample at {OURS_DEFAULT_STEPS} steps", 1),
  "cache": ("one training step (tiny-T5 width) with text from the cache vs encoded on the fly", 2),
}
DEFAULT_CASES = ("roof", "train", "forward", "cfg_step", "sample_ours", "sample_default", "cache")
FRAMEWORKS = ("ours", "imagen-pytorch", "diffusers")
ROOF_FRAMEWORKS = ("numpy", "jax", "torch")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One measured thing: a framework running a case with some parameters, in its own process."""

  label: str
  framework: str  # ours | imagen-pytorch | diffusers | numpy | jax | torch
  case: str
  params: tuple[tuple[str, Any], ...] = ()

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(self.params)

  def to_json(self) -> dict[str, Any]:
    return {"label": self.label, "framework": self.framework, "case": self.case,
            "params": dict(self.params)}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Entry:
    return cls(d["label"], d["framework"], d["case"], tuple(sorted(d["params"].items())))


@dataclasses.dataclass(frozen=True)
class Group:
  """Entries measured against each other, alternating; ratios are against `entries[0]`."""

  name: str
  case: str
  entries: tuple[Entry, ...]


def _e(label: str, framework: str, case: str, **params: Any) -> Entry:
  return Entry(label, framework, case, tuple(sorted(params.items())))


def build_groups(cases: list[str], peers: list[str], steps: dict[str, int] | None = None
                 ) -> list[Group]:
  """The groups of the run. `steps` overrides the full-sample step counts: keys 'imagen-pytorch',
  'diffusers' (their defaults) and 'ours' (ours), for quick runs."""
  steps = {"imagen-pytorch": IMAGEN_DEFAULT_STEPS, "diffusers": DIFFUSERS_DEFAULT_STEPS,
           "ours": OURS_DEFAULT_STEPS, **(steps or {})}
  groups = []
  for case in cases:
    if case not in CASES:
      raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")
    if case == "roof":
      groups.append(Group("fp32 matmul roof", case, tuple(
          _e(f"{fw} matmul", fw, case) for fw in ROOF_FRAMEWORKS)))
    elif case in ("train", "forward", "cfg_step"):
      groups.append(Group(case, case, (
          _e("ours", "ours", case),
          _e("ours, Efficient U-Net", "ours", case, layout="efficient")) + tuple(
          _e(p, p, case) for p in peers)))
    elif case == "sample_default":
      n_ip, n_df = steps["imagen-pytorch"], steps["diffusers"]
      if "imagen-pytorch" in peers:
        groups.append(Group(f"sample, imagen-pytorch default ({n_ip} DDPM steps)", case, (
            _e(f"ours ddpm {n_ip}", "ours", case, sampler="ddpm", steps=n_ip),
            _e(f"imagen-pytorch ddpm {n_ip}", "imagen-pytorch", case, steps=n_ip))))
      if "diffusers" in peers:
        groups.append(Group(f"sample, diffusers default ({n_df} DDIM steps)", case, (
            _e(f"ours ddim {n_df}", "ours", case, sampler="ddim", steps=n_df),
            _e(f"diffusers ddim {n_df}", "diffusers", case, sampler="ddim", steps=n_df))))
    elif case == "sample_ours":
      n = steps["ours"]
      entries = [_e(f"ours dpm++2m {n}", "ours", case, sampler="dpmpp_2m", steps=n),
                 _e(f"ours, Efficient U-Net, dpm++2m {n}", "ours", case, sampler="dpmpp_2m",
                    steps=n, layout="efficient")]
      if "diffusers" in peers:
        entries.append(_e(f"diffusers dpm++2m {n}", "diffusers", case, sampler="dpmpp_2m", steps=n))
      if "imagen-pytorch" in peers:  # its only sampler is ancestral DDPM
        entries.append(_e(f"imagen-pytorch ddpm {n}", "imagen-pytorch", case, steps=n))
      groups.append(Group(f"sample, ours ({n} steps)", case, tuple(entries)))
    elif case == "cache":
      groups.append(Group("embedding cache (tiny T5, text_dim 64)", case, (
          _e("ours, text from cache", "ours", case, text="cache"),
          _e("ours, T5 on the fly", "ours", case, text="on_the_fly"))))
      groups.append(Group("embedding cache (T5-base-sized encoder, text_dim 768)", case, (
          _e("ours, text from cache", "ours", case, text="cache", t5="base"),
          _e("ours, T5 on the fly", "ours", case, text="on_the_fly", t5="base"))))
  return groups
