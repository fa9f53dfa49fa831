"""U-Net building blocks, NHWC, every kernel with logical axis names.

Logical axes: convolutions ('conv_h', 'conv_w', 'conv_in', 'conv_out'); dense layers ('embed',
'mlp'), ('embed', 'heads'), ('heads', 'embed'); conditioning ('cond', 'embed'); text projection
('text_embed', 'embed_kv'); norms ('norm',). Large activations are constrained to ('batch',
'height', 'width', 'channels'). A mesh's rules (see `imagen_jax.sharding`) map these to devices.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models.attention import AttentionImpl, MultiHeadAttention, dense

Array = jax.Array
DType = Any
IMAGE_AXES = ("batch", "height", "width", "channels")


def constrain_image(x: Array) -> Array:
  return nn.with_logical_constraint(x, IMAGE_AXES)


def sinusoidal_embedding(x: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """Transformer-style features of a scalar per example: (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def grid_position_features(height: int, width: int, dim: int = 16) -> Array:
  """Fixed 2D sinusoidal features of each pixel's centre, in fractions of the image side (so a
  place has the same features at every resolution): (height · width, dim), row-major; dim / 4
  frequencies per axis (π, 2π, 4π, …: the first is monotonic across the side), sin and cos."""
  if dim % 4:
    raise ValueError(f"grid position features need a multiple of 4 dimensions, not {dim}")
  freqs = math.pi * 2.0 ** jnp.arange(dim // 4, dtype=jnp.float32)

  def axis(n):
    args = ((jnp.arange(n, dtype=jnp.float32) + 0.5) / n)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)

  fy, fx = axis(height), axis(width)
  grid = jnp.concatenate([jnp.broadcast_to(fy[:, None], (height, width, fy.shape[-1])),
                          jnp.broadcast_to(fx[None, :], (height, width, fx.shape[-1]))], -1)
  return grid.reshape(height * width, dim)


CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


class Conv(nn.Module):
  """A square 'SAME' convolution, NHWC: the function and parameters (`kernel` (k, k, in, out),
  `bias`) of `flax.linen.Conv`, with the kernel's input-channel axis gathered before use.

  Under an fsdp mesh the kernel is stored split along its input channels ('conv_in' → fsdp);
  the convolution reads it whole along them (as ZeRO-3 gathers every weight before use). Said
  explicitly, because XLA's SPMD partitioner, left to choose, computes a wrong input gradient for
  a k > 1 convolution on a data × fsdp × tensor mesh with every axis > 1 (jax 0.10.2: 130%
  relative error; a 1×1 kernel, dense layers and every two-axis mesh are right), measured by
  tests/test_train.py::test_sharded_step_matches_one_device and, in isolation, by
  tests/test_unet.py::test_conv_gradient_on_a_three_axis_mesh.
  """

  features: int
  kernel_size: int
  strides: int = 1
  zero_init: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    kernel = self.param("kernel", nn.with_logical_partitioning(init, CONV_AXES),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                      (self.features,), self.param_dtype)
    kernel = nn.with_logical_constraint(kernel, ("conv_h", "conv_w", None, "conv_out"))
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype),
                                     (self.strides, self.strides), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def conv(features: int, kernel: int, dtype: DType, param_dtype: DType, name: str | None = None,
         strides: int = 1, zero_init: bool = False) -> Conv:
  return Conv(features, kernel, strides=strides, zero_init=zero_init, dtype=dtype,
              param_dtype=param_dtype, name=name)


