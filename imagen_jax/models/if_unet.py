"""DeepFloyd IF's U-Net (stage I, 64 px, and the super-resolution stages) in Flax, NHWC.

DeepFloyd IF ships its stages as diffusers `UNet2DConditionModel`s. This module reproduces exactly
the subset of that class the IF configurations use, so IF's released weights (read by
`imagen_jax.models.if_weights.load_if_unet`) give diffusers' outputs:

    cfg, params = load_if_unet("IF-I-XL-v1.0/unet")
    out = IFUNet(cfg).apply({"params": params}, x_t, timesteps, text,
                            encoder_attention_mask=None, class_labels=None)

Inputs: `sample` (B, H, W, in_channels) — stage II's 6 channels are the noisy image and the
upsampled low-res image, concatenated by the caller as IF's pipeline does; `timesteps` (B,)
(integer or fractional, a scalar broadcasts); `encoder_hidden_states` (B, L, encoder_hid_dim) — the
T5 embeddings; optional `encoder_attention_mask` (B, L) (bool or 0/1, 1 = keep); `class_labels`
(B,) — the noise level of the low-res image, for stages with `class_embed_type="timestep"`.
Output: (B, H, W, out_channels), float32; IF's 6 channels are ε and the learned-range variance.

The network, as diffusers computes it (diffusers module names in quotes, which are also our
parameter paths, with list indices joined by '_': `down_blocks_0/resnets_1/conv1/kernel`):

  * embedding: sinusoidal features of the timestep ("time_proj", width block_out_channels[0]) →
    "time_embedding" (Linear, act, Linear). Stage II adds "class_embedding" (the same MLP shape)
    of the sinusoidal features of `class_labels`. With `addition_embed_type="text"` the raw text
    goes through "add_embedding" (LayerNorm → attention pooling with a learned query offset →
    Linear → LayerNorm) and is added too; then the optional "time_embed_act".
  * "encoder_hid_proj": a Linear from the T5 width to `cross_attention_dim`; its output is the
    context of every attention block (the pooled embedding above reads the text *before* it).
  * "conv_in", then down blocks. `ResnetDownsampleBlock2D` is N ResnetBlock2Ds;
    `SimpleCrossAttnDownBlock2D` follows each ResnetBlock2D with an attention block. Both
    downsample (but the last level) through one more ResnetBlock2D with `down=True`
    ("downsamplers_0"), which 2×2 average-pools (no convolution, so no padding question) both its
    residual and its normalised input before conv1. Every block output is a skip.
  * "mid_block" (`UNetMidBlock2DSimpleCrossAttn`): resnet, attention, resnet, with
    `mid_block_scale_factor` as the resnets' output scale.
  * up blocks: N+1 ResnetBlock2Ds, each on [hidden, skip] concatenated along channels, each
    followed by attention in `SimpleCrossAttnUpBlock2D`; an `up=True` resnet ("upsamplers_0",
    nearest-neighbour ×2 of residual and normalised input) but at the last level.
  * "conv_norm_out" (GroupNorm) → act → "conv_out".

Every GroupNorm here takes the variance in two passes, E[(x − E[x])²], as torch does (our U-Nets'
one-pass E[x²] − E[x]² loses float32 precision where a group's mean is large against its spread,
measured on IF's text norm: 1.8e-3 off on the embedding of "", tests/test_deepfloyd_if.py), so
released IF weights give torch's numbers.

ResnetBlock2D (`resnet_time_scale_shift="scale_shift"`): GroupNorm → act → [resample] → conv1;
the embedding (after act unless `resnet_skip_time_act`) → "time_emb_proj" → (scale, shift);
GroupNorm(h)·(1 + scale) + shift → act → conv2; (residual [1×1 "conv_shortcut"] + h) divided by
the output scale factor (`resnet_out_scale_factor`, IF-II: 1/0.7071).

Attention (diffusers `Attention` with `AttnAddedKVProcessor`): queries from GroupNorm(x)
("group_norm"); keys and values are the text's ("add_k_proj", "add_v_proj", after the text's own
GroupNorm "norm_cross" over its channels, 32 groups, when `cross_attention_norm="group_norm"`)
concatenated with the image's ("to_k", "to_v") — or the text's alone when the block is
`only_cross_attention` (IF-II); then "to_out_0" and the residual. Heads are
`attention_head_dim` wide (in diffusers' blocks of this kind the name means the head width).

Epsilons, as diffusers sets them: the resnets' and "conv_norm_out"'s GroupNorms use the config's
`norm_eps`; the attention's GroupNorms (both) and the text LayerNorms use 1e-5 whatever the
config says. Activations: `act_fn` is "gelu" in IF — torch's exact erf form, not the tanh
approximation.

The text mask, exactly as diffusers uses it: a masked token is dropped from the attention keys
(diffusers adds −10000 to its scores, which float32's exp turns into a weight of exactly 0, as
our ops' key mask does; the image keys are never masked, so some key is always left), but the
mask does *not* reach the pooled text embedding (its mean and attention pooling see every token,
padding included) nor the text GroupNorm (whose statistics include the padded tokens). diffusers
cannot apply a mask in an `only_cross_attention` block — its processor pads the mask with the
image keys such a block does not have and fails with a shape error — so a mask together with
such a block is a ValueError here. IF's pipelines pass no mask.

Parameters carry logical axis names from the vocabulary of `imagen_jax.models.layers`, so
`imagen_jax.sharding.param_shardings` shards them like our U-Nets: convolutions ('conv_h',
'conv_w', 'conv_in', 'conv_out'); attention projections ('embed', 'heads'), the text's keys and
values ('embed_kv', 'heads'), the output ('heads', 'embed'); the embedding MLPs ('cond_in',
'cond') and the resnets' "time_emb_proj" ('cond', 'embed'); "encoder_hid_proj" ('text_embed',
'embed_kv'), the pooling's projections ('embed_kv', 'heads') and "proj" ('embed_kv', 'cond');
norms ('norm',). Our own config fields: `dtype` (compute; GroupNorm statistics, LayerNorms and
softmax stay float32), `param_dtype`, `remat` (every resnet and attention block under
`nn.remat`) and `attention_impl` (an op of `imagen_jax.models.attention`).

The configuration (`IFUNetConfig`, from a diffusers `config.json`, refusing anything outside IF's
subset by name) is `imagen_jax.models.if_config`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models.attention import AttentionImpl, dense, get_attention_op
from imagen_jax.models.if_config import (ACTIVATIONS, ATTN_DOWN, ATTN_UP, CROSS_NORM_GROUPS,
                                         IFUNetConfig)
from imagen_jax.models.layers import GroupNorm, conv, constrain_image

Array = jax.Array
DType = Any

# diffusers' `Attention` defaults that the IF blocks do not override.
ATTENTION_NORM_EPS = 1e-5  # `Attention(eps=1e-5)`: its GroupNorm on the image tokens
CROSS_NORM_EPS = 1e-5
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default (TextTimeEmbedding)
MASK_BIAS = -10000.0  # what diffusers adds to the scores of masked text tokens


def timestep_features(t: Array, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> Array:
  """diffusers' `Timesteps` / `get_timestep_embedding`: (B,) → (B, dim), float32.

  The frequencies are constants computed as torch computes them in float32 — the exponent in
  float32, its exp correctly rounded (float64 then rounded; numpy's and XLA's float32 exp differ
  from torch's by an ulp on some entries, which at t ≈ 1000 moves a phase by up to 6e-5)."""
  half = dim // 2
  exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)
  exponent = exponent / np.float32(half - freq_shift)
  freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def torch_layer_norm(param_dtype: DType, name: str) -> nn.LayerNorm:
  """torch.nn.LayerNorm (ε = 1e-5, two-pass variance) in float32, with named parameters."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class TimestepEmbedding(nn.Module):
  """diffusers' `TimestepEmbedding`: Linear ("linear_1") → act → Linear ("linear_2")."""

  features: int
  act_fn: str
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.features, ("cond_in", "cond"), name="linear_1", **kw)(x.astype(self.dtype))
    return dense(self.features, ("cond_in", "cond"), name="linear_2", **kw)(
        ACTIVATIONS[self.act_fn](h))


