"""Attention: the operation apart from the projections.

`reference_attention` is the plain definition — softmax(q·kᵀ/√d + mask)·v with the softmax in
float32 — and the oracle every faster operation is tested against. `chunked_attention` computes
the same thing in blocks of queries with `lax.map`, so the (queries × keys) score matrix of a 64×64
feature map (4096² per head) never exists at once. `xla_attention` calls
`jax.nn.dot_product_attention`, which dispatches to fused kernels where the backend has them
(cuDNN on GPU) and to XLA otherwise.

All ops take q (B, Lq, H, D), k and v (B, Lk, H, D) and an optional key mask (B, Lk) (True = attend);
a query whose keys are all masked gets zeros. `MultiHeadAttention` holds the projections (with
logical axis names) and calls the op chosen by name.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
AttentionImpl = Literal["reference", "chunked", "xla"]
_NEG = -1e9


def _mask_bias(mask: Array | None) -> Array | float:
  if mask is None:
    return 0.0
  return jnp.where(mask[:, None, None, :], 0.0, _NEG).astype(jnp.float32)  # (B, 1, 1, Lk)


def _zero_fully_masked(out: Array, mask: Array | None) -> Array:
  if mask is None:
    return out
  any_key = jnp.any(mask, axis=-1)[:, None, None, None]
  return jnp.where(any_key, out, 0.0).astype(out.dtype)


def reference_attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
  """softmax(q kᵀ / √d + mask) v, scores and softmax in float32."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(scores + _mask_bias(mask), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return _zero_fully_masked(out, mask)


def chunked_attention(q: Array, k: Array, v: Array, mask: Array | None = None,
                      query_chunk: int = 1024) -> Array:
  """`reference_attention` over blocks of `query_chunk` queries (memory O(chunk × Lk) per head)."""
  lq = q.shape[1]
  if lq <= query_chunk:
    return reference_attention(q, k, v, mask)
  if lq % query_chunk:
    raise ValueError(f"query length {lq} is not a multiple of query_chunk {query_chunk}")
  blocks = q.reshape(q.shape[0], lq // query_chunk, query_chunk, *q.shape[2:]).swapaxes(0, 1)
  out = jax.lax.map(lambda qb: reference_attention(qb, k, v, mask), blocks)
  return out.swapaxes(0, 1).reshape(q.shape[:-1] + (v.shape[-1],))


def xla_attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
  """`jax.nn.dot_product_attention` (fused kernels where the backend has them)."""
  m = None if mask is None else mask[:, None, None, :]
  out = jax.nn.dot_product_attention(q, k, v, mask=m)
  return _zero_fully_masked(out, mask)


ATTENTION_OPS: dict[str, Callable[..., Array]] = {
    "reference": reference_attention,
    "chunked": chunked_attention,
    "xla": xla_attention,
}


def get_attention_op(name: str) -> Callable[..., Array]:
  if name not in ATTENTION_OPS:
    raise ValueError(f"unknown attention implementation {name!r}; choose one of "
                     f"{sorted(ATTENTION_OPS)}")
  return ATTENTION_OPS[name]


def dense(features: int, axes: tuple[str, str], dtype, param_dtype, name: str | None = None,
          use_bias: bool = True, zero_init: bool = False) -> nn.Dense:
  """A Dense layer whose kernel carries logical axis names (bias: the output axis)."""
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class MultiHeadAttention(nn.Module):
  """Projections around an attention op.

  Queries come from `x` (B, L, C). Keys and values come from `context` (B, Lk, Cc) with `mask`
  (B, Lk) — cross-attention — or from `x` itself when no context is given — self-attention. With
  `joint_context=True` the keys and values are those of `x` *and* of the context (projected by
  their own weights), concatenated: GLIDE/ADM-style attention, where the image attends to itself
  and to the text in one softmax. Heads are C // head_dim wide.
  """

  head_dim: int = 64
  impl: AttentionImpl = "reference"
  joint_context: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None, mask: Array | None = None) -> Array:
    channels = x.shape[-1]
    if channels % self.head_dim:
      raise ValueError(f"{channels} channels are not a multiple of head_dim {self.head_dim}")
    heads = channels // self.head_dim
    proj = functools.partial(dense, channels, dtype=self.dtype, param_dtype=self.param_dtype,
                             use_bias=False)
    split = lambda t: t.reshape(t.shape[:2] + (heads, self.head_dim))
    q = split(proj(("embed", "heads"), name="query")(x))
    if context is None or self.joint_context:
      k = split(proj(("embed", "heads"), name="key")(x))
      v = split(proj(("embed", "heads"), name="value")(x))
    if context is not None:
      ck = split(proj(("embed_kv", "heads"), name="context_key")(context))
      cv = split(proj(("embed_kv", "heads"), name="context_value")(context))
      if self.joint_context:
        k, v = jnp.concatenate([k, ck], axis=1), jnp.concatenate([v, cv], axis=1)
        if mask is not None:
          mask = jnp.concatenate([jnp.ones(x.shape[:2], bool), mask], axis=1)
      else:
        k, v = ck, cv
    elif mask is not None:
      raise ValueError("a key mask without a context: self-attention keys are never masked")
    out = get_attention_op(self.impl)(q, k, v, mask)
    out = out.reshape(out.shape[:2] + (channels,))
    return dense(channels, ("heads", "embed"), self.dtype, self.param_dtype, name="out",
                 zero_init=True)(out)
