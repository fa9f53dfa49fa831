"""BENCH-A in imagen_jax: every case is the project's own code path, jit-compiled once in setup.

  * train: `make_train_step` (the step `imagen-jax train` runs: classifier-free text dropout,
    ε-loss on the cosine schedule, value_and_grad, global-norm clipping, Adam, EMA, the
    non-finite guard) on a state made by `create_sharded_state` on a 1-device mesh, donated;
  * forward: `UNetDenoiser` (the sampler's denoise function), jitted with the parameters as an
    argument;
  * cfg_step: `jit_sample` with one step — one batched cond+uncond model call (32 rows), dynamic
    thresholding and the DPM-Solver++ update;
  * sample_default / sample_ours: `jit_sample` (the loop in `lax.scan`) with the entry's sampler
    and step count, guidance 5, dynamic thresholding (p99.5);
  * cache: the train step of a BENCH-A U-Net at the tiny T5's width (64), its text either looked
    up in an `EmbeddingCache` (ArrayRecord, bfloat16, built in setup by `encode_captions`) or
    tokenized and encoded by the tiny T5 (`TextEncoder`) every step.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import spec
from benchmarks.peers.flops import jax_flops, xla_flops


def unet_config(text_dim: int = spec.TEXT_DIM, layout: str = "adm"):
  from imagen_jax.models.unet import UNetConfig

  return UNetConfig.from_dict(spec.bench_a_unet_config(text_dim, layout))


def param_count(tree) -> int:
  import jax

  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def abstract_param_count(text_dim: int = spec.TEXT_DIM, layout: str = "adm") -> int:
  """Parameters of the BENCH-A U-Net from shapes alone (`jax.eval_shape` of init)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from imagen_jax.models.unet import UNet

  cfg = unet_config(text_dim, layout)
  s = jax.ShapeDtypeStruct
  args = (s((1, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), jnp.float32), s((1,), jnp.float32),
          s((1, spec.TEXT_LEN, text_dim), jnp.float32), s((1, spec.TEXT_LEN), jnp.bool_))
  shapes = jax.eval_shape(lambda *a: UNet(cfg).init(jax.random.key(0), *a), *args)
  return param_count(nn.unbox(shapes["params"]))


def _init_params(cfg, seed: int = spec.SEED):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from imagen_jax.models.unet import UNet

  x = jnp.zeros((1, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3))
  args = (x, jnp.zeros((1,)), jnp.zeros((1, spec.TEXT_LEN, cfg.text_dim)),
          jnp.ones((1, spec.TEXT_LEN), bool))
  return jax.jit(lambda k: nn.unbox(UNet(cfg).init(k, *args)["params"]))(jax.random.key(seed))


def _cond(inputs: spec.Inputs) -> dict[str, Any]:
  import jax.numpy as jnp

  return {"text": jnp.asarray(inputs.text), "text_mask": jnp.asarray(inputs.mask)}


def _train(cfg, text_dim: int):
  """(step(batch) -> loss, flops fn, compiled, params) for the project's train step."""
  import flax.linen as nn
  import jax

  from imagen_jax import sharding as shd
  from imagen_jax.diffusion import CosineSchedule, LossConfig
  from imagen_jax.models.unet import UNet
  from imagen_jax.train.state import (
    OptimizerConfig,
    create_sharded_state,
    learning_rate,
    make_optimizer,
  )
  from imagen_jax.train.step import StepConfig, make_train_step

  step_cfg = StepConfig(model=cfg, schedule=CosineSchedule(), loss=LossConfig(prediction="eps"),
                        p_uncond=0.1, ema_decay=0.9999)
  opt_cfg = OptimizerConfig(name="adam", lr=spec.LR, warmup_steps=0, grad_clip=1.0)
  optimizer = make_optimizer(opt_cfg)
  mesh = shd.make_mesh({"data": -1})
  x = jax.numpy.zeros((1, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3))
  args = (x, jax.numpy.zeros((1,)), jax.numpy.zeros((1, spec.TEXT_LEN, text_dim)),
          jax.numpy.ones((1, spec.TEXT_LEN), bool))
  state, shardings = create_sharded_state(lambda k: UNet(cfg).init(k, *args)["params"], optimizer,
                                          spec.SEED, mesh, shd.DEFAULT_RULES)
  step = make_train_step(step_cfg, optimizer, learning_rate(opt_cfg))
  inputs = spec.make_inputs(text_dim=text_dim)
  host = {"image": inputs.images, "text_embeddings": inputs.text, "text_mask": inputs.mask}
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in host.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    fn = jax.jit(step, in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))
    batch = jax.device_put(host, batch_sh)
    compiled = fn.lower(state, batch).compile()
    flops = jax_flops(step, state, batch)
  holder = {"state": state}

  def run(batch):
    holder["state"], metrics = compiled(holder["state"], batch)
    return jax.block_until_ready(metrics["loss"])

  return run, batch, compiled, flops, param_count(state.params)