class AttentionPooling(nn.Module):
  """diffusers' (= DeepFloyd IF's) `AttentionPooling`: one query — the tokens' mean plus a learned
  offset ("positional_embedding") — attends over [that query token, tokens]; no output
  projection. Every token is pooled (there is no mask)."""

  heads: int
  impl: AttentionImpl = "reference"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, _, width = x.shape
    pos = self.param("positional_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(width ** -0.5), (None, "embed_kv")), (1, width), self.param_dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    proj = lambda name: dense(width, ("embed_kv", "heads"), name=name, **kw)
    query_token = jnp.mean(x, axis=1, keepdims=True) + pos.astype(x.dtype)  # (B, 1, C)
    tokens = jnp.concatenate([query_token, x], axis=1)
    split = lambda t: t.reshape(t.shape[:2] + (self.heads, width // self.heads))
    q = split(proj("q_proj")(query_token))
    k, v = split(proj("k_proj")(tokens)), split(proj("v_proj")(tokens))
    return get_attention_op(self.impl)(q, k, v).reshape(b, width)


class TextTimeEmbedding(nn.Module):
  """diffusers' `TextTimeEmbedding` ("add_embedding"): LayerNorm ("norm1") → AttentionPooling
  ("pool") → Linear ("proj") → LayerNorm ("norm2"); (B, L, C_text) → (B, features)."""

  features: int
  heads: int
  impl: AttentionImpl = "reference"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, text: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = torch_layer_norm(self.param_dtype, "norm1")(text.astype(jnp.float32)).astype(self.dtype)
    h = AttentionPooling(self.heads, self.impl, name="pool", **kw)(h)
    h = dense(self.features, ("embed_kv", "cond"), name="proj", **kw)(h)
    return torch_layer_norm(self.param_dtype, "norm2")(h).astype(self.dtype)


def _avg_pool_2x2(x: Array) -> Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4), dtype=jnp.float32).astype(x.dtype)


def _nearest_2x(x: Array) -> Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResnetBlock2D(nn.Module):
  """diffusers' `ResnetBlock2D` with `time_embedding_norm="scale_shift"` (see the module
  docstring); `resample` 'down' / 'up' is its `down=True` (2×2 average pool) / `up=True`
  (nearest ×2) form, applied to the residual and to the normalised input before conv1."""

  features: int
  groups: int
  eps: float
  act_fn: str
  skip_time_act: bool = False
  output_scale_factor: float = 1.0
  resample: str | None = None
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ACTIVATIONS[self.act_fn]
    h = act(GroupNorm(self.groups, self.eps, two_pass=True, name="norm1", **kw)(x))
    if self.resample == "down":
      x, h = _avg_pool_2x2(x), _avg_pool_2x2(h)
    elif self.resample == "up":
      x, h = _nearest_2x(x), _nearest_2x(h)
    elif self.resample is not None:
      raise ValueError(f"unknown resample {self.resample!r}; choose None, 'down' or 'up'")
    h = conv(self.features, 3, name="conv1", **kw)(h)
    t = temb if self.skip_time_act else act(temb)
    t = dense(2 * self.features, ("cond", "embed"), name="time_emb_proj", **kw)(t)
    scale, shift = jnp.split(t[:, None, None, :].astype(self.dtype), 2, axis=-1)
    h = GroupNorm(self.groups, self.eps, two_pass=True, name="norm2", **kw)(h) * (1 + scale) + shift
    h = conv(self.features, 3, name="conv2", **kw)(act(h))
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name="conv_shortcut", **kw)(x)
    return constrain_image((x.astype(self.dtype) + h) / self.output_scale_factor)


