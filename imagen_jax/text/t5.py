"""Frozen T5 encoder in Flax linen, numerically equal to transformers' `T5EncoderModel`.

Architecture (T5 and T5 v1.1, as in transformers' `modeling_t5.py`):

  * token embedding (vocab, d_model), no position embedding;
  * `num_layers` pre-norm blocks: x += SelfAttention(RMSNorm(x)); x += FF(RMSNorm(x));
  * a final RMSNorm.

Details that matter for parity:

  * RMSNorm ("T5LayerNorm") has a scale and no bias, does not subtract the mean and computes the
    variance in float32.
  * Attention has no 1/√d scaling (T5 folds it into the initialisation). Scores get a learned
    relative-position bias indexed by bidirectional log buckets; the bias table lives in the first
    block only and the bias it computes is reused by every block. Padded keys get a large negative
    bias. Softmax runs in float32.
  * The feed-forward is either dense ReLU (`wi` → relu → `wo`, original T5) or gated
    (`act(wi_0 x) * wi_1 x` → `wo`, T5 v1.1 with `gated-gelu` = tanh-approximated GELU).
  * No biases anywhere; no dropout (the encoder is frozen).

Parameter tree (1:1 with the Hugging Face names; HF prefix `encoder.block.{i}.layer.` = "L."):

  embed_tokens/embedding                                       shared.weight
  block_{i}/layer_0/SelfAttention/{q,k,v,o}/kernel             L.0.SelfAttention.{q,k,v,o}.weight
  block_0/layer_0/SelfAttention/relative_attention_bias/embedding
                                                    L.0.SelfAttention.relative_attention_bias.weight
  block_{i}/layer_0/layer_norm/scale                           L.0.layer_norm.weight
  block_{i}/layer_1/DenseReluDense/{wi|wi_0,wi_1,wo}/kernel    L.1.DenseReluDense.{...}.weight
  block_{i}/layer_1/layer_norm/scale                           L.1.layer_norm.weight
  final_layer_norm/scale                                       encoder.final_layer_norm.weight

Kernels are the transposes of the torch Linear weights; embeddings and scales are as stored.

Logical axis names: embedding ('vocab', 'embed'); q/k/v kernels ('embed', 'heads') and o
('heads', 'embed'), where 'heads' is the FUSED num_heads * d_kv dimension (head-major, as in the HF
layout), so sharding 'heads' over n devices with n dividing num_heads splits whole heads; wi, wi_0,
wi_1 ('embed', 'mlp'); wo ('mlp', 'embed'); relative bias ('relpos_buckets', 'heads') — here
'heads' is the plain head count; norm scales ('embed',).

Parameters are stored in `param_dtype` (float32) and cast to the compute `dtype` (float32, or
bfloat16 on TPU) on use.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DType = Any

# Bias added to the scores of padded keys (HF uses finfo.min; any value that underflows exp works).
_MASK_BIAS = -1e9

# Hugging Face activation names (ACT2FN) that T5 checkpoints use.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "relu": jax.nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}

# `model_type` values / architectures whose encoder is this module (mT5 shares the architecture).
T5_MODEL_TYPES = ("t5", "mt5")
T5_ARCHITECTURES = (
  "T5EncoderModel", "T5Model", "T5ForConditionalGeneration",
  "MT5EncoderModel", "MT5Model", "MT5ForConditionalGeneration",
)
_REQUIRED_HF_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder (names as in Hugging Face `T5Config`)."""

  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"  # 'relu' (T5) | 'gated-gelu' (T5 v1.1) | '<act>' | 'gated-<act>'
  dtype: DType = jnp.float32  # compute dtype
  param_dtype: DType = jnp.float32

  def __post_init__(self) -> None:
    self.activation  # Validates feed_forward_proj.

  @property
  def is_gated_act(self) -> bool:
    """Whether the feed-forward is gated (`act(wi_0 x) * wi_1 x`)."""
    return self.feed_forward_proj.split("-")[0] == "gated"

  @property
  def dense_act_fn(self) -> str:
    """The Hugging Face activation name; 'gated-gelu' means 'gelu_new' as in transformers."""
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(
        f"feed_forward_proj {self.feed_forward_proj!r} is not of the form '<act>' or 'gated-<act>'")
    return parts[-1]

  @property
  def activation(self) -> Callable[[Array], Array]:
    """The feed-forward activation function."""
    name = self.dense_act_fn
    if name not in _ACTIVATIONS:
      raise ValueError(
        f"feed_forward_proj {self.feed_forward_proj!r}: unknown activation {name!r}; "
        f"known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "T5Config":
    """Builds a config from a Hugging Face `config.json` dict (`overrides`: e.g. dtype)."""
    model_type = d.get("model_type")
    if model_type is not None and model_type not in T5_MODEL_TYPES:
      raise ValueError(f"not a T5 config: model_type is {model_type!r}, expected one of "
                       f"{T5_MODEL_TYPES}")
    archs = d.get("architectures") or []
    unknown = [a for a in archs if a not in T5_ARCHITECTURES]
    if unknown:
      raise ValueError(f"not a T5 checkpoint: architectures {unknown} (expected one of "
                       f"{T5_ARCHITECTURES})")
    for key in _REQUIRED_HF_KEYS:
      if key not in d:
        raise ValueError(f"T5 config is missing the key {key!r}")
    optional = {f.name: d[f.name] for f in dataclasses.fields(cls)
                if f.name not in _REQUIRED_HF_KEYS and f.name in d
                and f.name not in ("dtype", "param_dtype")}
    return cls(**{k: d[k] for k in _REQUIRED_HF_KEYS}, **optional, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    """The Hugging Face `config.json` dict of a `T5EncoderModel` with this encoder."""
    return {
      "architectures": ["T5EncoderModel"],
      "model_type": "t5",
      "vocab_size": self.vocab_size,
      "d_model": self.d_model,
      "d_kv": self.d_kv,
      "d_ff": self.d_ff,
      "num_layers": self.num_layers,
      "num_decoder_layers": self.num_layers,
      "num_heads": self.num_heads,
      "relative_attention_num_buckets": self.relative_attention_num_buckets,
      "relative_attention_max_distance": self.relative_attention_max_distance,
      "layer_norm_epsilon": self.layer_norm_epsilon,
      "feed_forward_proj": self.feed_forward_proj,
      "dropout_rate": 0.0,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "tie_word_embeddings": True,
      "use_cache": False,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
    }


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of each relative position (memory − query), as HF computes it.

  Half the buckets are for keys after the query. Within each half, distances below
  `num_buckets // 4` get their own bucket and larger ones share logarithmically wider buckets up
  to `max_distance`. Host-side numpy in float32 (the positions are static), mirroring the float32
  arithmetic of transformers' `_relative_position_bucket` so boundaries fall identically.
  """
  half = num_buckets // 2
  buckets = (relative_position > 0).astype(np.int64) * half
  distance = np.abs(relative_position).astype(np.int64)
  max_exact = half // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  large = np.minimum(large, half - 1)
  return buckets + np.where(is_small, distance, large)


class RMSNorm(nn.Module):
  """T5LayerNorm: x / rms(x) * scale, no mean subtraction, no bias, statistics in float32."""

  epsilon: float
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.epsilon)
    return y.astype(self.dtype) * scale.astype(self.dtype)


def _dense(features: int, axes: tuple[str, str], name: str, config: T5Config) -> nn.Dense:
  """A bias-free linear layer with a logically partitioned kernel."""
  init = nn.initializers.normal(stddev=1.0 / math.sqrt(features))
  return nn.Dense(features, use_bias=False, dtype=config.dtype, param_dtype=config.param_dtype,
                  kernel_init=nn.with_logical_partitioning(init, axes), name=name)


class SelfAttention(nn.Module):
  """T5 self-attention with relative position bias; returns (output, position bias).

  If `has_relative_attention_bias` the module owns the bucket → bias table and computes the bias;
  otherwise `position_bias` (from the first block) must be given.
  """

  config: T5Config
  has_relative_attention_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, mask_bias: Array,
               position_bias: Array | None = None) -> tuple[Array, Array]:
    cfg = self.config
    batch, length, _ = x.shape
    inner = cfg.num_heads * cfg.d_kv
    split = lambda t: t.reshape(batch, length, cfg.num_heads, cfg.d_kv)
    q = split(_dense(inner, ("embed", "heads"), "q", cfg)(x))
    k = split(_dense(inner, ("embed", "heads"), "k", cfg)(x))
    v = split(_dense(inner, ("embed", "heads"), "v", cfg)(x))
    if self.has_relative_attention_bias:
      table = nn.Embed(
        cfg.relative_attention_num_buckets, cfg.num_heads, dtype=jnp.float32,
        param_dtype=cfg.param_dtype, name="relative_attention_bias",
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("relpos_buckets", "heads")))
      positions = np.arange(length)
      buckets = relative_position_bucket(positions[None, :] - positions[:, None],
                                         cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance)
      position_bias = jnp.transpose(table(jnp.asarray(buckets, jnp.int32)), (2, 0, 1))[None]
    elif position_bias is None:
      raise ValueError("position_bias is required when the layer has no relative bias table")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    scores = scores + position_bias + mask_bias
    weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, inner)
    return _dense(cfg.d_model, ("heads", "embed"), "o", cfg)(out), position_bias


class DenseReluDense(nn.Module):
  """T5 feed-forward: `wo(act(wi x))`, or gated `wo(act(wi_0 x) * wi_1 x)`."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    if cfg.is_gated_act:
      h = (cfg.activation(_dense(cfg.d_ff, ("embed", "mlp"), "wi_0", cfg)(x))
           * _dense(cfg.d_ff, ("embed", "mlp"), "wi_1", cfg)(x))
    else:
      h = cfg.activation(_dense(cfg.d_ff, ("embed", "mlp"), "wi", cfg)(x))
    return _dense(cfg.d_model, ("mlp", "embed"), "wo", cfg)(h)


class LayerSelfAttention(nn.Module):
  """Pre-norm residual self-attention sublayer (HF `T5LayerSelfAttention`, tree `layer_0`)."""

  config: T5Config
  has_relative_attention_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, mask_bias: Array,
               position_bias: Array | None) -> tuple[Array, Array]:
    cfg = self.config
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name="layer_norm")(x)
    h, position_bias = SelfAttention(cfg, self.has_relative_attention_bias, name="SelfAttention")(
      h, mask_bias, position_bias)
    return x + h, position_bias


