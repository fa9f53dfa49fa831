"""The end-to-end demo on this CPU (`make demo`, `imagen-jax demo`): shapes data → tiny T5 →
cache → tiny base stage (text → 32 px) + tiny SR stage (32 → 64 px) → sample grid → evaluation.

    imagen-jax demo                                   # ≤ 14 min on 2 cores: base steps sized to them
    imagen-jax demo --config configs/demo.py:quick    # a smoke run (≈ 3 min; tests)
    imagen-jax demo --config.base.train.num_steps=2800 --workdir W   # a fixed count instead

Re-running with the same workdir reuses the dataset, cache and checkpoints (training resumes and
stops at the configured step count).
"""

import ml_collections

from imagen_jax.data import shapes_scene


def get_config(arg=None):
  if arg not in (None, "", "quick"):
    raise ValueError(f"unknown demo variant {arg!r}; choose 'quick' or none")
  config = ml_collections.ConfigDict()
  config.progress = True
  config.text_max_length = 16  # the longest shapes caption: 12 words, one token each, and </s>
  # Pretraining of the embedded tiny T5 on the captions' language, text only (no image; see
  # imagen_jax/text/pretrain.py), the way Imagen's T5 knows its language before the U-Net
  # trains: each token learns what its word belongs to — where its object is and that object's
  # colour, shape and size ("words"; "reading": name the objects, left/top first). ≈ 11 s.
  # Measured (RESULTS issue 17 §16): the demo's final one-object all-attributes 0.59 → 0.82,
  # relation 0.19 → 0.26 (chance: the demo's recipe learns no positions); with the high-noise
  # band the toy of two squares learns the relation's direction in both seeds tried (0.595 →
  # 0.965 / 0.975 in 4000 steps). steps 0: the random T5 as it is built.
  config.text_pretrain = ml_collections.ConfigDict()
  config.text_pretrain.steps = 600
  config.text_pretrain.batch_size = 64
  config.text_pretrain.lr = 1e-3
  config.text_pretrain.seed = 0  # the heads' initial weights
  config.text_pretrain.data_seed = -1  # the training captions' draw (-1: `seed`)
  config.text_pretrain.objective = "words"  # or "reading": imagen_jax.text.pretrain
  config.text_pretrain.paired = False  # each batch: half drawn, half those said the other way

  config.data = ml_collections.ConfigDict()
  config.data.resolution = 64
  config.data.num_train = 4000
  config.data.num_test = 200
  config.data.seed = 0
  # What the scenes may hold (research variants; the demo uses every shape and size, and 60% of
  # its scenes have two objects), e.g. `--demo data.p_two=1 --demo "data.shapes=('square',)"`
  # for scenes that differ only in colours and the relation (benchmarks/RESULTS.md, issue 17).
  config.data.p_two = 0.6
  config.data.shapes = shapes_scene.SHAPES
  config.data.sizes = shapes_scene.SIZE_NAMES
  config.data.relations = shapes_scene.RELATIONS
  config.data.relation_weights = (1.0, 1.0, 1.0, 1.0)  # how often each is drawn

  # Overrides of configs/base64.py:tiny and configs/sr256.py:tiny (any of their fields), chosen
  # by the measured ablations in benchmarks/RESULTS.md (issue 17; `python -m benchmarks.ablate`
  # reruns any of them, `python -m benchmarks.diagnose` prints the one-step denoising errors):
  # * base: v-prediction (with minutes of training an ε-model never learns the image prior at
  #   high noise); Imagen's Efficient U-Net layout; Min-SNR-5 loss weighting; a cosine
  #   learning-rate decay. Transformer-style attention blocks (cross-attention to the text in
  #   its own softmax, not joined with self-attention as ADM/Imagen do) and self-attention only
  #   at 8 px: with the joint softmax the 64 image tokens outvote the ~6 text tokens and the
  #   stage learns colour but not shape (shape 0.19 → 0.27 at equal steps, and the step is
  #   25% cheaper). Many small steps beat fewer large ones here: batch 8 at lr 2e-3 (shape
  #   0.53 at batch 16 / 2000 steps → 0.63 at batch 8 / 4000, same minutes). The attention
  #   blocks see where each pixel is and one trainable layer reads the text (`image_positions`,
  #   `text_layers`): where an object goes depends on where its words put it. The step count
  #   is left to the time budget below (`num_steps: 0`).
  # * SR: `lowres_residual` — the U-Net predicts x₀ as a correction added to its bilinearly
  #   upsampled input, so the stage starts as an upsampler and spends its steps on the detail
  #   (PSNR 23.5 → 37.1 dB at 1500 steps, 33.3 dB at 600; bicubic 28.4). Trained on 32 px
  #   crops (¼ of the pixels: 4× the steps in the same minutes) with no self-attention, so the
  #   U-Net is fully convolutional and what it learns on crops holds on whole images (as
  #   Imagen trains its 256→1024 stage); noise augmentation of the low-res input at levels
  #   U[0, 0.1] — at U[0, 0.5] most training inputs were noise and the stage learnt to ignore
  #   them; x₀-prediction, whose samples have flat colours and crisp edges.
  config.base = ml_collections.ConfigDict({
      "resolution": 32,
      "model": {"efficient": True, "attention_style": "transformer", "ff_mult": 0,
                "self_attention": (False, False, True), "image_positions": True,
                "text_layers": 1},
      "diffusion": {"prediction": "v", "loss_weighting": "min_snr"},
      "train": {"num_steps": 0, "batch_size": 8, "lr": 2e-3, "warmup_steps": 50,
                "lr_schedule": "cosine", "log_every": 50, "checkpoint_every": 500,
                "ema_decay": 0.995},
  })
  config.sr = ml_collections.ConfigDict({
      "resolution": 64, "lowres_resolution": 32, "crop_size": 32,
      "model": {"self_attention": (False, False, False, False), "lowres_residual": True},
      "diffusion": {"prediction": "x0", "aug_max_level": 0.1, "aug_sample_level": 0.0},
      "train": {"num_steps": 400, "batch_size": 8, "lr": 1e-3, "warmup_steps": 20,
                "lr_schedule": "cosine", "log_every": 50, "checkpoint_every": 200,
                "ema_decay": 0.99},
  })

  # A curriculum for the base stage: its first `fraction` of steps train on easier scenes —
  # large objects only (`sizes`), `p_two` of them with two — with `base`'s overrides of the
  # recipe (the high-noise band, where a layout is decided: `diffusion.high_noise_fraction` of
  # every batch at t ≥ 0.85, their loss weight floored at `high_noise_weight`); their captions
  # are encoded by the same T5 into `curriculum_cache/`, and the stage then continues from that
  # checkpoint on the demo's scenes with the recipe above. With small objects in the scenes the
  # stage does not learn where each object goes (relation 0.26 at 6000 steps); two large
  # objects always sit in their own halves, there it learns the relation in 2000 steps (0.83),
  # and it carries over to small ones: 2000 + 4000 steps give relation 0.667, one-object shape
  # 0.73 (200 test prompts, the deterministic sampler; RESULTS, issue 17 §17; with the SDE
  # sampler below 0.71 / 0.80, §18). A larger fraction buys relation with shape
  # (3000: 0.73 / 0.44), a smaller one shape with relation (1000: 0.41 / 0.85). 0: none.
  config.curriculum = ml_collections.ConfigDict()
  config.curriculum.fraction = 1 / 3
  config.curriculum.sizes = ("large",)
  config.curriculum.shapes = shapes_scene.SHAPES
  config.curriculum.p_two = 1.0
  config.curriculum.num_test = 16  # its test split is not used
  config.curriculum.base = ml_collections.ConfigDict({
      "diffusion": {"high_noise_fraction": 0.5, "high_noise_weight": 0.3}})

  # The base stage's step count (`base.train.num_steps=0`) is sized to this machine: the demo
  # times the base train step, then gives base training what `minutes` leaves after the data,
  # the captions and the rest of the demo (SR training, grid and evaluation cost about
  # `rest_in_base_steps` base steps: measured 1320 on a machine whose base step takes 173 ms
  # and 1100 on one at 106 ms), between `min_base_steps` and `max_base_steps`; the training
  # loop's step costs `loop_overhead` × the step alone (measured 1.03–1.13: input pipeline,
  # logging, checkpoints). Shape and size are learnt late (RESULTS, issue 17 §7: one-object
  # shape 0.51 at 3000 base steps, 0.74 at 4000, 0.91 at 6000), so every spare minute goes to
  # base steps. An explicit `--config.base.train.num_steps=N` fixes the count; a re-run of a
  # workdir keeps the count its run was started with.
  config.budget = ml_collections.ConfigDict()
  config.budget.minutes = 14.0  # the 15 with a minute's margin
  config.budget.rest_in_base_steps = 1400
  config.budget.loop_overhead = 1.1
  config.budget.min_base_steps = 2000
  config.budget.max_base_steps = 6000

  config.sample = ml_collections.ConfigDict()
  config.sample.prompts = (
      "a small red circle", "a large blue square", "a large green triangle",
      "a small yellow square to the left of a red circle",
      "a large red triangle above a blue circle", "a small blue circle",
      "a large yellow circle", "a small green square")
  config.sample.guidance_weight = 3.0  # the base stage's
  # The SR stage's weight. Unguided (1) and w 3 upsample the same base samples equally well:
  # all attributes of 200 prompts, paired, two splits × two seeds (RESULTS, issue 17 §20):
  # unguided − guided +0.045 / +0.015 / −0.035 / +0.015 — no effect beyond the prompts' noise.
  config.sample.sr_guidance_weight = 3.0
  # The SDE form of DPM-Solver++(2M) (Lu et al. 2022; diffusers' 'sde-dpmsolver++'): each step
  # adds fresh noise, which corrects the errors of an imperfect model instead of following them
  # to the end. Measured on the demo's base checkpoint (RESULTS issue 17 §18, 200 test prompts,
  # two sampling seeds and a second training seed): one-object shape 0.73 → 0.80 / 0.74 → 0.83 /
  # 0.67 → 0.78 — corners where the ODE sampler drew blobs — at equal network calls; relation
  # and the SR stage unchanged within noise. Colour drops a little (0.96 → 0.91): a few more small
  # objects are not drawn at all.
  config.sample.sampler = "dpmpp_2m_sde"
  config.sample.num_steps = 25
  # Static, not the paper's dynamic thresholding: ~91% of the shapes' pixels are the white
  # background (|x| > 0.95), so the per-sample p99.5 of |x̂₀| lands on the background's overshoot
  # and dividing by it greys the whole image (benchmarks/RESULTS.md, issue 7). Dynamic thresholding
  # is built for natural images, where few pixels sit at the end of the range.
  config.sample.thresholding = "static"
  config.sample.seed = 0

  config.eval = ml_collections.ConfigDict()
  config.eval.num_prompts = 64

  if arg == "quick":
    config.data.num_train = 200
    config.data.num_test = 16
    config.base.train.num_steps = 12
    config.text_pretrain.steps = 20
    config.base.train.log_every = 4
    config.sr.train.num_steps = 4
    config.sr.train.log_every = 2
    config.sample.num_steps = 5
    config.eval.num_prompts = 8
  return config