class AddedKVAttention(nn.Module):
  """diffusers' `Attention(added_kv_proj_dim=…)` with `AttnAddedKVProcessor` (see the module
  docstring). `context` (B, L, C_ctx), `mask` (B, L) bool (True = keep) or None."""

  head_dim: int
  groups: int
  only_cross_attention: bool = False
  cross_attention_norm: bool = True
  impl: AttentionImpl = "reference"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, context: Array, mask: Array | None) -> Array:
    b, hgt, wid, c = x.shape
    heads = c // self.head_dim
    inner = heads * self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.cross_attention_norm:
      context = GroupNorm(CROSS_NORM_GROUPS, CROSS_NORM_EPS, two_pass=True, name="norm_cross",
                          **kw)(context)
    h = GroupNorm(self.groups, ATTENTION_NORM_EPS, two_pass=True, name="group_norm", **kw)(x)
    h = h.reshape(b, hgt * wid, c)
    split = lambda t: t.reshape(t.shape[:2] + (heads, self.head_dim))
    proj = lambda axes, name: dense(inner, axes, name=name, **kw)
    q = split(proj(("embed", "heads"), "to_q")(h))
    k = split(proj(("embed_kv", "heads"), "add_k_proj")(context))
    v = split(proj(("embed_kv", "heads"), "add_v_proj")(context))
    if self.only_cross_attention:
      if mask is not None:
        raise ValueError("an encoder_attention_mask cannot be applied in an only_cross_attention "
                         "block (diffusers fails there too); pass encoder_attention_mask=None")
    else:  # text keys first, then the image's own (never masked), as diffusers concatenates
      k = jnp.concatenate([k, split(proj(("embed", "heads"), "to_k")(h))], axis=1)
      v = jnp.concatenate([v, split(proj(("embed", "heads"), "to_v")(h))], axis=1)
      if mask is not None:
        mask = jnp.concatenate([mask, jnp.ones((b, hgt * wid), bool)], axis=1)
    out = get_attention_op(self.impl)(q, k, v, mask).reshape(b, hgt * wid, inner)
    out = dense(c, ("heads", "embed"), name="to_out_0", **kw)(out)
    return constrain_image(x.astype(self.dtype) + out.reshape(b, hgt, wid, c))


