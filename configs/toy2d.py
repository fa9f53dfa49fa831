"""The diffusion core on a class-conditional 2-D toy problem (what `make demo` runs for now).

A mixture of Gaussian modes on a circle, one class per mode; a small MLP denoiser trained with
classifier-free label dropout, then sampled with every sampler at several guidance weights.

    imagen-jax demo --config configs/toy2d.py --workdir demo_out/
    imagen-jax demo --config configs/toy2d.py:tiny --config.train.steps=500

Variants: none (default; ~40 s in all on 2 CPU cores), 'tiny' (~15 s, mostly compiling; tests).
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The toy config; `arg` selects a variant ('tiny' or None)."""
  config = ml_collections.ConfigDict()
  config.schedule = "cosine"

  config.data = ml_collections.ConfigDict()
  config.data.num_modes = 4  # classes; the null (unconditional) label is index num_modes
  config.data.radius = 0.5  # mode centres on a circle of this radius
  config.data.std = 0.2  # per coordinate; modes overlap: ~92% lie nearest their own centre
  config.data.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.width = 128
  config.model.depth = 3  # residual MLP blocks

  config.loss = ml_collections.ConfigDict()
  config.loss.prediction = "eps"  # 'eps' | 'v' | 'x0'
  config.loss.weighting = "none"  # 'none' | 'min_snr'
  config.loss.min_snr_gamma = 5.0
  config.loss.norm = "l2"  # 'l2' | 'l1'
  config.loss.time_sampling = "stratified"  # 'uniform' | 'stratified'

  config.train = ml_collections.ConfigDict()
  config.train.steps = 3000
  config.train.batch_size = 512
  config.train.lr = 2e-3
  config.train.warmup_steps = 100
  config.train.ema_decay = 0.995  # 0 disables EMA; sampling uses the EMA parameters
  config.train.p_uncond = 0.1  # label dropped to the null label (classifier-free guidance)
  config.train.log_every = 250
  config.train.seed = 0

  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 2000
  config.sample.guidance_weights = (0.0, 1.0, 3.0)  # 0 = unconditional, 1 = no guidance
  config.sample.samplers = ("ddpm:250", "ddim:50", "dpmpp_2m:20")  # 'name:num_steps'
  # 'none' | 'static' | 'dynamic'. ε-prediction at λ_min = −20 turns an ε̂ error δ into an x̂₀ error
  # δ/α ≈ 2·10⁴·δ: unthresholded ε-samplers diverge (try 'none'); Imagen thresholds, so do we.
  config.sample.thresholding = "static"
  config.sample.seed = 1

  config.analytic = ml_collections.ConfigDict()  # exact ε-predictor of one Gaussian N(mean, std²)
  config.analytic.mean = (0.3, -0.2)
  config.analytic.std = 0.5
  config.analytic.num_samples = 20000  # cheap (no network), so many: small statistical error

  if arg == "tiny":
    config.model.width = 64
    config.model.depth = 2
    config.train.steps = 200
    config.train.batch_size = 256
    config.train.lr = 3e-3
    config.train.warmup_steps = 20
    config.train.ema_decay = 0.0
    config.train.log_every = 25
    config.sample.num_samples = 256
    config.sample.samplers = ("ddpm:50", "ddim:20", "dpmpp_2m:10")
  elif arg not in (None, ""):
    raise ValueError(f"unknown toy2d variant {arg!r}; choose 'tiny' or none")
  return config
