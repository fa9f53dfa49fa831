"""U-Nets: paper-scale parameter counts, shapes, text conditioning, attention ops, remat, axes."""

import dataclasses
import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from imagen_jax.configlib import load_config
from imagen_jax.models import UNet, UNetConfig, UNetDenoiser, null_text
from imagen_jax.models.attention import chunked_attention, reference_attention, xla_attention

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEY = jax.random.key(0)


def stage_model(name: str, arg: str | None = None) -> UNetConfig:
  spec = str(CONFIGS / f"{name}.py") + (f":{arg}" if arg else "")
  return UNetConfig.from_dict(load_config(spec).model.to_dict())


def inputs(cfg: UNetConfig, size: int, batch: int = 2, length: int = 6, lowres: int = 0, seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (batch, size, size, 3))
  logsnr = jax.random.uniform(k[1], (batch,), minval=-10, maxval=10)
  text = jax.random.normal(k[2], (batch, length, cfg.text_dim))
  mask = jnp.arange(length)[None, :] < jnp.array([length - 2, 3])[:batch, None]
  extra = {}
  if lowres:
    extra = dict(lowres=jax.random.normal(k[3], (batch, lowres, lowres, 3)),
                 aug_level=jax.random.uniform(k[4], (batch,)))
  return (x, logsnr, text, mask), extra


def abstract_init(cfg: UNetConfig, args, extra):
  """The U-Net's variables as shapes (boxed with their logical axes): nothing is allocated."""
  return jax.eval_shape(lambda a, e: UNet(cfg).init(KEY, *a, **e), args, extra)


def fan_in_noise(tree, key):
  """Standard normal noise shaped like `tree`'s leaves, scaled by each kernel's fan-in. One draw
  cut into the leaves: the ~200 separate draws of a tiny U-Net's initialisers take XLA:CPU about
  15 s to compile."""
  leaves, treedef = jax.tree.flatten(tree)
  offsets = np.cumsum([0] + [int(np.prod(l.shape)) for l in leaves])
  noise = jax.random.normal(key, (int(offsets[-1]),))
  return jax.tree.unflatten(treedef, [
      noise[o:e].reshape(l.shape) * (1.0 if len(l.shape) < 2 else l.shape[-2] ** -0.5)
      for l, o, e in zip(leaves, offsets[:-1], offsets[1:])])


def filled_params(cfg: UNetConfig, args, extra, seed=0):
  """Parameters of the right shapes without running the initialisers, for tests that need only
  shapes."""
  shapes = nn.unbox(abstract_init(cfg, args, extra))
  return jax.jit(lambda k: fan_in_noise(shapes["params"], k))(jax.random.key(seed))


def init_randomized(cfg: UNetConfig, args, extra, seed=1):
  """Init, then give every parameter random values: zero-initialised output layers would
  otherwise hide whether the text (or anything) reaches the output."""
  def randomized(a, e):
    params = nn.unbox(UNet(cfg).init(jax.random.key(seed), *a, **e)["params"])
    noise = fan_in_noise(params, jax.random.key(seed + 1))
    return jax.tree.map(lambda p, n: p + 0.2 * n, params, noise)
  return jax.jit(randomized)(args, extra)


def abstract_param_count(cfg: UNetConfig, size: int, lowres: int = 0) -> int:
  (x, logsnr, text, mask), extra = jax.eval_shape(
      lambda: inputs(cfg, size, batch=1, length=8, lowres=lowres))
  shapes = abstract_init(cfg, (x, logsnr, text, mask), extra)
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nn.unbox(shapes["params"])))


# The paper's model sizes: Imagen §4.1 / App. F ("a 2B parameter model for the 64×64 base, 600M
# and 400M parameter models for 64→256 and 256→1024"). Counted abstractly (jax.eval_shape): no
# parameter is allocated.
@pytest.mark.parametrize("stage, size, lowres, paper", [
    ("base64", 64, 0, 2.0e9), ("sr256", 256, 64, 600e6), ("sr1024", 256, 64, 400e6)])
