"""One pure training step for any cascade stage.

`make_train_step(...)` returns `step(state, batch) -> (state, metrics)`, to be compiled with
`jax.jit(step, in_shardings=..., out_shardings=..., donate_argnums=(0,))`. Per step it:

  1. derives its randomness from the state's key folded with the step number;
  2. drops the text of a `p_uncond` share of the examples (zero embeddings, all-False mask — the
     same input the sampler's unconditional branch gets) for classifier-free guidance;
  3. for SR stages, noises the low-res conditioning image at a random aug level per example;
  4. draws t and ε, applies the objective (`diffusion_loss`), differentiates;
  5. clips and applies the update — unless the loss or the gradient norm is not finite, in which
     case parameters and optimiser state are kept, and the skip is counted;
  6. updates the EMA of the parameters, with a warm-up (`ema_decay_at`): a short run's EMA
     must not keep a share of the random initial weights.

Batch: 'image' (B, H, W, 3) in [−1, 1]; 'text_embeddings' (B, L, D); 'text_mask' (B, L); and for SR
stages 'lowres' (B, h, w, 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imagen_jax.diffusion.objectives import LossConfig, NoiseAugmentation, diffusion_loss
from imagen_jax.diffusion.schedules import AnySchedule
from imagen_jax.models.unet import UNet, UNetConfig
from imagen_jax.train.state import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a train step needs besides the state and the batch (all static under jit)."""

  model: UNetConfig
  schedule: AnySchedule
  loss: LossConfig
  p_uncond: float = 0.1
  ema_decay: float = 0.9999
  ema_warmup: bool = True
  noise_augmentation: NoiseAugmentation | None = None  # SR stages


def ema_decay_at(step: Array, decay: float, warmup: bool = True) -> Array:
  """The EMA decay used by update `step` (0-based): min(decay, (1 + t)/(10 + t)) with warm-up.

  This is TF's `ExponentialMovingAverage(num_updates=t)`. Without it, the EMA starts at the
  initial weights and keeps decay^t of them after t updates: 0.99^300 = 5% of random weights in the
  demo's SR stage after its 300 steps, whose EMA then denoised 2–2.5× worse than its raw weights at
  t = 0.02 … 0.5 (benchmarks/RESULTS.md, issue 17). With it, after 300 updates that share is
  ∏(1+i)/(10+i) ≈ 2e-17.
  """
  if not warmup:
    return jnp.float32(decay)
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def drop_text(key: Array, embeddings: Array, mask: Array, p_uncond: float) -> tuple[Array, Array]:
  """Replace the text of a random `p_uncond` share of examples by the null input."""
  keep = jax.random.bernoulli(key, 1.0 - p_uncond, (embeddings.shape[0],))
  return embeddings * keep[:, None, None].astype(embeddings.dtype), mask & keep[:, None]


def make_train_step(config: StepConfig, optimizer: optax.GradientTransformation,
                    learning_rate: Callable[[Array], Array]
                    ) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict]]:
  model = UNet(config.model)

  def step(state: TrainState, batch: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    drop_key, aug_key, loss_key, dropout_key = jax.random.split(key, 4)
    text, mask = drop_text(drop_key, batch["text_embeddings"], batch["text_mask"].astype(bool),
                           config.p_uncond)
    cond = {"text": text, "text_mask": mask}
    if config.model.lowres_cond:
      if config.noise_augmentation is None:
        raise ValueError("an SR stage needs a NoiseAugmentation in its StepConfig")
      cond["lowres"], cond["aug_level"] = config.noise_augmentation.train(batch["lowres"],
                                                                          aug_key)

    def denoise(params, x_t, logsnr, c):
      return model.apply({"params": params}, x_t, logsnr, c["text"], c["text_mask"],
                         lowres=c.get("lowres"), aug_level=c.get("aug_level"), train=True,
                         rngs={"dropout": dropout_key})

    def loss_fn(params):
      per_example, _ = diffusion_loss(denoise, params, batch["image"], cond, loss_key,
                                      config.schedule, config.loss)
      return jnp.mean(per_example)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return apply_gradients(state, loss, grads, optimizer, learning_rate, config.ema_decay,
                           config.ema_warmup)

  return step


def apply_gradients(state: TrainState, loss: Array, grads: Any,
                    optimizer: optax.GradientTransformation,
                    learning_rate: Callable[[Array], Array], ema_decay: float,
                    ema_warmup: bool = True, extra_metrics: dict[str, Array] | None = None
                    ) -> tuple[TrainState, dict[str, Array]]:
  """Steps 5 and 6 of every stage's train step (ours and DeepFloyd IF's, `train/if_finetune.py`):
  the update, unless the loss or the gradient norm is not finite (then parameters and optimiser
  state are kept and the skip is counted), and the warmed-up EMA. Returns the new state and the
  step's metrics (plus `extra_metrics`)."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(_):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    return params, opt_state, ema

  def keep_state(_):
    return state.params, state.opt_state, state.ema_params

  # A branch, not a select over every leaf: skipping is rare, and `where(finite, new, old)` on
  # parameters, optimiser state and EMA costs a full extra pass over the train state each step.
  params, opt_state, ema = jax.lax.cond(finite, apply_update, keep_state, None)
  skipped = (~finite).astype(jnp.int32)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state, nonfinite_total=state.nonfinite_total + skipped,
                            nonfinite_run=(state.nonfinite_run + 1) * skipped)
  metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate(state.step),
             "skipped": skipped, "nonfinite_run": new_state.nonfinite_run,
             **(extra_metrics or {})}
  return new_state, metrics
