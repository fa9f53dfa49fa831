"""The train state, its optimiser, and creating it already sharded.

`TrainState` holds everything a step updates — step, params, EMA params, optimiser state, the PRNG
key (as raw uint32 key data, so it checkpoints like any array), and counters of skipped non-finite
updates. It is created abstractly first (`jax.eval_shape`), the abstract tree gives the shardings,
and `jax.jit(init, out_shardings=...)` then materialises it directly on the mesh: no host ever holds
the full unsharded model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from imagen_jax import sharding as shd

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar
  params: Any
  ema_params: Any
  opt_state: Any
  rng: Array  # uint32 key data
  nonfinite_total: Array  # int32: updates skipped because the loss or gradients were not finite
  nonfinite_run: Array  # int32: consecutive skipped updates (reset by a finite one)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Imagen: Adafactor for the base model, Adam for SR; lr 1e-4 after 10k warm-up steps."""

  name: str = "adam"  # 'adam' | 'adamw' | 'adafactor'
  lr: float = 1e-4
  warmup_steps: int = 10_000
  schedule: str = "constant"  # 'constant' | 'cosine' (to 0 at total_steps)
  total_steps: int = 2_500_000
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip: float = 1.0  # global-norm clipping; 0 disables

  def __post_init__(self):
    if self.name not in ("adam", "adamw", "adafactor"):
      raise ValueError(f"unknown optimizer {self.name!r}; choose 'adam', 'adamw' or 'adafactor'")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"unknown lr schedule {self.schedule!r}; choose 'constant' or 'cosine'")


def learning_rate(cfg: OptimizerConfig) -> optax.Schedule:
  warmup = max(cfg.warmup_steps, 0)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warmup, 1),
                                              max(cfg.total_steps, warmup + 1))
  if warmup == 0:
    return optax.constant_schedule(cfg.lr)
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup),
                               optax.constant_schedule(cfg.lr)], [warmup])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  lr = learning_rate(cfg)
  if cfg.name == "adafactor":
    tx = optax.adafactor(lr, multiply_by_parameter_scale=False, clipping_threshold=None,
                         weight_decay_rate=cfg.weight_decay or None)
  elif cfg.name == "adamw":
    tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx


def init_state(init_params: Callable[[Array], Any], optimizer: optax.GradientTransformation,
               seed_key: Array) -> TrainState:
  """A fresh state; `init_params(key)` returns the (boxed) parameter tree."""
  init_key, rng = jax.random.split(seed_key)
  params = init_params(init_key)
  unboxed = nn.unbox(params)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params,
                    ema_params=jax.tree.map(jnp.copy, unboxed),
                    opt_state=optimizer.init(unboxed), rng=jax.random.key_data(rng),
                    nonfinite_total=zero, nonfinite_run=zero)


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules: shd.Rules) -> TrainState:
  """Shardings for every leaf of a (boxed, abstract) state.

  Parameters follow their logical axis names. Subtrees of the EMA and optimiser state that mirror
  the parameter tree (EMA, Adam's mu and nu) take each parameter's sharding where the shapes match
  (Adafactor's factored row/column statistics do not, and stay replicated); anything else — step
  counters, the PRNG key — is replicated.
  """
  abstract_params = shd.strip_boxes(abstract_state.params)
  param_sh = shd.param_shardings(abstract_state.params, mesh, rules)
  structure = jax.tree.structure(abstract_params)
  rep = shd.replicated(mesh)

  def mirrors(x) -> bool:
    return isinstance(x, (dict, tuple, list)) and jax.tree.structure(x) == structure

  def assign(x):
    if mirrors(x):
      return jax.tree.map(lambda leaf, p, sh: sh if leaf.shape == p.shape else rep, x,
                          abstract_params, param_sh)
    return rep

  return TrainState(step=rep, params=param_sh, ema_params=assign(abstract_state.ema_params),
                    opt_state=jax.tree.map(assign, abstract_state.opt_state, is_leaf=mirrors),
                    rng=rep, nonfinite_total=rep, nonfinite_run=rep)


def create_sharded_state(init_params: Callable[[Array], Any], optimizer: optax.GradientTransformation,
                         seed: int, mesh: Mesh, rules: shd.Rules) -> tuple[TrainState, TrainState]:
  """(state, shardings): abstract init → shardings → jit(init, out_shardings) on the mesh.

  The returned state has plain (unboxed) arrays, laid out as the shardings say."""
  make = lambda: init_state(init_params, optimizer, jax.random.key(seed))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = state_shardings(jax.eval_shape(make), mesh, rules)
    state = jax.jit(lambda: _unbox_state(make()), out_shardings=shardings)()
  return state, shardings


def abstract_sharded_state(init_params: Callable[[Array], Any],
                           optimizer: optax.GradientTransformation, mesh: Mesh, rules: shd.Rules
                           ) -> tuple[TrainState, TrainState]:
  """(abstract state, shardings) as `create_sharded_state` would lay them out, allocating nothing:
  the input of an ahead-of-time compile (`imagen_jax.plan`)."""
  make = lambda: init_state(init_params, optimizer, jax.random.key(0))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shapes = jax.eval_shape(make)
    shardings = state_shardings(shapes, mesh, rules)
  return abstract_state(_unbox_state(shapes), shardings), shardings


def _unbox_state(state: TrainState) -> TrainState:
  return state.replace(params=nn.unbox(state.params))


def abstract_state(state_or_shapes: TrainState, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings, the target of a sharded checkpoint restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_or_shapes, shardings)


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))
