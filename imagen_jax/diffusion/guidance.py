"""Classifier-free guidance and x̂₀ thresholding (Imagen §2.2–2.3).

Guidance: ŷ = ŷ_u + w·(ŷ_c − ŷ_u), with w = 1 meaning no guidance (the paper's weights are 1–10).
Because ε, v and x₀ are affine in one another at fixed (x_t, λ), and the weights (w, 1−w) sum to
one, guiding any parametrisation gives the same result; we guide the raw model output. Both
branches run in ONE model call on a doubled batch (conditional first, unconditional second).
A model with a learned variance (DeepFloyd IF: C prediction channels, then C channels of the
learned-range interpolation v, Nichol & Dhariwal 2021) has only its prediction guided; v is the
conditional branch's, exactly as diffusers' IF pipelines do (`learned_variance=True`).

Thresholding acts on the predicted x̂₀ at every sampling step:
  * static: clip to [−1, 1] (or [−m, m] with `max_value` m: diffusers' `clip_sample_range`);
  * dynamic: per sample, s = percentile(|x̂₀|, p) over all of that sample's pixels and channels
    (paper: p = 99.5); s ← max(s, 1); x̂₀ ← clip(x̂₀, −s, s)/s. One s per sample, never per batch.
    With `max_value` m, s ← min(max(s, 1), m): diffusers' `_threshold_sample` with
    `dynamic_thresholding_ratio` = p/100 and `sample_max_value` = m, the same linear-interpolation
    quantile (`torch.quantile`) and the same clamp. (diffusers computes the quantile's position
    in its input's dtype, float32 in its pipelines, which moves s by up to ~5e-6 for 3·64² images;
    ours, like its float64 run, computes it in float64.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.objectives import DenoiseFn, broadcast_to_image

Array = jax.Array


def guided_output(denoise_fn: DenoiseFn, params: Any, x: Array, logsnr: Array, cond: Any,
                  null_cond: Any, guidance_weight: float | Array, learned_variance: bool = False
                  ) -> Array:
  """Classifier-free guided model output, both branches in one batched call.

  `cond` and `null_cond` are pytrees of the same structure whose leaves have the batch as their
  leading axis (e.g. text embeddings and a mask, the null one being the model's "no text" input).
  `learned_variance`: the output's last axis holds x's C channels of prediction followed by C
  channels of learned variance; only the prediction is guided, the variance is the conditional
  branch's (diffusers' `pipeline_if.py`: `torch.cat([noise_pred, predicted_variance])`).
  """
  if jax.tree_util.tree_structure(cond) != jax.tree_util.tree_structure(null_cond):
    raise ValueError("cond and null_cond must be pytrees of the same structure, got "
                     f"{jax.tree_util.tree_structure(cond)} and "
                     f"{jax.tree_util.tree_structure(null_cond)}")
  batch = x.shape[0]
  both = jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, null_cond)
  out = denoise_fn(params, jnp.concatenate([x, x], axis=0), jnp.concatenate([logsnr, logsnr]),
                   both)
  cond_out, uncond_out = out[:batch], out[batch:]
  if not learned_variance:
    return uncond_out + guidance_weight * (cond_out - uncond_out)
  c = check_variance_channels(out, x)
  guided = uncond_out[..., :c] + guidance_weight * (cond_out[..., :c] - uncond_out[..., :c])
  return jnp.concatenate([guided, cond_out[..., c:]], axis=-1)


def check_variance_channels(output: Array, x: Array) -> int:
  """x's channel count C, after checking that `output` holds 2·C channels (prediction, variance)."""
  c = x.shape[-1]
  if output.shape[-1] != 2 * c:
    raise ValueError(f"learned_variance expects the model to output 2×{c} channels for a "
                     f"{c}-channel image (its prediction, then the learned-range variance "
                     f"interpolation), got output shape {output.shape} for x of shape {x.shape}; "
                     "set learned_variance=False for a model without variance channels")
  return c


def static_threshold(x0: Array, limit: float = 1.0) -> Array:
  return jnp.clip(x0, -limit, limit)


