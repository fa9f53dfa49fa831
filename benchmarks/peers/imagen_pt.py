"""BENCH-A in lucidrains' imagen-pytorch (2.1.0): its `Unet` inside its `Imagen`, its own code paths.

    Unet(dim=64, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, False, True),
         layer_cross_attns=(False, False, True), text_embed_dim=256)      # all else its defaults
    Imagen(unets=unet, image_sizes=32, text_embed_dim=256, timesteps=<steps>)  # cosine, ε, cfg 0.1

With dim_mults (1, 2, 4) the levels run at 32, 16 and 8 px, so attention (self: TransformerBlock;
cross: in the level's first ResnetBlock) is at 8×8 only, plus the middle block's. Everything else
is imagen-pytorch's default architecture (cross-embed input conv, global-context attention in the
ResnetBlocks, a Perceiver resampler pooling the text, 8 heads × 64, cond_dim = dim), which is what
its users get; the parameter and FLOP counts in the table say what that costs.

  * train: `loss = imagen(images, text_embeds=..., text_masks=..., unet_number=1)` (its p_losses:
    random times, text dropout 0.1, min-SNR weighting), `loss.backward()`, `torch.optim.Adam`
    step, `zero_grad` — the loop its README shows, without ImagenTrainer's accelerate/EMA wrapper;
  * forward: `unet(x, log_snr(t), text_embeds=..., text_mask=...)` under `torch.no_grad()`;
  * cfg_step: `imagen.p_sample(..., cond_scale=5)`, one step of its sampling loop: two U-Net calls
    (cond, then null; `forward_with_cond_scale`), dynamic thresholding, the ancestral update;
  * sample_*: `imagen.sample(text_embeds=..., text_masks=..., cond_scale=5)` with
    `Imagen(timesteps=steps)` (its default is 1000).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.peers import spec
from benchmarks.peers.flops import torch_flops


def build_imagen(timesteps: int = spec.IMAGEN_DEFAULT_STEPS):
  from benchmarks.peers.peer_env import import_imagen_pytorch

  imagen_pytorch, stand_in = import_imagen_pytorch()
  import torch

  torch.manual_seed(spec.SEED)
  levels = len(spec.CHANNEL_MULTS)
  unet = imagen_pytorch.Unet(dim=spec.WIDTH, dim_mults=spec.CHANNEL_MULTS,
                             num_resnet_blocks=spec.NUM_RES_BLOCKS,
                             layer_attns=spec.ATTENTION_LEVELS,
                             layer_cross_attns=spec.ATTENTION_LEVELS, text_embed_dim=spec.TEXT_DIM)
  assert len(spec.ATTENTION_LEVELS) == levels
  imagen = imagen_pytorch.Imagen(unets=unet, image_sizes=spec.IMAGE_SIZE,
                                 text_embed_dim=spec.TEXT_DIM, timesteps=timesteps)
  return imagen, imagen_pytorch.__version__, stand_in


def build(case: str, **params: Any) -> tuple[Any, dict[str, Any]]:
  steps = int(params.get("steps", spec.IMAGEN_DEFAULT_STEPS))
  imagen, version, stand_in = build_imagen(steps)
  import torch

  unet = imagen.unets[0]
  inputs = spec.make_inputs()
  images01 = torch.from_numpy((inputs.nchw_images() + 1.0) / 2.0)  # it normalises [0, 1] itself
  emb, mask = torch.from_numpy(inputs.text), torch.from_numpy(inputs.mask)
  info: dict[str, Any] = {
    "framework": "imagen-pytorch", "imagen_pytorch": version,
    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    "torchvision": "stand-in" if stand_in else "real",
    "params": sum(p.numel() for p in unet.parameters())}
  ns = imagen.noise_schedulers[0]

  if case == "train":
    imagen.train()
    opt = torch.optim.Adam(unet.parameters(), lr=spec.LR)

    def call():
      loss = imagen(images01, text_embeds=emb, text_masks=mask, unet_number=1)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      return loss

    def counted():  # the same work, without the update (FlopCounterMode ignores it anyway)
      imagen(images01, text_embeds=emb, text_masks=mask, unet_number=1).backward()
      opt.zero_grad(set_to_none=True)

    info.update(flops=torch_flops(counted), what="imagen(...) loss, backward, Adam step")
    return call, info

  imagen.eval()
  rng = np.random.default_rng([spec.SEED, 2])
  x = torch.from_numpy(np.ascontiguousarray(
      rng.standard_normal(inputs.images.shape).astype(np.float32).transpose(0, 3, 1, 2)))
  if case == "forward":
    t = torch.full((spec.BATCH,), 0.5)

    @torch.no_grad()
    def call():
      return unet(x, ns.get_condition(t), text_embeds=emb, text_mask=mask)

    info.update(flops=torch_flops(call), what="unet(x, log_snr, text) under no_grad")
    return call, info

  def one_step():
    t = torch.full((spec.BATCH,), 0.5)
    return imagen.p_sample(unet, x, t, t_next=t - 1.0 / ns.num_timesteps, noise_scheduler=ns,
                           text_embeds=emb, text_mask=mask, cond_scale=spec.GUIDANCE,
                           cfg_remove_parallel_component=True, pred_objective="noise",
                           dynamic_threshold=True)

  step_flops = torch_flops(one_step)
  if case == "cfg_step":
    info.update(flops=step_flops, what="imagen.p_sample(cond_scale=5): 2 unet calls + update")
    return one_step, info
  if case in ("sample_default", "sample_ours"):
    def call():
      return imagen.sample(text_embeds=emb, text_masks=mask, cond_scale=spec.GUIDANCE,
                           use_tqdm=False)

    info.update(flops=steps * step_flops, steps=steps, sampler="ddpm",
                what=f"imagen.sample(cond_scale=5), Imagen(timesteps={steps})")
    return call, info
  raise ValueError(f"imagen-pytorch: unknown case {case!r}")
