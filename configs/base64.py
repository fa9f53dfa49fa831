"""Imagen's 64×64 base stage: text → 64×64 image (paper: 2B parameters).

    imagen-jax train --config configs/base64.py --workdir W          # paper scale
    imagen-jax train --config configs/base64.py:tiny --workdir W     # CPU / tests

Base U-Net (Imagen App. B; DESIGN.md §1): width 512, channel multipliers (1, 2, 3, 4), 3 ResBlocks
per level, attention at 32, 16 and 8 px with head dim 64. Its attention is GLIDE/ADM-style: the
image tokens attend to themselves and to the projected T5 tokens in one softmax ('joint'), with no
feed-forward. That layout gives 2.12B parameters (tests/test_unet.py), within 6% of the paper's 2B.
Cosine schedule, ε-prediction.
"""

from imagen_jax.stage_config import stage_config, tiny_training


def get_config(arg=None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown base64 variant {arg!r}; choose 'tiny' or none")
  model = dict(width=512, channel_mults=(1, 2, 3, 4), num_res_blocks=(3, 3, 3, 3),
               self_attention=(False, True, True, True), cross_attention=(False, True, True, True),
               attention_style="joint", ff_mult=0, head_dim=64, cond_dim=2048)
  text_dim = 4096  # T5-XXL
  if arg == "tiny":  # 3.0M parameters, for the CPU demo and tests
    model = dict(width=32, channel_mults=(1, 2, 4), num_res_blocks=(1, 1, 1),
                 self_attention=(False, True, True), cross_attention=(False, True, True),
                 attention_style="joint", ff_mult=0, head_dim=32, cond_dim=64)
    text_dim = 64  # the embedded tiny T5
  config = stage_config(stage="base64", resolution=64, model=model, schedule="cosine",
                        text_dim=text_dim, optimizer="adafactor")
  if arg == "tiny":
    tiny_training(config)
  return config