def dynamic_threshold(x0: Array, percentile: float = 99.5, max_value: float | None = None
                      ) -> Array:
  """Imagen's dynamic thresholding with one threshold s per sample (axis 0 is the batch).

  `percentile` is on the 0–100 scale (99.5 in the paper). `max_value` optionally caps s (diffusers'
  `sample_max_value`); None means no cap, as in the paper.
  """
  _check_percentile(percentile)
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = row_percentile(flat, percentile)  # linear interpolation, like torch.quantile
  s = jnp.maximum(s, 1.0)
  if max_value is not None:
    s = jnp.minimum(s, max_value)
  s = broadcast_to_image(s, x0)
  return (jnp.clip(x0, -s, s) / s).astype(x0.dtype)


_INT32_MAX = 0x7FFFFFFF


def row_percentile(flat: Array, percentile: float) -> Array:
  """`jnp.percentile(flat, percentile, axis=1)` (linear interpolation) for non-negative float32
  rows (B, n), without sorting them.

  Dynamic thresholding needs one pair of order statistics per sample at every sampling step, and
  `jnp.percentile` sorts each sample for it. For non-negative floats the int32 bit patterns are
  ordered like the values, so the k-th smallest value is found exactly by bisection on the bit
  pattern — 31 passes of `count(bits ≤ t)` — and the (k+1)-th is one masked min away. On this
  project's 2-core CPU (`python -m benchmarks.threshold`): 2.4 ms instead of 19.3 for 32 × 3·32²,
  47 ms instead of 1.44 s for one 3·1024² image. The interpolation position is computed in float64 (as numpy does), so
  this agrees with float64 `np.percentile` to float32 rounding; a row holding a NaN gives NaN.
  """
  n = flat.shape[1]
  pos = float(percentile) / 100.0 * (n - 1)
  k = min(int(pos), n - 1)
  frac = pos - k
  bits = jax.lax.bitcast_convert_type(flat.astype(jnp.float32), jnp.int32)

  def bisect(_, bounds):  # invariant: the answer lies in [lo, hi]
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid[:, None], axis=1, dtype=jnp.int32) >= k + 1
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  rows = flat.shape[0]
  lo, _ = jax.lax.fori_loop(0, 31, bisect, (jnp.zeros((rows,), jnp.int32),
                                             jnp.full((rows,), _INT32_MAX, jnp.int32)))
  low = jax.lax.bitcast_convert_type(lo, jnp.float32)
  if frac == 0.0:  # an exact order statistic (also keeps inf · 0 out of the interpolation)
    out = low
  else:
    ties = jnp.sum(bits <= lo[:, None], axis=1, dtype=jnp.int32) >= k + 2  # k+1 < n here
    above = jnp.min(jnp.where(bits > lo[:, None], bits, _INT32_MAX), axis=1)
    high = jax.lax.bitcast_convert_type(jnp.where(ties, lo, above), jnp.float32)
    out = low * jnp.float32(1.0 - frac) + high * jnp.float32(frac)
  return jnp.where(jnp.any(jnp.isnan(flat), axis=1), jnp.nan, out)


def _check_percentile(percentile: float) -> None:
  if not 50.0 <= percentile <= 100.0:
    hint = f"; did you mean {percentile * 100:g}?" if 0 < percentile <= 1 else ""
    raise ValueError(f"dynamic thresholding percentile is on the 0–100 scale and must lie in "
                     f"[50, 100], got {percentile}{hint}")


@dataclasses.dataclass(frozen=True)
class Thresholding:
  """How sampling constrains x̂₀: 'none', 'static' ([−1, 1]) or 'dynamic' (per-sample percentile).

  `max_value`: for 'dynamic' the cap on s (diffusers' `sample_max_value`; None: no cap, as in the
  paper); for 'static' the clip range (diffusers' `clip_sample_range`; None: 1).
  """

  kind: Literal["none", "static", "dynamic"] = "dynamic"
  percentile: float = 99.5
  max_value: float | None = None

  def __post_init__(self):
    if self.kind not in ("none", "static", "dynamic"):
      raise ValueError(f"unknown thresholding {self.kind!r}; choose 'none', 'static' or 'dynamic'")
    if self.kind == "dynamic":
      _check_percentile(self.percentile)
    if self.max_value is not None and not self.max_value > 0:
      raise ValueError(f"thresholding max_value must be positive (or None), got {self.max_value}")

  def __call__(self, x0: Array) -> Array:
    if self.kind == "static":
      return static_threshold(x0) if self.max_value is None else static_threshold(
          x0, self.max_value)
    if self.kind == "dynamic":
      return dynamic_threshold(x0, self.percentile, self.max_value)
    return x0