class LayerFF(nn.Module):
  """Pre-norm residual feed-forward sublayer (HF `T5LayerFF`, tree `layer_1`)."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name="layer_norm")(x)
    return x + DenseReluDense(cfg, name="DenseReluDense")(h)


class T5Block(nn.Module):
  """One encoder block: self-attention (`layer_0`) then feed-forward (`layer_1`)."""

  config: T5Config
  has_relative_attention_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, mask_bias: Array,
               position_bias: Array | None) -> tuple[Array, Array]:
    x, position_bias = LayerSelfAttention(self.config, self.has_relative_attention_bias,
                                          name="layer_0")(x, mask_bias, position_bias)
    return LayerFF(self.config, name="layer_1")(x), position_bias


class T5Encoder(nn.Module):
  """The T5 encoder stack: (B, L) token ids and padding mask → (B, L, d_model) hidden states."""

  config: T5Config

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
    cfg = self.config
    embed = nn.Embed(
      cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      name="embed_tokens",
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
    x = embed(input_ids.astype(jnp.int32))
    keep = attention_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, L_keys)
    mask_bias = jnp.where(keep, 0.0, _MASK_BIAS).astype(jnp.float32)
    position_bias = None
    for i in range(cfg.num_layers):
      x, position_bias = T5Block(cfg, has_relative_attention_bias=(i == 0), name=f"block_{i}")(
        x, mask_bias, position_bias)
    return RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name="final_layer_norm")(x)
