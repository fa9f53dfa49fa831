"""The denoising U-Nets of the cascade: the paper's base U-Net and the Efficient U-Net (SR stages).

    model = UNet(UNetConfig(...))
    out = model.apply({"params": params}, x_t, logsnr, text, text_mask,
                      lowres=lowres, aug_level=aug_level, train=False)

Inputs (NHWC): x_t (B, H, W, 3), logsnr (B,), text embeddings (B, L, text_dim) with mask (B, L);
SR stages also take the low-resolution image (B, h, w, 3), upsampled here and concatenated to x_t,
and its noise-augmentation level (B,) in [0, 1]. Output: (B, H, W, 3), the prediction (ε, v or x₀).

Conditioning (Imagen §2, App. B): the text is LayerNorm-ed and projected; its masked mean (pooled
embedding) is added to the embedding of the noise level (and of the aug level); the full token
sequence enters through cross-attention. Cross-attention and pooling are set operations over the
tokens: word order ("A to the left of B") reaches the U-Net only through what the encoder mixed
into each token (the embedded tiny T5 does: a word's embedding moves with its place, cosine
0.85–0.95 between positions). `text_positions` adds fixed sinusoidal position features to the
projected tokens as well — an option measured not to help the demo (benchmarks/RESULTS.md,
issue 17 §6), so off by default. `text_layers` > 0 adds that many trainable transformer layers
(self-attention over the real tokens, then a feed-forward) after the position features, so the
tokens the U-Net attends to can carry their context ("red" as the first object's colour), which
a pretrained T5-XXL provides and the embedded random T5 barely does; 0 (Imagen's frozen text) is
the default. A learned null token is always present among the keys,
so a prompt with an all-False mask — the unconditional branch of classifier-free guidance — is
well defined (and equal for every such prompt).

Two layouts, one module:
  * base (`efficient=False`, ADM-style): at each level N ResBlocks, each followed by attention
    where enabled and saved as a skip; stride-2 downsampling between levels; a middle block; the up
    path has N+1 ResBlocks per level, each consuming one skip.
  * Efficient U-Net (`efficient=True`, App. B.1): each DBlock downsamples *before* its ResBlocks and
    leaves one skip; each UBlock concatenates that skip scaled by 1/√2, runs its ResBlocks and
    attention, and upsamples *after* them. More ResBlocks sit at low resolution. Being fully
    convolutional (attention only where configured), it trains on crops and samples at full size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.models.attention import AttentionImpl, MultiHeadAttention, dense
from imagen_jax.models.layers import (AttentionBlock, Downsample, GroupNorm, ResBlock, Upsample,
                                      conv, constrain_image, layer_norm, sinusoidal_embedding)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyper-parameters of one stage's U-Net. Per-level tuples have one entry per channel mult."""

  width: int = 128
  channel_mults: tuple[int, ...] = (1, 2, 3, 4)
  num_res_blocks: tuple[int, ...] = (3, 3, 3, 3)
  self_attention: tuple[bool, ...] = (False, True, True, True)
  cross_attention: tuple[bool, ...] = (False, True, True, True)
  efficient: bool = False
  attention_style: str = "transformer"  # 'transformer' | 'joint' (GLIDE/ADM: image+text keys)
  attention_per_block: bool = True  # after every ResBlock of a level, or once per level (False)
  head_dim: int = 64
  ff_mult: int = 2  # feed-forward after attention (× width); 0 = none
  text_dim: int = 4096  # width of the text encoder (T5-XXL: 4096)
  cond_dim: int = 512  # width the text is projected to for cross-attention and pooling
  text_positions: bool = False  # add sinusoidal token-position features to the projected text
  text_layers: int = 0  # trainable transformer layers over the projected text (0: the paper's)
  image_positions: bool = False  # attention blocks see where each pixel is (AttentionBlock)
  emb_dim: int = 0  # noise-level embedding width; 0 = 4 × width
  lowres_cond: bool = False  # super-resolution stage
  lowres_residual: bool = False  # SR: the output is added to the upsampled low-res input
  out_channels: int = 3
  dropout: float = 0.0
  norm_groups: int = 32  # GroupNorm groups; a level with fewer channels uses gcd(groups, channels)
  attention_impl: AttentionImpl = "reference"
  dtype: str = "float32"  # compute dtype ("bfloat16" on TPU)
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise every ResBlock / AttentionBlock in the backward pass

  def __post_init__(self):
    n = len(self.channel_mults)
    for name in ("num_res_blocks", "self_attention", "cross_attention"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"UNetConfig.{name} has {len(getattr(self, name))} entries but there are "
                         f"{n} levels (channel_mults={self.channel_mults})")
    if self.lowres_residual and not (self.lowres_cond and self.out_channels == 3):
      raise ValueError("lowres_residual needs a super-resolution U-Net (lowres_cond=True) with "
                       "3 output channels")
    if self.text_layers and self.cond_dim % self.head_dim:
      raise ValueError(f"text_layers need cond_dim ({self.cond_dim}) to be a multiple of "
                       f"head_dim ({self.head_dim})")
    for level, mult in enumerate(self.channel_mults):
      attn = self.self_attention[level] or self.cross_attention[level]
      if attn and (self.width * mult) % self.head_dim:
        raise ValueError(f"level {level} has {self.width * mult} channels, not a multiple of "
                         f"head_dim {self.head_dim}")

  @property
  def embedding_dim(self) -> int:
    return self.emb_dim or 4 * self.width

  @property
  def downsampling(self) -> int:
    """Total spatial reduction: inputs must be multiples of this."""
    return 2 ** (len(self.channel_mults) - 1)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
    """From a plain dict (e.g. `config.model.to_dict()`); per-level ints broadcast, lists → tuples."""
    d = dict(d)
    n = len(d.get("channel_mults", cls.channel_mults))
    for name in ("num_res_blocks", "self_attention", "cross_attention"):
      if name in d and not isinstance(d[name], (list, tuple)):
        d[name] = (d[name],) * n
      if name in d:
        d[name] = tuple(d[name])
    if "channel_mults" in d:
      d["channel_mults"] = tuple(d["channel_mults"])
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown U-Net config fields {sorted(unknown)}")
    return cls(**d)


