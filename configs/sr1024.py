"""Imagen's 256→1024 super-resolution stage (paper: 400M parameters).

    imagen-jax train --config configs/sr1024.py --workdir W
    imagen-jax train --config configs/sr1024.py:tiny --workdir W

Efficient U-Net as sr256 (width 128, mults (1, 2, 4, 8), ResBlocks (2, 4, 8, 8)) but without
self-attention: text cross-attention only, once per block at the lowest level, no feed-forward.
Fully convolutional, so it trains on 256×256 crops (with the matching 64×64 low-res crops) and
samples at 1024×1024. 437M parameters (tests/test_unet.py), within 10% of the paper's 400M (+9%:
the paper does not publish the exact block layout; what it does publish is followed). Linear
schedule (Imagen uses it for this stage).
"""

from imagen_jax.stage_config import stage_config, tiny_training


def get_config(arg=None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown sr1024 variant {arg!r}; choose 'tiny' or none")
  model = dict(width=128, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
               self_attention=(False, False, False, False),
               cross_attention=(False, False, False, True), efficient=True,
               attention_style="transformer", attention_per_block=False, ff_mult=0, head_dim=64,
               cond_dim=1024)
  text_dim = 4096
  if arg == "tiny":
    model = dict(width=16, channel_mults=(1, 2, 4, 8), num_res_blocks=(1, 1, 2, 2),
                 self_attention=(False, False, False, False),
                 cross_attention=(False, False, False, True), efficient=True,
                 attention_style="transformer", attention_per_block=False, ff_mult=0,
                 head_dim=32, cond_dim=64)
    text_dim = 64
  config = stage_config(stage="sr1024", resolution=1024, lowres_resolution=256, crop_size=256,
                      model=model, schedule="linear", text_dim=text_dim)
  if arg == "tiny":
    tiny_training(config)
  return config
