"""Pretraining the embedded tiny T5 on its caption language, text only (issue 17).

Imagen's premise is a frozen text encoder that already knows its language: T5-XXL's tokens say
which object a colour belongs to and where that object is, so the diffusion model only has to map
those features to pixels. The embedded tiny T5 is random: a linear probe reads from its colour
tokens which was mentioned first (80% right on the demo's captions) but barely whether the
object is the left/top or the right/bottom one (58%; chance 50%) — "A to the right of B" puts
the first-mentioned on the right (`python -m benchmarks.text_pretrain --probe T5_DIR`).
Learning that from images alone is a three-way interaction (which object × where × which word)
the base stage does not find at CPU scale (benchmarks/RESULTS.md, issue 17 §14), while the
two-way form it learns in a few thousand steps.

This module gives the tiny T5 that knowledge from text alone, the way T5 got its own from C4:
a reading task — from a caption, say what it describes in a canonical order (for the shapes:
the axis of the relation, then the left/top object's colour, shape and size, then the other's).
The encoder is trained with a readout of one learnt query per slot attending over its tokens
(a one-layer, non-autoregressive decoder) and a linear classifier per slot; the readout is
discarded and the encoder frozen as before. A query can only find "the left object's colour" if
the colour tokens say which side their object is on, so that is what the encoder learns to put
in them (the probe on the demo's captions: 58% → 98% after 600 steps of 64, 14 s). No image
is seen. The training loop draws and tokenizes each batch on the host (≈ 5 ms of a ≈ 23 ms
step, measured) and runs one jitted step per batch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RECORD = "pretraining.json"  # written beside the weights: the task, its settings and the result


@dataclasses.dataclass(frozen=True)
class ReadingTask:
  """Captions and what they say: `sample(rng, n)` → (n captions, (n, slots) int labels), with
  `num_classes[s]` classes in slot s. `spec` names the task and its settings (recorded)."""

  spec: dict[str, Any]
  num_classes: tuple[int, ...]
  sample: Callable[[np.random.Generator, int], tuple[list[str], np.ndarray]]


def shapes_reading_task(p_two: float = 0.6, shapes=None, sizes=None, relations=None,
                        relation_weights=None, paired: bool = False) -> ReadingTask:
  """The shapes captions (drawn as `shapes_scene.sample_scene` draws scenes, restrictions
  included) and their canonical reading (`shapes_scene.Scene.reading`). `paired`: half of each
  batch is drawn, the other half is the same scenes said the other way round ("B to the right
  of A" for "A to the left of B"), with the same reading."""
  from imagen_jax.data import shapes_scene

  kw = {"p_two": p_two, "shapes": shapes, "sizes": sizes, "relations": relations,
        "relation_weights": relation_weights}

  def sample(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    scenes = [shapes_scene.sample_scene(rng, **kw) for _ in range((n + 1) // 2 if paired else n)]
    if paired:
      scenes = (scenes + [s.paraphrase() for s in scenes])[:n]
    return [s.caption() for s in scenes], np.array([s.reading() for s in scenes], np.int32)

  spec = {"task": "shapes", **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
  if paired:
    spec["paired"] = True
  return ReadingTask(spec, shapes_scene.READING_CLASSES, sample)


def pretrain_t5(t5_dir: str | Path, task: ReadingTask, *, steps: int = 600, batch_size: int = 64,
                lr: float = 1e-3, seed: int = 0, max_length: int = 16,
                data_seed: int | None = None,
                log: Callable[[str], None] | None = print) -> dict[str, Any]:
  """Train the T5 encoder in `t5_dir` (config.json + model.safetensors + tokenizer, as
  `default_t5.build_default_t5` writes it) on `task`; overwrite its weights and write
  `pretraining.json` (returned): the task, the settings, and the readout's accuracy (every slot
  right) on fresh captions before and after. Deterministic for a given seed (`seed` draws the
  readout's initial weights, `data_seed` — default `seed` — the training captions)."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import linen as nn

  from imagen_jax.text.t5 import T5Encoder
  from imagen_jax.text.tokenizer import Tokenizer
  from imagen_jax.text.weights import load_t5_encoder, save_t5_encoder

  if steps < 1 or batch_size < 1:
    raise ValueError(f"text pretraining needs steps >= 1 and batch_size >= 1, got {steps}, "
                     f"{batch_size} (steps 0 means: do not pretrain; do not call this)")
  t5_dir = Path(t5_dir)
  config, t5_params = load_t5_encoder(t5_dir)
  tokenizer = Tokenizer.from_directory(t5_dir, max_length=max_length)
  encoder = T5Encoder(config)
  readout = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=config.d_model)
  heads = [nn.Dense(c) for c in task.num_classes]
  keys = jax.random.split(jax.random.key(seed), 2 + len(heads))
  slots = len(task.num_classes)
  queries = 0.1 * jax.random.normal(keys[0], (slots, config.d_model))
  params = {
      "t5": jax.tree.map(jnp.asarray, t5_params), "queries": queries,
      "readout": readout.init(keys[1], queries[None], jnp.zeros((1, 2, config.d_model)))["params"],
      "heads": [h.init(k, jnp.zeros((1, config.d_model)))["params"]
                for h, k in zip(heads, keys[2:])]}

  def loss_fn(p, ids, mask, labels):
    hidden = encoder.apply({"params": p["t5"]}, ids, mask)
    q = jnp.broadcast_to(p["queries"], (hidden.shape[0], slots, config.d_model))
    read = readout.apply({"params": p["readout"]}, q, hidden, mask=mask[:, None, None, :])
    loss, right = 0.0, []
    for s, head in enumerate(heads):
      logits = head.apply({"params": p["heads"][s]}, read[:, s])
      loss += optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, s]).mean()
      right.append(logits.argmax(-1) == labels[:, s])
    return loss, jnp.stack(right, 1).all(1).mean()

  opt = optax.adam(lr)

  @jax.jit
  def step(p, state, ids, mask, labels):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, ids, mask, labels)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, acc

  evaluate = jax.jit(loss_fn)
  rng = np.random.default_rng(seed if data_seed is None else data_seed)
  held_out = _batch(task, tokenizer, np.random.default_rng((seed, 1)), 512)
  before = float(evaluate(params, *held_out)[1])
  state, start = opt.init(params), time.time()
  for i in range(steps):
    params, state, loss, acc = step(params, state, *_batch(task, tokenizer, rng, batch_size))
    if log and (i % max(1, steps // 4) == 0 or i == steps - 1):
      log(f"[text pretraining] step {i + 1}/{steps}: loss {float(loss):.4f}, "
          f"readout right {float(acc):.3f}")
  loss, after = (float(x) for x in evaluate(params, *held_out))
  save_t5_encoder(t5_dir, config, jax.tree.map(np.asarray, params["t5"]))
  record = {**task.spec, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "max_length": max_length, "data_seed": seed if data_seed is None else data_seed,
            "held_out_readout_right_before": round(before, 4),
            "held_out_readout_right_after": round(after, 4), "held_out_loss": round(loss, 5),
            "seconds": round(time.time() - start, 1)}
  (t5_dir / RECORD).write_text(json.dumps(record, indent=2))
  return record


def _batch(task: ReadingTask, tokenizer, rng: np.random.Generator, n: int):
  captions, labels = task.sample(rng, n)
  tokens = tokenizer(captions, warn=False)
  return tokens.input_ids, tokens.attention_mask, labels


def expected_record(task: ReadingTask, settings: dict[str, Any]) -> dict[str, Any]:
  """The task and settings part of the record `pretrain_t5(dir, task, **settings)` writes
  (defaults filled in), as it reads back from JSON."""
  import inspect

  params = inspect.signature(pretrain_t5).parameters
  defaults = {k: p.default for k, p in params.items()
              if p.default is not inspect.Parameter.empty and k != "log"}
  wanted = {**task.spec, **defaults, **{k: v for k, v in settings.items() if k != "log"}}
  if wanted["data_seed"] is None:
    wanted["data_seed"] = wanted["seed"]
  return json.loads(json.dumps(wanted))


def read_record(t5_dir: str | Path) -> dict[str, Any] | None:
  """The `pretraining.json` of a T5 directory (None: not pretrained here)."""
  path = Path(t5_dir) / RECORD
  return json.loads(path.read_text()) if path.is_file() else None