def logsnr_to_input(logsnr: Array) -> Array:
  """λ ∈ [−20, 20] → [0, 1000], the range sinusoidal embeddings were designed for."""
  return (jnp.clip(logsnr, -20.0, 20.0) + 20.0) * 25.0


class Conditioning(nn.Module):
  """Noise-level, pooled-text and aug-level embeddings, and the cross-attention context."""

  config: UNetConfig

  @nn.compact
  def __call__(self, logsnr: Array, text: Array, text_mask: Array, aug_level: Array | None
               ) -> tuple[Array, Array, Array]:
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    emb_dim = cfg.embedding_dim

    def mlp(x, name):
      h = dense(emb_dim, ("cond_in", "cond"), name=f"{name}_0", **kw)(x)
      return dense(emb_dim, ("cond_in", "cond"), name=f"{name}_1", **kw)(nn.silu(h))

    emb = mlp(sinusoidal_embedding(logsnr_to_input(logsnr), cfg.width), "time")
    # Text: LayerNorm (Imagen App. B), projection; the pooled embedding joins the time embedding.
    if text.shape[-1] != cfg.text_dim:
      raise ValueError(f"text embeddings are {text.shape[-1]} wide but the U-Net expects "
                       f"text_dim={cfg.text_dim} (the text encoder's d_model)")
    tokens = layer_norm(kw["param_dtype"], "text_norm")(text.astype(jnp.float32))
    tokens = dense(cfg.cond_dim, ("text_embed", "embed_kv"), name="text_proj", **kw)(
        tokens.astype(kw["dtype"]))
    if cfg.text_positions or cfg.text_layers:  # word order (see UNetConfig.text_positions)
      positions = sinusoidal_embedding(jnp.arange(tokens.shape[1]), cfg.cond_dim)
      tokens = tokens + positions.astype(tokens.dtype)[None]
    mask = text_mask.astype(bool)
    for i in range(cfg.text_layers):  # pre-LN encoder layers over the real tokens (key mask)
      h = layer_norm(kw["param_dtype"], f"text_layer{i}_norm")(tokens).astype(kw["dtype"])
      tokens = tokens + MultiHeadAttention(head_dim=cfg.head_dim, impl=cfg.attention_impl,
                                           name=f"text_layer{i}_attention", **kw)(h, h, mask)
      h = layer_norm(kw["param_dtype"], f"text_layer{i}_ff_norm")(tokens).astype(kw["dtype"])
      h = dense(2 * cfg.cond_dim, ("embed_kv", "mlp"), name=f"text_layer{i}_ff_in", **kw)(h)
      tokens = tokens + dense(cfg.cond_dim, ("mlp", "embed_kv"), name=f"text_layer{i}_ff_out",
                              zero_init=True, **kw)(nn.gelu(h))
    count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
    pooled = jnp.sum(tokens.astype(jnp.float32) * mask[..., None], axis=1) / count
    emb = emb + dense(emb_dim, ("embed_kv", "cond"), name="pooled_proj", **kw)(
        pooled.astype(kw["dtype"]))
    if cfg.lowres_cond:
      if aug_level is None:
        raise ValueError("a super-resolution U-Net needs the aug_level of its low-res input")
      emb = emb + mlp(sinusoidal_embedding(aug_level * 1000.0, cfg.width), "aug")
    null = self.param("null_text", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed_kv")), (1, 1, cfg.cond_dim),
        kw["param_dtype"])
    context = jnp.concatenate(
        [jnp.broadcast_to(null, (tokens.shape[0], 1, cfg.cond_dim)).astype(tokens.dtype), tokens],
        axis=1)
    context_mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)
    return emb, context, context_mask


