"""The shape of a cascade stage's config, shared by configs/base64.py, sr256.py and sr1024.py.

A stage config has these groups (any field overridable with --config.<group>.<field>=...):
  stage, resolution, lowres_resolution (0 for the base), crop_size (0 = whole images)
  model      — `imagen_jax.models.UNetConfig` fields (`UNetConfig.from_dict(config.model)`)
  diffusion  — schedule, prediction, loss weighting, noise-augmentation levels (SR)
  text       — the text encoder and embedding cache (`imagen_jax.text.config.text_config`)
Later issues add `data`, `train`, `sample` groups here.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from imagen_jax.text.config import text_config


def stage_config(*, stage: str, resolution: int, lowres_resolution: int = 0, crop_size: int = 0,
                 model: dict[str, Any], schedule: str, prediction: str = "eps",
                 text_dim: int = 4096) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.resolution = resolution
  config.lowres_resolution = lowres_resolution
  config.crop_size = crop_size

  config.model = ml_collections.ConfigDict(dict(
      width=128, channel_mults=(1, 2, 3, 4), num_res_blocks=(3, 3, 3, 3),
      self_attention=(False, True, True, True), cross_attention=(False, True, True, True),
      efficient=False, attention_style="transformer", attention_per_block=True, head_dim=64,
      ff_mult=2, text_dim=text_dim, cond_dim=512, emb_dim=0, lowres_cond=lowres_resolution > 0,
      out_channels=3, dropout=0.0, attention_impl="reference", dtype="float32",
      param_dtype="float32", remat=False))
  config.model.update(model)

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = schedule  # 'cosine' | 'linear' | 'ddpm_<beta schedule>'
  config.diffusion.prediction = prediction  # 'eps' | 'v' | 'x0'
  config.diffusion.loss_weighting = "none"  # 'none' | 'min_snr'
  config.diffusion.min_snr_gamma = 5.0
  config.diffusion.loss_norm = "l2"
  config.diffusion.p_uncond = 0.1  # text dropped for classifier-free guidance (Imagen: 10%)
  config.diffusion.aug_max_level = 1.0 if lowres_resolution else 0.0  # SR: train levels U[0, max]
  config.diffusion.aug_sample_level = 0.2 if lowres_resolution else 0.0  # SR: fixed at sampling

  config.text = text_config()
  return config