def build(case: str, **params: Any) -> tuple[Any, dict[str, Any]]:
  """(call, info) for one case; `call()` runs one timed call to completion."""
  import jax
  import jax.numpy as jnp

  from imagen_jax.diffusion import CosineSchedule, SamplerConfig, Thresholding, jit_sample, sample
  from imagen_jax.models.unet import UNetDenoiser, null_text

  layout = params.get("layout", "adm")
  info: dict[str, Any] = {"framework": "ours", "jax": jax.__version__,
                          "devices": str(jax.devices()), "layout": layout,
                          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if case == "train":
    cfg = unet_config(layout=layout)
    run, batch, compiled, flops, n = _train(cfg, spec.TEXT_DIM)
    info.update(params=n, flops=flops, xla_flops=xla_flops(compiled),
                what="make_train_step (clip + Adam + EMA), donated state")
    return (lambda: run(batch)), info

  if case == "cache":
    return _cache_case(params["text"], info, params.get("t5", "tiny"))

  cfg = unet_config(layout=layout)
  params_tree = _init_params(cfg)
  info["params"] = param_count(params_tree)
  inputs = spec.make_inputs()
  cond = _cond(inputs)
  denoise = UNetDenoiser(cfg)

  if case == "forward":
    rng = np.random.default_rng([spec.SEED, 2])
    x = jnp.asarray(rng.standard_normal(inputs.images.shape).astype(np.float32))
    logsnr = jnp.asarray(rng.uniform(-5, 5, spec.BATCH).astype(np.float32))
    fn = jax.jit(denoise)
    compiled = fn.lower(params_tree, x, logsnr, cond).compile()
    info.update(flops=jax_flops(denoise, params_tree, x, logsnr, cond),
                xla_flops=xla_flops(compiled), what="jit(UNetDenoiser)")
    return (lambda: jax.block_until_ready(compiled(params_tree, x, logsnr, cond))), info

  if case in ("cfg_step", "sample_default", "sample_ours"):
    sampler = params.get("sampler", "dpmpp_2m")
    steps = int(params.get("steps", 1)) if case != "cfg_step" else 1
    config = SamplerConfig(sampler, num_steps=steps, guidance_weight=spec.GUIDANCE,
                           thresholding=Thresholding("dynamic", percentile=99.5))
    null = null_text(cond)
    shape = (spec.BATCH, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3)
    key = jax.random.key(spec.SEED)
    kw = dict(schedule=CosineSchedule(), config=config, prediction="eps")
    compiled = jit_sample.lower(denoise, params_tree, shape, key, cond, null_cond=null,
                                **kw).compile()  # static arguments are compiled in
    run = lambda: jax.block_until_ready(compiled(params_tree, key, cond, null_cond=null))
    flops = jax_flops(lambda p, k, c, u: sample(denoise, p, shape, k, c, null_cond=u, **kw),
                      params_tree, key, cond, null)
    info.update(flops=flops, sampler=sampler, steps=steps,
                what=f"jit_sample({sampler}, {steps} steps, w={spec.GUIDANCE}, dynamic p99.5)")
    if case == "cfg_step":  # XLA counts a loop body once: only meaningful for one step
      info["xla_flops"] = xla_flops(compiled)
    return run, info
  raise ValueError(f"ours: unknown case {case!r}")


def shapes_captions(n: int) -> list[str]:
  """`n` captions of the embedded shapes dataset (deterministic)."""
  from imagen_jax.data.shapes_scene import sample_scene, scene_rng

  return [sample_scene(scene_rng(spec.SEED, 0, i)).caption() for i in range(n)]


def _cache_case(text: str, info: dict[str, Any], t5: str = "tiny"):
  from imagen_jax.text.cache import EmbeddingCache
  from imagen_jax.text.default import TINY_T5, build_default_t5
  from imagen_jax.text.encode import encode_captions
  from imagen_jax.text.encoder import TextEncoder
  from imagen_jax.text.sources import CaptionFile

  if text not in ("cache", "on_the_fly"):
    raise ValueError(f"cache case: text must be 'cache' or 'on_the_fly', got {text!r}")
  if t5 not in spec.CACHE_T5:
    raise ValueError(f"cache case: t5 must be one of {sorted(spec.CACHE_T5)}, got {t5!r}")
  tmp = Path(tempfile.mkdtemp(prefix="peers-cache-"))
  captions = shapes_captions(spec.CACHE_CAPTIONS)
  (tmp / "captions.txt").write_text("\n".join(captions) + "\n")
  t5_dir = build_default_t5(tmp / "t5", captions, **spec.CACHE_T5[t5])
  encoder = TextEncoder.from_directory(t5_dir, max_length=spec.TEXT_LEN, batch_size=spec.BATCH)
  width = encoder.width
  cfg = unet_config(width)
  run_step, batch, _, _, n = _train(cfg, width)
  source = CaptionFile(str(tmp / "captions.txt"))
  ids = [i for i, _ in source]
  by_id = dict(source)
  if text == "cache":
    encode_captions(source, encoder, tmp / "cache", progress=False)
    cache = EmbeddingCache(tmp / "cache")
    del encoder
  position = {"i": 0}

  def next_ids() -> list[str]:
    start = position["i"]
    position["i"] = (start + spec.BATCH) % (len(ids) - spec.BATCH)
    return ids[start:start + spec.BATCH]

  def call():
    batch_ids = next_ids()
    if text == "cache":
      emb, mask = cache.lookup(batch_ids)
    else:
      emb, mask, _ = encoder.encode([by_id[i] for i in batch_ids], warn_truncation=False)
    return run_step({**batch, "text_embeddings": emb, "text_mask": mask})

  info.update(params=n, text_dim=width, t5={**TINY_T5, **spec.CACHE_T5[t5]}, text=text,
              what=("EmbeddingCache.lookup (bfloat16 ArrayRecord) + train step" if text == "cache"
                    else f"Tokenizer + TextEncoder.encode ({t5} T5) + train step"))
  return call, info
