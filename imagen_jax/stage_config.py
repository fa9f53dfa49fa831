"""The shape of a cascade stage's config, shared by configs/base64.py, sr256.py and sr1024.py.

A stage config has these groups (any field overridable with --config.<group>.<field>=...):
  stage, resolution, lowres_resolution (0 for the base), crop_size (0 = whole images)
  model      — `imagen_jax.models.UNetConfig` fields (`UNetConfig.from_dict(config.model)`)
  diffusion  — schedule, prediction, loss weighting, noise-augmentation levels (SR)
  text       — the text encoder and embedding cache (`imagen_jax.text.config.text_config`)
  data       — the prepared TFDS dataset and split the stage trains on
  train      — batch size, steps, optimiser, EMA, logging and checkpoint intervals
  mesh       — device mesh axes (data, fsdp, tensor; −1 = the rest) and optional logical rules
"""

from __future__ import annotations

from typing import Any

import ml_collections

from imagen_jax.text.config import text_config


def stage_config(*, stage: str, resolution: int, lowres_resolution: int = 0, crop_size: int = 0,
                 model: dict[str, Any], schedule: str, prediction: str = "eps",
                 text_dim: int = 4096, optimizer: str = "adam") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.resolution = resolution
  config.lowres_resolution = lowres_resolution
  config.crop_size = crop_size

  config.model = ml_collections.ConfigDict(dict(
      width=128, channel_mults=(1, 2, 3, 4), num_res_blocks=(3, 3, 3, 3),
      self_attention=(False, True, True, True), cross_attention=(False, True, True, True),
      efficient=False, attention_style="transformer", attention_per_block=True, head_dim=64,
      ff_mult=2, text_dim=text_dim, cond_dim=512, text_positions=False, text_layers=0,
      image_positions=False, emb_dim=0,
      lowres_cond=lowres_resolution > 0, lowres_residual=False, out_channels=3, dropout=0.0,
      norm_groups=32,
      attention_impl="reference", dtype="float32", param_dtype="float32", remat=False))
  config.model.update(model)

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = schedule  # 'cosine' | 'linear' | 'ddpm_<beta schedule>'
  config.diffusion.logsnr_shift = 0.0  # cosine only: simple diffusion's shift (< 0: more noise)
  config.diffusion.prediction = prediction  # 'eps' | 'v' | 'x0'
  config.diffusion.loss_weighting = "none"  # 'none' | 'min_snr'
  config.diffusion.min_snr_gamma = 5.0
  config.diffusion.loss_norm = "l2"
  config.diffusion.high_noise_fraction = 0.0  # share of each batch at t ~ U[high_noise_from, 1)
  config.diffusion.high_noise_from = 0.85
  config.diffusion.high_noise_weight = 0.0  # floor on the loss weight where SNR < 1
  config.diffusion.p_uncond = 0.1  # text dropped for classifier-free guidance (Imagen: 10%)
  config.diffusion.aug_max_level = 1.0 if lowres_resolution else 0.0  # SR: train levels U[0, max]
  config.diffusion.aug_sample_level = 0.2 if lowres_resolution else 0.0  # SR: fixed at sampling

  config.text = text_config()

  config.data = ml_collections.ConfigDict()
  config.data.dataset = ""  # prepared TFDS dir ('tfds:' prefix optional) or '<name>@<data_dir>'
  config.data.split = "train"
  config.data.num_threads = 2
  config.data.simulate_hosts = 0  # >1: reproduce that many hosts' batches in one process

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 2048  # global, over all hosts (Imagen: 2048)
  config.train.num_steps = 2_500_000
  config.train.optimizer = optimizer  # Imagen: Adafactor (base), Adam (SR)
  config.train.lr = 1e-4
  config.train.warmup_steps = 10_000
  config.train.lr_schedule = "constant"  # 'constant' | 'cosine'
  config.train.grad_clip = 1.0
  config.train.weight_decay = 0.0
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = True  # decay min(ema_decay, (1+t)/(10+t)): forget the initial weights
  config.train.seed = 0
  config.train.log_every = 100
  config.train.checkpoint_every = 5000
  config.train.keep_checkpoints = 3
  config.train.max_nonfinite_run = 10  # consecutive skipped updates that stop the run
  config.train.sample_every = 0  # sample grids of the EMA model every N steps (0: never)
  config.train.num_samples = 8
  config.train.sample_steps = 25  # DPM-Solver++ steps for those grids
  config.train.guidance_weight = 3.0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.num_devices = 0  # 0: every device; N: only the first N (e.g. 1 for small CPU runs)
  return config


def tiny_training(config: ml_collections.ConfigDict) -> None:
  """CPU-sized training settings shared by the `tiny` variants (tests, the demo)."""
  config.train.batch_size = 8
  config.train.num_steps = 200
  config.train.optimizer = "adam"
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.ema_decay = 0.99
  config.train.log_every = 10
  config.train.checkpoint_every = 100
  config.train.sample_every = 0
  config.text.max_length = 48  # shapes captions run to ~40 tokens with the tiny tokenizer