def test_paper_configs_match_the_papers_parameter_counts(stage, size, lowres, paper):
  n = abstract_param_count(stage_model(stage), size, lowres)
  assert abs(n / paper - 1) <= 0.10, f"{stage}: {n / 1e6:.0f}M parameters vs the paper's " \
                                     f"{paper / 1e6:.0f}M"


@pytest.mark.parametrize("stage, size, lowres", [
    ("base64", 64, 0), ("sr256", 256, 64), ("sr1024", 64, 16)])
def test_output_shapes_of_every_tiny_stage(stage, size, lowres):
  cfg = stage_model(stage, "tiny")
  args, extra = inputs(cfg, size, lowres=lowres)
  params = filled_params(cfg, args, extra)
  out = jax.jit(lambda p, a, e: UNet(cfg).apply({"params": p}, *a, **e))(params, args, extra)
  assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.fixture(scope="module")
def base_tiny():
  cfg = stage_model("base64", "tiny")
  args, extra = inputs(cfg, 32)
  return cfg, args, init_randomized(cfg, args, extra)


@pytest.fixture(scope="module")
def sr_tiny():
  cfg = stage_model("sr256", "tiny")
  args, extra = inputs(cfg, 64, lowres=16)
  return cfg, args, extra, init_randomized(cfg, args, extra)


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, params, args, extra):
  return UNet(cfg).apply({"params": params}, *args, **extra)


def apply(cfg, params, args, extra=None):
  return np.asarray(_apply(cfg, params, args, extra or {}))


@pytest.mark.parametrize("which", ["base", "sr"])
def test_text_mask_padded_tokens_do_not_matter_real_ones_do(which, base_tiny, sr_tiny):
  if which == "base":
    cfg, args, params = base_tiny
    extra = {}
  else:
    cfg, args, extra, params = sr_tiny
  x, logsnr, text, mask = args
  ref = apply(cfg, params, args, extra)
  # padded positions of example 1 (mask True only for its first 3 tokens) get other embeddings
  noise = jax.random.normal(jax.random.key(9), text.shape) * 5
  padded = jnp.where(mask[..., None], text, noise)
  np.testing.assert_allclose(apply(cfg, params, (x, logsnr, padded, mask), extra), ref,
                             atol=1e-5, rtol=1e-5)
  # a real token changes the output of its own example only
  # (a random direction: LayerNorm would erase a constant shift of all channels)
  changed = text.at[1, 0].add(3.0 * jax.random.normal(jax.random.key(3), (text.shape[-1],)))
  out = apply(cfg, params, (x, logsnr, changed, mask), extra)
  assert np.abs(out[1] - ref[1]).max() > 1e-3, "cross-attention / pooling must use the text"
  np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=1e-5)