def layer_norm(param_dtype: DType, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm in float32 with named parameters."""
  return nn.LayerNorm(dtype=jnp.float32, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class _GroupNormParams(nn.Module):
  """The scale and bias of a GroupNorm, at the parameter path of `flax.linen.GroupNorm`."""

  features: int
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (self.features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      (self.features,), self.param_dtype)
    return scale, bias


class GroupNorm(nn.Module):
  """GroupNorm over an NHWC map, statistics in float32; the output in the compute dtype.

  The same function (ε = 1e-6, variance as E[x²] − E[x]²) and parameters (`GroupNorm_0/scale`,
  `GroupNorm_0/bias`) as `flax.linen.GroupNorm`, computed in an order that suits the channel-last
  layout: per-channel sums over the spatial axes first (contiguous in C), then the few channels of
  each group are summed, and normalisation, scale and bias fold into one per-channel affine map
  x·a + b, which XLA fuses with what follows (the ResBlock's scale-shift and SiLU). Measured on
  BENCH-A: the grouped reduction `flax.linen.GroupNorm` lowers to is a strided reduction over a
  (B, H, W, G, C/G) view that runs several times slower than memory bandwidth.

  `two_pass=True` computes the variance as E[(x − E[x])²], one more pass over x, as torch's
  GroupNorm does: E[x²] − E[x]² cancels catastrophically in float32 when a group's mean is large
  against its spread — DeepFloyd IF's text norm on the embedding of the negative prompt "",
  whose 76 padding tokens are nearly identical in each channel.
  """

  groups: int = 32
  epsilon: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  two_pass: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    groups = math.gcd(self.groups, channels)
    scale, bias = _GroupNormParams(channels, self.param_dtype, name="GroupNorm_0")()
    x32 = x.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * (channels // groups)

    # (B, C) per-channel sums → (B, C) means of each channel's group, as two small matmuls with
    # a constant channel→group membership matrix. (A reshape-sum-repeat is the same function, but
    # XLA:CPU fuses the repeat into the big elementwise loop that applies the norm, as index
    # arithmetic per element: in a jax.profiler trace of BENCH-A's forward those loops took 76 ms
    # of thread time, now 15.)
    # HIGHEST: a float32 dot on TPU would otherwise round its inputs to bfloat16.
    member = np.equal.outer(np.arange(channels) // (channels // groups),
                            np.arange(groups)).astype(np.float32)  # (C, G)

    sums = jnp.stack([jnp.sum(x32, axis=spatial), jnp.sum(x32 * x32, axis=spatial)])  # (2, B, C)
    groups_mean = jnp.dot(sums, member, precision=jax.lax.Precision.HIGHEST) / count
    mean, mean_sq = jnp.dot(groups_mean, member.T, precision=jax.lax.Precision.HIGHEST)
    expand = (slice(None),) + (None,) * len(spatial) + (slice(None),)
    if self.two_pass:
      centred = x32 - mean[expand]
      sq = jnp.dot(jnp.sum(centred * centred, axis=spatial), member,
                   precision=jax.lax.Precision.HIGHEST) / count
      var = jnp.dot(sq, member.T, precision=jax.lax.Precision.HIGHEST)
    else:
      var = jnp.maximum(mean_sq - mean * mean, 0.0)
    a = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    b = bias.astype(jnp.float32) - mean * a
    return (x32 * a[expand] + b[expand]).astype(self.dtype)


class ResBlock(nn.Module):
  """GroupNorm → SiLU → conv3 → scale-shift by the conditioning embedding → SiLU → dropout → conv3,
  plus a (1×1-projected when the width changes) residual. The last conv starts at zero."""

  features: int
  dropout: float = 0.0
  groups: int = 32  # GroupNorm groups (gcd with the channel count)
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: GroupNorm(self.groups, **kw, name=name)
    h = conv(self.features, 3, name="conv_0", **kw)(nn.silu(norm("norm_0")(x)))
    scale_shift = dense(2 * self.features, ("cond", "embed"), name="emb_proj", **kw)(nn.silu(emb))
    scale, shift = jnp.split(scale_shift[:, None, None, :].astype(self.dtype), 2, axis=-1)
    h = norm("norm_1")(h) * (1.0 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv(self.features, 3, name="conv_1", zero_init=True, **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name="skip", **kw)(x)
    return constrain_image(x + h)


class Downsample(nn.Module):
  """Stride-2 3×3 convolution."""

  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return conv(self.features, 3, self.dtype, self.param_dtype, strides=2, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour ×2, then a 3×3 convolution."""

  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return conv(self.features, 3, self.dtype, self.param_dtype, name="conv")(x)


class AttentionBlock(nn.Module):
  """Attention on the feature map, pre-normed and residual, in one of two styles.

  * 'transformer': [self-attention], [cross-attention to the text], then a feed-forward
    (`ff_mult` × width; 0 = none) — as in the Efficient U-Net's attention blocks.
  * 'joint' (GLIDE/ADM style): one attention whose keys/values are the image tokens and the text
    tokens together (requires self-attention), then the optional feed-forward.

  Text is (B, L, Ct) with mask (B, L). With `image_positions` a learnt projection of each pixel's
  fixed position features (`grid_position_features`; zero at init) is added to the feature map
  before the attention, so queries and keys know where they are: without it attention is a set
  operation over the pixels and only zero padding tells a convolution where it is.
  """

  self_attention: bool = True
  cross_attention: bool = True
  style: str = "transformer"
  head_dim: int = 64
  ff_mult: int = 2
  impl: AttentionImpl = "reference"
  groups: int = 32  # GroupNorm groups (gcd with the channel count)
  image_positions: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, text: Array | None, text_mask: Array | None) -> Array:
    b, hgt, wid, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mha = dict(head_dim=self.head_dim, impl=self.impl, **kw)
    if self.cross_attention and text is None:
      raise ValueError("this block cross-attends to text, but no text embeddings were given")
    if self.image_positions:
      where = dense(c, (None, "embed"), name="position_proj", zero_init=True, **kw)(
          grid_position_features(hgt, wid).astype(self.dtype))
      x = x + where.reshape(1, hgt, wid, c).astype(x.dtype)
    tokens = x.reshape(b, hgt * wid, c)
    if self.style == "joint":
      if not self.self_attention:
        raise ValueError("'joint' attention needs self_attention (the image keys); use the "
                         "'transformer' style for cross-attention alone")
      h = GroupNorm(self.groups, **kw, name="norm")(x).reshape(b, hgt * wid, c)
      ctx, mask = (text, text_mask) if self.cross_attention else (None, None)
      tokens = tokens + MultiHeadAttention(**mha, joint_context=True, name="attention")(
          h, ctx, mask)
    elif self.style == "transformer":
      if self.self_attention:
        h = GroupNorm(self.groups, **kw, name="self_norm")(x).reshape(b, hgt * wid, c)
        tokens = tokens + MultiHeadAttention(**mha, name="self_attention")(h)
      if self.cross_attention:
        h = layer_norm(self.param_dtype, "cross_norm")(tokens)
        tokens = tokens + MultiHeadAttention(**mha, name="cross_attention")(
            h.astype(self.dtype), text, text_mask)
    else:
      raise ValueError(f"unknown attention style {self.style!r}; choose 'transformer' or 'joint'")
    if self.ff_mult:
      h = layer_norm(self.param_dtype, "ff_norm")(tokens)
      h = dense(self.ff_mult * c, ("embed", "mlp"), name="ff_in", **kw)(h.astype(self.dtype))
      tokens = tokens + dense(c, ("mlp", "embed"), name="ff_out", zero_init=True, **kw)(nn.gelu(h))
    return constrain_image(tokens.reshape(b, hgt, wid, c))