class UNet(nn.Module):
  """The U-Net of one cascade stage (see the module docstring)."""

  config: UNetConfig

  def _blocks(self):
    cfg = self.config
    res, attn = ResBlock, AttentionBlock
    if cfg.remat:
      res = nn.remat(ResBlock, static_argnums=(3,))
      attn = nn.remat(AttentionBlock)
    return res, attn

  @nn.compact
  def __call__(self, x: Array, logsnr: Array, text: Array, text_mask: Array,
               lowres: Array | None = None, aug_level: Array | None = None,
               train: bool = False) -> Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    b, h, w, _ = x.shape
    if h % cfg.downsampling or w % cfg.downsampling:
      raise ValueError(f"image size {h}×{w} is not a multiple of {cfg.downsampling}, the U-Net's "
                       f"total downsampling ({len(cfg.channel_mults)} levels)")
    res_block, attn_block = self._blocks()
    emb, context, context_mask = Conditioning(cfg, name="conditioning")(
        logsnr, text, text_mask, aug_level)
    upsampled = None
    if cfg.lowres_cond:
      if lowres is None:
        raise ValueError("a super-resolution U-Net needs the low-resolution image")
      upsampled = jax.image.resize(lowres.astype(jnp.float32), x.shape, "linear")
      x = jnp.concatenate([x, upsampled.astype(x.dtype)], -1)
    elif lowres is not None:
      raise ValueError("this U-Net is not a super-resolution stage (lowres_cond=False), but a "
                       "low-resolution image was given")
    hid = constrain_image(conv(cfg.width, 3, name="conv_in", **kw)(x.astype(dtype)))

    def attention(level: int, name: str):
      if not (cfg.self_attention[level] or cfg.cross_attention[level]):
        return None
      return attn_block(self_attention=cfg.self_attention[level],
                        cross_attention=cfg.cross_attention[level], style=cfg.attention_style,
                        head_dim=cfg.head_dim,
                        ff_mult=cfg.ff_mult, impl=cfg.attention_impl, groups=cfg.norm_groups,
                        image_positions=cfg.image_positions, name=name, **kw)

    def res(features: int, name: str):
      return res_block(features, dropout=cfg.dropout, groups=cfg.norm_groups, name=name, **kw)

    def apply(hid, level, i, stage, n):
      hid = res(cfg.width * cfg.channel_mults[level], f"{stage}_{level}_res_{i}")(hid, emb, train)
      if not cfg.attention_per_block and i < n - 1:
        return hid  # attention once per level, after its last ResBlock
      block = attention(level, f"{stage}_{level}_attn_{i}")
      return hid if block is None else block(hid, context, context_mask)

    levels = range(len(cfg.channel_mults))
    last = len(cfg.channel_mults) - 1
    if cfg.efficient:
      skips = []
      for level in levels:
        if level > 0:  # downsample before the block's convolutions
          hid = Downsample(hid.shape[-1], name=f"down_{level}_downsample", **kw)(hid)
        for i in range(cfg.num_res_blocks[level]):
          hid = apply(hid, level, i, "down", cfg.num_res_blocks[level])
        if level < last:  # the lowest DBlock feeds the lowest UBlock directly
          skips.append(hid)
      for level in reversed(levels):
        if level < last:
          hid = jnp.concatenate([hid, skips.pop() * (1.0 / math.sqrt(2.0))], axis=-1)
        for i in range(cfg.num_res_blocks[level]):
          hid = apply(hid, level, i, "up", cfg.num_res_blocks[level])
        if level > 0:  # upsample after the block's convolutions
          hid = Upsample(cfg.width * cfg.channel_mults[level - 1], name=f"up_{level}_upsample",
                         **kw)(hid)
    else:
      skips = [hid]
      for level in levels:
        for i in range(cfg.num_res_blocks[level]):
          hid = apply(hid, level, i, "down", cfg.num_res_blocks[level])
          skips.append(hid)
        if level < last:
          hid = Downsample(hid.shape[-1], name=f"down_{level}_downsample", **kw)(hid)
          skips.append(hid)
      width = cfg.width * cfg.channel_mults[last]
      hid = res(width, "mid_res_0")(hid, emb, train)
      block = attention(last, "mid_attn")
      hid = hid if block is None else block(hid, context, context_mask)
      hid = res(width, "mid_res_1")(hid, emb, train)
      for level in reversed(levels):
        for i in range(cfg.num_res_blocks[level] + 1):
          hid = jnp.concatenate([hid, skips.pop()], axis=-1)
          hid = apply(hid, level, i, "up", cfg.num_res_blocks[level] + 1)
        if level > 0:
          hid = Upsample(hid.shape[-1], name=f"up_{level}_upsample", **kw)(hid)
    hid = nn.silu(GroupNorm(cfg.norm_groups, name="norm_out", **kw)(hid))
    out = conv(cfg.out_channels, 3, name="conv_out", zero_init=True, **kw)(hid)
    out = out.astype(jnp.float32)
    if cfg.lowres_residual:  # x₀ = upsampled input + a learnt correction (zero at init)
      out = out + upsampled
    return out


@dataclasses.dataclass(frozen=True)
class UNetDenoiser:
  """The diffusion core's `denoise_fn(params, x_t, logsnr, cond)` for a U-Net; hashable, so it is a
  static argument of `jit_sample`. `cond` is a dict: 'text' (B, L, D), 'text_mask' (B, L), and
  for SR stages 'lowres' (B, h, w, 3) and 'aug_level' (B,). Dropout is off (sampling)."""

  config: UNetConfig

  def __call__(self, params: Any, x: Array, logsnr: Array, cond: dict[str, Array]) -> Array:
    return UNet(self.config).apply({"params": params}, x, logsnr, cond["text"], cond["text_mask"],
                                   lowres=cond.get("lowres"), aug_level=cond.get("aug_level"))


def null_text(cond: dict[str, Array]) -> dict[str, Array]:
  """The unconditional input for classifier-free guidance: zero embeddings, all-False mask."""
  return {**cond, "text": jnp.zeros_like(cond["text"]),
          "text_mask": jnp.zeros_like(cond["text_mask"], dtype=bool)}
