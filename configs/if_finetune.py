"""Fine-tune a DeepFloyd IF stage on a prepared dataset (train/if_finetune.py).

    imagen-jax encode --config configs/text.py --workdir W --config.data.captions=tfds:D \\
        --config.text.encoder=IF-I-XL-v1.0 --config.text.max_length=77
    imagen-jax train --config configs/if_finetune.py:I --workdir W --init-from IF-I-XL-v1.0 \\
        --config.data.dataset=D
    imagen-jax train --config configs/if_finetune.py:II --workdir W --init-from IF-II-L-v1.0 \\
        --config.data.dataset=D --config.text.encoder=IF-I-XL-v1.0
    imagen-jax sample --workdir W --prompt "..."

The argument is the stage: 'I' (64 px base, stage "if_I") or 'II' (64 → 256 px, stage "if_II");
'I,tiny' / 'II,tiny' are CPU-sized runs (tests). The U-Net, its schedule and stage II's noising
come from the IF directory (`--init-from`, saved as `init_from`); the model group only sets how it
runs. `text.encoder` defaults to the `init_from` directory when it has a `text_encoder/` (stage
I's downloads do); a stage II fine-tune names stage I's directory, whose T5 encoded the captions.

Defaults are a conservative full fine-tune: AdamW at 1e-6 after 100 warm-up steps, clipping at
1.0, 10% text dropout, EMA 0.999 with warm-up, float32 master weights with bfloat16 compute and
remat. diffusers' DreamBooth guide fine-tunes the full IF-I-XL at 1e-7 on a handful of images and
warns that higher rates degrade it; 1e-6 assumes a dataset — lower it for a few
images. Unlike diffusers' scripts, which train ε only and switch the fine-tuned model to a fixed
variance, the learned-range variance is trained too (IF's own hybrid objective), so the stage
keeps IF's schedulers. IF-I-XL's 4.3B parameters with EMA and Adam's two moments take 69 GB in
float32: shard them over the slice with the fsdp axis (see `imagen-jax plan`).
"""

import ml_collections

from imagen_jax.text.config import text_config

STAGES = {"I": dict(stage="if_I", resolution=64, lowres_resolution=0),
          "II": dict(stage="if_II", resolution=256, lowres_resolution=64)}


def get_config(arg: str = "I"):
  parts = [p.strip() for p in (arg or "I").split(",") if p.strip()]
  which = parts[0] if parts else "I"
  if which not in STAGES or any(p != "tiny" for p in parts[1:]):
    raise ValueError(f"configs/if_finetune.py takes 'I' or 'II' (optionally ',tiny'), got {arg!r}")
  config = ml_collections.ConfigDict()
  config.update(STAGES[which])
  config.crop_size = 0
  config.init_from = ""  # the IF directory whose weights start the run (--init-from)

  config.model = ml_collections.ConfigDict(dict(
      kind="deepfloyd_if", text_dim=4096, dtype="bfloat16", param_dtype="float32", remat=True,
      attention_impl="reference"))

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.p_uncond = 0.1  # text replaced by the encoding of "" (IF's unconditional)
  config.diffusion.aug_max_level = 1.0 if which == "II" else 0.0  # II: levels U{0 … max·1000}

  config.text = text_config()
  config.text.max_length = 77  # IF's U-Nets were trained on 77 T5 tokens

  config.data = ml_collections.ConfigDict()
  config.data.dataset = ""
  config.data.split = "train"
  config.data.num_threads = 2
  config.data.simulate_hosts = 0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8  # fits a v5e-8 with fsdp=8 (benchmarks/RESULTS.md)
  config.train.num_steps = 2000
  config.train.optimizer = "adamw"
  config.train.lr = 1e-6
  config.train.warmup_steps = 100
  config.train.lr_schedule = "constant"
  config.train.grad_clip = 1.0
  config.train.weight_decay = 1e-2
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True
  config.train.seed = 0
  config.train.log_every = 10
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.max_nonfinite_run = 10
  # N > 0: every N steps a grid of num_samples samples for the batch's captions, drawn as
  # `imagen-jax sample --workdir` draws the stage (IF's scheduler, sample_steps steps)
  config.train.sample_every = 0
  config.train.num_samples = 8
  config.train.sample_steps = 25
  config.train.guidance_weight = 7.0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.num_devices = 0

  if "tiny" in parts[1:]:
    config.resolution = 16 if which == "I" else 32
    config.lowres_resolution = 0 if which == "I" else 16
    config.model.update(text_dim=32, dtype="float32", remat=False)
    config.train.update(batch_size=4, num_steps=20, lr=1e-3, warmup_steps=0, log_every=1,
                        checkpoint_every=5, ema_decay=0.99)
    config.data.num_threads = 0
    config.mesh.num_devices = 1
  return config