class _Blocks:
  """The resnet and attention constructors of one U-Net (rematerialised when cfg.remat)."""

  def __init__(self, cfg: IFUNetConfig):
    self.cfg = cfg
    self.kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    self.resnet_cls = nn.remat(ResnetBlock2D) if cfg.remat else ResnetBlock2D
    self.attention_cls = nn.remat(AddedKVAttention) if cfg.remat else AddedKVAttention

  def resnet(self, features: int, name: str, scale: float, resample: str | None = None):
    cfg = self.cfg
    return self.resnet_cls(features, cfg.norm_num_groups, cfg.norm_eps, cfg.act_fn,
                           skip_time_act=cfg.resnet_skip_time_act, output_scale_factor=scale,
                           resample=resample, name=name, **self.kw)

  def attention(self, only_cross: bool, name: str):
    cfg = self.cfg
    return self.attention_cls(cfg.attention_head_dim, cfg.norm_num_groups,
                              only_cross_attention=only_cross,
                              cross_attention_norm=cfg.cross_attention_norm == "group_norm",
                              impl=cfg.attention_impl, name=name, **self.kw)


class DownBlock(nn.Module):
  """`ResnetDownsampleBlock2D` / `SimpleCrossAttnDownBlock2D` of one level; returns the hidden
  state and the skips it leaves."""

  config: IFUNetConfig
  level: int

  @nn.compact
  def __call__(self, x: Array, temb: Array, context: Array, mask: Array | None
               ) -> tuple[Array, list[Array]]:
    cfg, level = self.config, self.level
    blocks = _Blocks(cfg)
    width, scale = cfg.block_out_channels[level], cfg.resnet_out_scale_factor
    skips = []
    for j in range(cfg.layers_per_block[level]):
      x = blocks.resnet(width, f"resnets_{j}", scale)(x, temb)
      if cfg.down_block_types[level] == ATTN_DOWN:
        x = blocks.attention(cfg.only_cross_attention[level], f"attentions_{j}")(x, context, mask)
      skips.append(x)
    if level < cfg.levels - 1:
      x = blocks.resnet(width, "downsamplers_0", scale, "down")(x, temb)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """`UNetMidBlock2DSimpleCrossAttn`: resnet, attention, resnet (output scale
  `mid_block_scale_factor`)."""

  config: IFUNetConfig

  @nn.compact
  def __call__(self, x: Array, temb: Array, context: Array, mask: Array | None) -> Array:
    cfg = self.config
    blocks = _Blocks(cfg)
    width, scale = cfg.block_out_channels[-1], cfg.mid_block_scale_factor
    x = blocks.resnet(width, "resnets_0", scale)(x, temb)
    x = blocks.attention(cfg.mid_block_only_cross_attention, "attentions_0")(x, context, mask)
    return blocks.resnet(width, "resnets_1", scale)(x, temb)


class UpBlock(nn.Module):
  """`SimpleCrossAttnUpBlock2D` / `ResnetUpsampleBlock2D` of up-block `index` (0 = the lowest
  resolution); consumes `layers_per_block + 1` skips, the last one first."""

  config: IFUNetConfig
  index: int

  @nn.compact
  def __call__(self, x: Array, skips: list[Array], temb: Array, context: Array,
               mask: Array | None) -> Array:
    cfg, i = self.config, self.index
    blocks = _Blocks(cfg)
    level = cfg.levels - 1 - i
    width, scale = cfg.block_out_channels[level], cfg.resnet_out_scale_factor
    for j in range(cfg.layers_per_block[level] + 1):
      x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
      x = blocks.resnet(width, f"resnets_{j}", scale)(x, temb)
      if cfg.up_block_types[i] == ATTN_UP:
        x = blocks.attention(cfg.only_cross_attention[level], f"attentions_{j}")(x, context, mask)
    if i < cfg.levels - 1:
      x = blocks.resnet(width, "upsamplers_0", scale, "up")(x, temb)
    return x