def test_text_positions_make_word_order_visible(base_tiny):
  """Cross-attention and pooling are set operations over tokens: reversing the order of an
  example's real tokens leaves the U-Net's output unchanged — unless `text_positions` adds where
  each token stands; the other example of the batch is untouched either way."""
  cfg, (x, logsnr, text, mask), params = base_tiny
  n = int(mask[0].sum())
  reordered = text.at[0, :n].set(text[0, :n][::-1])
  for positions in (False, True):
    c = dataclasses.replace(cfg, text_positions=positions)
    ref = apply(c, params, (x, logsnr, text, mask))
    out = apply(c, params, (x, logsnr, reordered, mask))
    if positions:
      assert np.abs(out[0] - ref[0]).max() > 1e-3
    else:
      np.testing.assert_allclose(out[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(out[1], ref[1], atol=1e-5)


def test_image_positions_tell_attention_where_a_pixel_is():
  """Attention is a set operation over pixels: a cross-attention block maps a feature map with
  the same vector at every pixel to one with the same vector at every pixel, so it cannot put
  "the first object" on the left. With `image_positions` (its projection non-zero, as after
  training) the output depends on the place, left and right differently."""
  from imagen_jax.models.layers import AttentionBlock, grid_position_features

  feats = np.asarray(grid_position_features(8, 8))
  assert feats.shape == (64, 16)
  assert np.allclose(feats.reshape(8, 8, 16)[:, :, :8], feats.reshape(8, 8, 16)[:, :1, :8])  # y
  x = jnp.broadcast_to(jax.random.normal(KEY, (1, 1, 1, 32)), (2, 8, 8, 32))
  text = jax.random.normal(jax.random.key(1), (2, 5, 32))
  mask = jnp.ones((2, 5), bool)
  for positions in (False, True):
    block = AttentionBlock(self_attention=False, cross_attention=True, head_dim=16, ff_mult=0,
                           groups=8, image_positions=positions)
    shapes = nn.unbox(jax.eval_shape(lambda: block.init(KEY, x, text, mask)))
    params = fan_in_noise(shapes["params"], jax.random.key(2))
    out = np.asarray(block.apply({"params": params}, x, text, mask))
    spread = np.abs(out - out[:, :1, :1]).max()
    if positions:
      assert spread > 1e-2
      assert np.abs(out[:, :, :4] - out[:, :, 4:][:, :, ::-1]).max() > 1e-2  # not mirrored
    else:
      assert spread < 1e-5


def test_text_layers_mix_context_into_each_token():
  """`text_layers`: a real token's context vector depends on the other real tokens of its
  caption (without the layers it depends on its own embedding alone), never on padded tokens
  or on another example; an all-False mask is still one input."""
  from imagen_jax.models.unet import Conditioning

  base = stage_model("base64", "tiny")
  (_, logsnr, text, mask), _ = inputs(base, 32)

  def run(cfg, seed=2):
    cond = Conditioning(cfg)
    shapes = nn.unbox(jax.eval_shape(lambda: cond.init(KEY, logsnr, text, mask, None)))
    params = fan_in_noise(shapes["params"], jax.random.key(seed))
    return jax.jit(lambda t, m: cond.apply({"params": params}, logsnr, t, m, None))

  layered, plain = run(dataclasses.replace(base, text_layers=1)), run(base)
  changed = text.at[0, 2].add(3.0 * jax.random.normal(jax.random.key(3), (text.shape[-1],)))
  for f, mixes in ((layered, True), (plain, False)):
    emb, ctx, _ = f(text, mask)
    emb2, ctx2, _ = f(changed, mask)
    moved = float(jnp.abs(ctx2[0, 1] - ctx[0, 1]).max())  # token 0 (after the null token)
    assert (moved > 1e-3) if mixes else (moved < 1e-6), (mixes, moved)
    np.testing.assert_allclose(ctx2[1], ctx[1], atol=1e-6)
  # example 1's padded tokens (mask True for its first 3) reach neither its tokens nor its emb
  noise = jax.random.normal(jax.random.key(9), text.shape) * 5
  emb, ctx, _ = layered(text, mask)
  emb2, ctx2, _ = layered(jnp.where(mask[..., None], text, noise), mask)
  np.testing.assert_allclose(ctx2[1, :4], ctx[1, :4], atol=1e-5)
  np.testing.assert_allclose(emb2, emb, atol=1e-5)
  off = jnp.zeros_like(mask)
  np.testing.assert_allclose(layered(text, off)[0], layered(text * 7 + 1, off)[0], atol=1e-5)


def test_null_text_is_one_input(base_tiny):
  """An all-False mask is the unconditional input: the embeddings behind it are irrelevant."""
  cfg, (x, logsnr, text, mask), params = base_tiny
  cond = {"text": text, "text_mask": mask}
  null = null_text(cond)
  other = {"text": text * 7 + 1, "text_mask": jnp.zeros_like(mask)}
  denoise = jax.jit(UNetDenoiser(cfg))
  a = np.asarray(denoise(params, x, logsnr, null))
  np.testing.assert_allclose(np.asarray(denoise(params, x, logsnr, other)), a, atol=1e-5)
  assert np.abs(np.asarray(denoise(params, x, logsnr, cond)) - a).max() > 1e-3


def test_conditioning_on_noise_level_and_aug_level(sr_tiny):
  cfg, (x, logsnr, text, mask), extra, params = sr_tiny
  ref = apply(cfg, params, (x, logsnr, text, mask), extra)
  assert np.abs(apply(cfg, params, (x, logsnr + 1.0, text, mask), extra) - ref).max() > 1e-3
  aug = {**extra, "aug_level": extra["aug_level"] * 0.5}
  assert np.abs(apply(cfg, params, (x, logsnr, text, mask), aug) - ref).max() > 1e-3
  low = {**extra, "lowres": extra["lowres"] + 0.5}
  assert np.abs(apply(cfg, params, (x, logsnr, text, mask), low) - ref).max() > 1e-3
  with pytest.raises(ValueError, match="needs the low-resolution image"):
    apply(cfg, params, (x, logsnr, text, mask), {"aug_level": extra["aug_level"]})


def test_lowres_residual_adds_the_upsampled_input(sr_tiny):
  """`lowres_residual`: the same network, its output added to the (bilinearly) upsampled low-res
  image — so a freshly initialised SR stage (zero output conv) starts as that upsampler."""
  cfg, args, extra, params = sr_tiny
  residual = dataclasses.replace(cfg, lowres_residual=True)
  up = jax.image.resize(extra["lowres"], args[0].shape, "linear")
  np.testing.assert_allclose(apply(residual, params, args, extra) - apply(cfg, params, args, extra),
                             np.asarray(up), atol=1e-5)
  zero_out = {**params, "conv_out": jax.tree.map(jnp.zeros_like, params["conv_out"])}  # as init
  np.testing.assert_allclose(apply(residual, zero_out, args, extra), np.asarray(up), atol=1e-6)
  with pytest.raises(ValueError, match="lowres_residual needs a super-resolution U-Net"):
    dataclasses.replace(stage_model("base64", "tiny"), lowres_residual=True)
  from imagen_jax.train.loop import step_config

  config = load_config(str(CONFIGS / "sr256.py:tiny"))
  config.model.lowres_residual = True
  with pytest.raises(ValueError, match="only with diffusion.prediction='x0'"):
    step_config(config)  # the tiny SR stage predicts ε
  config.diffusion.prediction = "x0"
  assert step_config(config).model.lowres_residual


@pytest.mark.parametrize("channels", [64, 192, 3])  # 32 groups of 2, of 6; gcd(32, 3) = 1 group
def test_group_norm_is_the_definition_and_flax_compatible(channels):
  from imagen_jax.models.layers import GroupNorm

  rng = np.random.default_rng(channels)
  x = rng.normal(1.5, 3.0, (3, 5, 4, channels)).astype(np.float32)
  module = GroupNorm()
  params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
  params = jax.tree.map(lambda t: t + jnp.asarray(rng.normal(size=t.shape), t.dtype),
                        nn.unbox(params))
  out = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  # Float64 definition: statistics per example over (H, W, channels of the group).
  groups = int(np.gcd(32, channels))
  xg = x.astype(np.float64).reshape(3, 5, 4, groups, channels // groups)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  ref = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
  ref = ref * np.asarray(params["GroupNorm_0"]["scale"]) + np.asarray(params["GroupNorm_0"]["bias"])
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
  # The parameters of `flax.linen.GroupNorm` (checkpoints carry over), and its function.
  flax_gn = nn.GroupNorm(num_groups=groups)
  assert jax.tree.map(np.shape, params["GroupNorm_0"]) == jax.tree.map(
      np.shape, flax_gn.init(jax.random.key(0), jnp.asarray(x))["params"])
  np.testing.assert_allclose(out, flax_gn.apply({"params": params["GroupNorm_0"]}, x), atol=2e-5)
  bf16 = GroupNorm(dtype=jnp.bfloat16).apply({"params": params}, jnp.asarray(x, jnp.bfloat16))
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kernel, strides", [(3, 1), (3, 2), (1, 1)])
def test_conv_is_flax_conv(kernel, strides):
  """layers.Conv has flax.linen.Conv's parameters (same init values: checkpoints carry over) and
  function, for each way the U-Nets use it."""
  from imagen_jax.models.layers import Conv

  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 5))
  ours = Conv(7, kernel, strides=strides)
  params = nn.unbox(ours.init(jax.random.key(0), x)["params"])
  flax_conv = nn.Conv(7, (kernel, kernel), strides=(strides, strides), padding="SAME")
  flax_params = flax_conv.init(jax.random.key(0), x)["params"]
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, flax_params)
  np.testing.assert_array_equal(params["kernel"], flax_params["kernel"])
  params = {**params, "bias": jnp.arange(7.0)}
  np.testing.assert_allclose(ours.apply({"params": params}, x),
                             flax_conv.apply({"params": params}, x), atol=1e-6)


