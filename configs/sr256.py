"""Imagen's 64→256 super-resolution stage (paper: 600M parameters).

    imagen-jax train --config configs/sr256.py --workdir W
    imagen-jax train --config configs/sr256.py:tiny --workdir W

Efficient U-Net (Imagen App. B.1): width 128, channel multipliers (1, 2, 4, 8), ResBlocks
(2, 4, 8, 8) — more at low resolution —, skips scaled by 1/√2, downsampling before and upsampling
after each block's convolutions. Self- and cross-attention (with a feed-forward) after every ResBlock
of the lowest level (32 px for 256 px inputs). 631M parameters (tests/test_unet.py), within 6% of
the paper's 600M. Cosine schedule; noise conditioning augmentation of the 64 px input.
"""

from imagen_jax.stage_config import stage_config, tiny_training


def get_config(arg=None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown sr256 variant {arg!r}; choose 'tiny' or none")
  model = dict(width=128, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
               self_attention=(False, False, False, True),
               cross_attention=(False, False, False, True), efficient=True,
               attention_style="transformer", ff_mult=2, head_dim=64, cond_dim=1024)
  text_dim = 4096
  if arg == "tiny":
    model = dict(width=16, channel_mults=(1, 2, 4, 8), num_res_blocks=(1, 1, 2, 2),
                 self_attention=(False, False, False, True),
                 cross_attention=(False, False, False, True), efficient=True,
                 attention_style="transformer", ff_mult=2, head_dim=32, cond_dim=64)
    text_dim = 64
  config = stage_config(stage="sr256", resolution=256, lowres_resolution=64, model=model,
                      schedule="cosine", text_dim=text_dim)
  if arg == "tiny":
    tiny_training(config)
  return config