class IFUNet(nn.Module):
  """DeepFloyd IF's U-Net (see the module docstring)."""

  config: IFUNetConfig

  @nn.compact
  def __call__(self, sample: Array, timesteps: Array, encoder_hidden_states: Array,
               encoder_attention_mask: Array | None = None,
               class_labels: Array | None = None) -> Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    b = sample.shape[0]
    self._check_inputs(sample, encoder_hidden_states, encoder_attention_mask, class_labels)

    # 1. Embedding: time, + class (the SR stages' noise level), + pooled text; then its act.
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
    features = lambda t: timestep_features(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
                                           cfg.freq_shift).astype(dtype)
    emb = TimestepEmbedding(cfg.time_embed_dim, cfg.act_fn, name="time_embedding", **kw)(
        features(timesteps))
    if cfg.class_embed_type == "timestep":
      labels = jnp.broadcast_to(jnp.asarray(class_labels), (b,))
      emb = emb + TimestepEmbedding(cfg.time_embed_dim, cfg.act_fn, name="class_embedding",
                                    **kw)(features(labels))
    text = encoder_hidden_states.astype(dtype)
    if cfg.addition_embed_type == "text":  # reads the text before encoder_hid_proj, unmasked
      emb = emb + TextTimeEmbedding(cfg.time_embed_dim, cfg.addition_embed_type_num_heads,
                                    cfg.attention_impl, name="add_embedding", **kw)(text)
    if cfg.time_embedding_act_fn is not None:
      emb = ACTIVATIONS[cfg.time_embedding_act_fn](emb)
    if cfg.encoder_hid_dim is not None:
      text = dense(cfg.cross_attention_dim, ("text_embed", "embed_kv"), name="encoder_hid_proj",
                   **kw)(text)
    mask = None if encoder_attention_mask is None else encoder_attention_mask.astype(bool)

    # 2. The U.
    x = constrain_image(conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(
        sample.astype(dtype)))
    skips = [x]
    for level in range(cfg.levels):
      x, level_skips = DownBlock(cfg, level, name=f"down_blocks_{level}")(x, emb, text, mask)
      skips.extend(level_skips)
    x = MidBlock(cfg, name="mid_block")(x, emb, text, mask)
    for i in range(cfg.levels):
      x = UpBlock(cfg, i, name=f"up_blocks_{i}")(x, skips, emb, text, mask)
    act = ACTIVATIONS[cfg.act_fn]
    x = act(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, two_pass=True,
                        name="conv_norm_out", **kw)(x))
    return conv(cfg.out_channels, 3, name="conv_out", **kw)(x).astype(jnp.float32)

  def _check_inputs(self, sample, text, mask, class_labels) -> None:
    cfg = self.config
    b, hgt, wid, channels = sample.shape
    if channels != cfg.in_channels:
      raise ValueError(f"sample has {channels} channels but the U-Net takes in_channels = "
                       f"{cfg.in_channels} (NHWC input expected; stage II takes the noisy image "
                       f"and the upsampled low-res image concatenated)")
    if hgt % cfg.downsampling or wid % cfg.downsampling:
      raise ValueError(f"image size {hgt}×{wid} is not a multiple of {cfg.downsampling}, the "
                       f"U-Net's total downsampling ({cfg.levels} levels)")
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != cfg.text_dim:
      raise ValueError(f"encoder_hidden_states has shape {text.shape}; expected ({b}, L, "
                       f"{cfg.text_dim}) (the text encoder's width)")
    if mask is not None:
      if mask.shape != text.shape[:2]:
        raise ValueError(f"encoder_attention_mask has shape {mask.shape}; expected "
                         f"{text.shape[:2]} (batch, text length)")
      if cfg.has_only_cross_attention:
        raise ValueError(
            "encoder_attention_mask was given, but this U-Net has only_cross_attention blocks "
            "(e.g. DeepFloyd IF stage II), where diffusers cannot apply a mask: its "
            "AttnAddedKVProcessor pads the mask for image keys those blocks do not have and "
            "fails with a shape error. Pass encoder_attention_mask=None, as IF's pipelines do.")
    if cfg.class_embed_type is not None and class_labels is None:
      raise ValueError("this U-Net has a class embedding (class_embed_type='timestep': the "
                       "noise level of the low-res image); pass class_labels (B,)")
    if cfg.class_embed_type is None and class_labels is not None:
      raise ValueError("class_labels were given but this U-Net has no class embedding "
                       "(class_embed_type=None); pass class_labels=None")