def test_conv_gradient_on_a_three_axis_mesh():
  """On a data × fsdp × tensor = 2 × 2 × 2 mesh, with the model's sharding rules, a 3×3 Conv's
  input and kernel gradients equal one device's. XLA left to partition the same convolution
  (the kernel not gathered over fsdp: the control) gets the input gradient wrong (jax 0.10.2:
  130% off); the check on ours fails if the gather is removed."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  from imagen_jax import sharding as shd
  from imagen_jax.models.layers import Conv, constrain_image

  class Block(nn.Module):
    gather: bool = True

    @nn.compact
    def __call__(self, x):
      conv = Conv(32, 3, name="conv")
      if self.gather:
        return conv(constrain_image(x))
      kernel = self.param("conv_kernel", nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "conv_out")),
          (3, 3, 32, 32))
      return jax.lax.conv_general_dilated(constrain_image(x), kernel, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 8, 8, 32)).astype(np.float32)
  w = rng.standard_normal((8, 8, 8, 32)).astype(np.float32)
  errors = {}
  for gather in (True, False):
    block = Block(gather)
    boxed = block.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1, nn.unbox(boxed))
    grad = jax.grad(lambda p, x: jnp.sum(block.apply({"params": p}, x) * w), argnums=(0, 1))
    one = jax.jit(grad)(params, x)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      psh = shd.param_shardings(boxed, mesh, shd.DEFAULT_RULES)
      sharded = jax.jit(grad, in_shardings=(psh, shd.batch_sharding(mesh, 4)))(
          jax.device_put(params, psh), x)
    errors[gather] = [float(np.abs(a - b).max() / np.abs(b).max())
                      for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(one))]
  assert max(errors[True]) < 1e-5, (errors, "control (not gathered):", errors[False])


def _qkv(seed, lq=64, lk=10, heads=2, dim=8):
  k = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k[0], (2, lq, heads, dim)), jax.random.normal(k[1], (2, lk, heads, dim)),
          jax.random.normal(k[2], (2, lk, heads, dim)))


def test_reference_attention_is_the_definition():
  q, k, v = _qkv(0)
  mask = jnp.array([[True] * 7 + [False] * 3, [True] * 10])
  out = np.asarray(reference_attention(q, k, v, mask))
  qn, kn, vn, mn = (np.asarray(a, np.float64) for a in (q, k, v, mask))
  scores = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(8) + np.where(mn, 0, -np.inf)[:, None,
                                                                                          None]
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, vn), atol=1e-5)


@pytest.mark.parametrize("op", [lambda q, k, v, m: chunked_attention(q, k, v, m, query_chunk=16),
                                xla_attention], ids=["chunked", "xla"])
def test_fast_attention_paths_match_the_reference(op):
  q, k, v = _qkv(1)
  for mask in (None, jnp.array([[True] * 4 + [False] * 6, [False] * 10])):
    ref = np.asarray(reference_attention(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(op(q, k, v, mask)), ref, atol=2e-5, rtol=1e-5)
  fully_masked = np.asarray(op(q, k, v, jnp.zeros((2, 10), bool)))
  assert np.all(fully_masked == 0), "a query with no keys gets zeros"


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_unet_fast_attention_matches_reference(base_tiny, impl):
  cfg, args, params = base_tiny
  fast = dataclasses.replace(cfg, attention_impl=impl)
  np.testing.assert_allclose(apply(fast, params, args), apply(cfg, params, args), atol=2e-5,
                             rtol=1e-4)


def test_remat_gives_the_same_gradients():
  """On the tiny SR U-Net cut to two levels (ResBlocks, cross-attention with its feed-forward,
  the low-res input: every kind of block remat wraps; half the backward pass to compile)."""
  cfg = dataclasses.replace(stage_model("sr256", "tiny"), channel_mults=(1, 2),
                            num_res_blocks=(1, 1), self_attention=(False, True),
                            cross_attention=(False, True))
  args, extra = inputs(cfg, 16, lowres=8)
  params = init_randomized(cfg, args, extra)

  def loss(p, c):
    return jnp.mean(UNet(c).apply({"params": p}, *args, **extra) ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g = grad(params, cfg)
  g_remat = grad(params, dataclasses.replace(cfg, remat=True))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
  assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g))


def test_dropout_only_in_training(base_tiny):
  cfg, args, params = base_tiny
  cfg = dataclasses.replace(cfg, dropout=0.5)
  train = jax.jit(lambda p, a, key: UNet(cfg).apply({"params": p}, *a, train=True,
                                                   rngs={"dropout": key}))
  run = lambda seed: np.asarray(train(params, args, jax.random.key(seed)))
  assert np.abs(run(0) - run(1)).max() > 1e-4
  # at inference dropout is off: the same output as a model built without dropout
  no_dropout = dataclasses.replace(cfg, dropout=0.0)
  np.testing.assert_array_equal(apply(cfg, params, args), apply(no_dropout, params, args))


def test_bfloat16_compute_is_close_to_float32(base_tiny):
  cfg, args, params = base_tiny
  ref = apply(cfg, params, args)
  out = apply(dataclasses.replace(cfg, dtype="bfloat16"), params, args)
  # bf16 keeps 8 mantissa bits; errors compound over ~20 layers: 5% of the output scale.
  assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()


def test_every_parameter_has_logical_axis_names():
  cfg = stage_model("sr256", "tiny")
  args, extra = inputs(cfg, 64, lowres=16)
  boxed = abstract_init(cfg, args, extra)["params"]
  flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{'/'.join(path)} has no logical axes"
    assert len(leaf.names) == len(leaf.value.shape), f"{'/'.join(path)}: {leaf.names}"
  names = {n for leaf in flat.values() for n in leaf.names}
  assert {"conv_in", "conv_out", "heads", "mlp", "embed"} <= names


def test_config_errors():
  with pytest.raises(ValueError, match="num_res_blocks has 2 entries but there are 3 levels"):
    UNetConfig(channel_mults=(1, 2, 3), num_res_blocks=(1, 1),
               self_attention=(False,) * 3, cross_attention=(False,) * 3)
  cfg = stage_model("base64", "tiny")
  args, _ = inputs(cfg, 30)
  with pytest.raises(ValueError, match="not a multiple of 4"):
    UNet(cfg).init(KEY, *args)
  args, _ = inputs(dataclasses.replace(cfg, text_dim=32), 32)
  with pytest.raises(ValueError, match="text_dim=64"):
    UNet(cfg).init(KEY, *args)
