"""BENCH-A in Hugging Face diffusers: `UNet2DConditionModel` and its schedulers, used the way its
training script and text-to-image pipelines use them.

    UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3,
        block_out_channels=(64, 128, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=256, attention_head_dim=4)

Levels at 32, 16 and 8 px with 64, 128 and 256 channels; attention (a `Transformer2DModel`:
self-attention, cross-attention to the text, GEGLU feed-forward) at 8×8 only, in the down, middle
and up blocks. `attention_head_dim=4` is, for this model, the number of heads (a historical
misnomer in diffusers): 4 heads of 64 at 256 channels, as ours. The text mask goes in as
`encoder_attention_mask`.

  * train: the loop of diffusers' train_text_to_image.py — `DDPMScheduler(squaredcos_cap_v2)`
    `add_noise` at random integer timesteps, `unet(...).sample`, MSE to the noise, backward,
    `torch.optim.Adam` step, `zero_grad`;
  * forward: `unet(x, t, encoder_hidden_states=..., encoder_attention_mask=...)` under
    `torch.no_grad()`;
  * cfg_step: one iteration of the pipelines' denoising loop — the latents doubled, one U-Net call
    on 32 rows (cond + uncond), the guidance combination, `DDIMScheduler.step`;
  * sample_*: that loop over all timesteps of a `DDIMScheduler` or `DPMSolverMultistepScheduler`
    (`algorithm_type="dpmsolver++"`, order 2) — the pipelines' loop without the VAE and text
    encoder, which BENCH-A does not have. The unconditional branch gets zero embeddings with only
    the first token unmasked (an empty prompt is one end-of-sequence token).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.peers import spec
from benchmarks.peers.flops import torch_flops

UNET_KWARGS = dict(
  sample_size=spec.IMAGE_SIZE, in_channels=3, out_channels=3,
  block_out_channels=tuple(spec.WIDTH * m for m in spec.CHANNEL_MULTS),
  layers_per_block=spec.NUM_RES_BLOCKS,
  down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
  mid_block_type="UNetMidBlock2DCrossAttn",
  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
  cross_attention_dim=spec.TEXT_DIM, attention_head_dim=spec.WIDTH * spec.CHANNEL_MULTS[-1]
  // spec.HEAD_DIM)


def build_unet():
  import torch
  from diffusers import UNet2DConditionModel

  torch.manual_seed(spec.SEED)
  return UNet2DConditionModel(**UNET_KWARGS)


def scheduler(name: str):
  from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

  common = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                prediction_type="epsilon")
  if name == "ddim":
    return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
  if name == "dpmpp_2m":
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
  raise ValueError(f"diffusers: unknown sampler {name!r}")


def build(case: str, **params: Any) -> tuple[Any, dict[str, Any]]:
  import diffusers
  import torch
  import torch.nn.functional as F

  unet = build_unet()
  inputs = spec.make_inputs()
  images = torch.from_numpy(inputs.nchw_images())
  emb, mask = torch.from_numpy(inputs.text), torch.from_numpy(inputs.mask)
  null_emb = torch.zeros_like(emb)
  null_mask = torch.zeros_like(mask)
  null_mask[:, 0] = True
  both_emb, both_mask = torch.cat([emb, null_emb]), torch.cat([mask, null_mask])
  info: dict[str, Any] = {"framework": "diffusers", "diffusers": diffusers.__version__,
                          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "params": sum(p.numel() for p in unet.parameters()),
                          "attention_processor": type(
                              unet.attn_processors[next(iter(unet.attn_processors))]).__name__}

  if case == "train":
    from diffusers import DDPMScheduler

    unet.train()
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.Adam(unet.parameters(), lr=spec.LR)

    def loss_fn():
      noise = torch.randn_like(images)
      t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (spec.BATCH,))
      noisy = noise_scheduler.add_noise(images, noise, t)
      pred = unet(noisy, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
      return F.mse_loss(pred, noise)

    def call():
      loss = loss_fn()
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      return loss

    def counted():
      loss_fn().backward()
      opt.zero_grad(set_to_none=True)

    info.update(flops=torch_flops(counted), what="add_noise, unet, MSE, backward, Adam step")
    return call, info

  unet.eval()
  rng = np.random.default_rng([spec.SEED, 2])
  x = torch.from_numpy(np.ascontiguousarray(
      rng.standard_normal(inputs.images.shape).astype(np.float32).transpose(0, 3, 1, 2)))
  if case == "forward":
    t = torch.full((spec.BATCH,), 500)

    @torch.no_grad()
    def call():
      return unet(x, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample

    info.update(flops=torch_flops(call), what="unet(...).sample under no_grad")
    return call, info

  def guided_step(sched, latents, t):
    model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
    eps = unet(model_in, t, encoder_hidden_states=both_emb, encoder_attention_mask=both_mask).sample
    eps_c, eps_u = eps.chunk(2)
    return sched.step(eps_u + spec.GUIDANCE * (eps_c - eps_u), t, latents).prev_sample

  if case == "cfg_step":
    sched = scheduler("ddim")
    sched.set_timesteps(spec.DIFFUSERS_DEFAULT_STEPS)
    t = sched.timesteps[len(sched.timesteps) // 2]

    @torch.no_grad()
    def call():
      return guided_step(sched, x, t)

    info.update(flops=torch_flops(call), what="cat, unet on 32 rows, guidance, DDIM step")
    return call, info

  if case in ("sample_default", "sample_ours"):
    name, steps = params.get("sampler", "ddim"), int(params.get("steps", 50))
    sched = scheduler(name)
    generator = torch.Generator().manual_seed(spec.SEED)

    @torch.no_grad()
    def call():
      sched.set_timesteps(steps)
      latents = torch.randn(x.shape, generator=generator) * sched.init_noise_sigma
      for t in sched.timesteps:
        latents = guided_step(sched, latents, t)
      return latents

    fresh = scheduler(name)
    fresh.set_timesteps(steps)
    with torch.no_grad():
      step_flops = torch_flops(lambda: guided_step(fresh, x, fresh.timesteps[0]))
    info.update(flops=steps * step_flops, steps=steps, sampler=name,
                what=f"the pipelines' CFG loop, {type(sched).__name__}, {steps} steps")
    return call, info
  raise ValueError(f"diffusers: unknown case {case!r}")
