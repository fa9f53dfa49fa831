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

This module gives the tiny T5 that knowledge from text alone, the way T5 got its own from C4.
No image is seen; the heads are discarded and the encoder frozen as before. Two objectives
(`objective`):

- "words" (the default; the demo's): each token alone says what its word belongs to — where its
  object is (left, right, top, bottom, the only one) and that object's colour, shape and size
  (`Scene.word_reading`) — through a cosine classifier of fixed scale, so no head weight can grow
  the margin and the token's direction must carry it. Probe on the colour tokens (is the object
  the left/top one): 1.00 on the demo's captions and the toy's; `separation` (the distance
  between the two sides' mean tokens over their spread) 0.58–0.60 on the demo's captions, 0.74–
  0.83 on the toy of two squares over three seeds (600 steps of 64, 10–25 s).
- "reading": from the whole caption, say what it describes in a canonical order (the relation's
  axis, then the left/top object's colour, shape and size, then the other's), read by one learnt
  query per slot attending over the tokens (a one-layer non-autoregressive decoder) and a linear
  classifier per slot. A query can only find "the left object's colour" if the colour tokens say
  which side their object is on (probe 58% → 98% on the demo's captions) — but a head can grow
  its own margin, so how loudly they say it depends on the seed (separation 0.26–0.58 on the toy).

With loud tokens the base stage learns the relation's direction in the toy (benchmarks/RESULTS.md
issue 17 §15–16). The training loop draws and tokenizes each batch on the host and runs one
jitted step per batch (host ≈ 8 ms a batch of 64, measured; 600 steps take 10–25 s).
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
  """Captions and what they say: `sample(rng, n)` → (n captions, (n, slots) int labels with
  `num_classes[s]` classes in slot s, and per caption a (words, len(word_classes)) int array: what
  each word (split on spaces) belongs to). `spec` names the task and its settings (recorded)."""

  spec: dict[str, Any]
  num_classes: tuple[int, ...]
  word_classes: tuple[int, ...]
  sample: Callable[[np.random.Generator, int], tuple[list[str], np.ndarray, list[np.ndarray]]]


def shapes_reading_task(p_two: float = 0.6, shapes=None, sizes=None, relations=None,
                        relation_weights=None, paired: bool = False) -> ReadingTask:
  """The shapes captions (drawn as `shapes_scene.sample_scene` draws scenes, restrictions
  included), their canonical reading (`shapes_scene.Scene.reading`) and their words' reading
  (`Scene.word_reading`). `paired`: half of each batch is drawn, the other half is the same
  scenes said the other way round ("B to the right of A" for "A to the left of B"), with the same
  reading."""
  from imagen_jax.data import shapes_scene

  kw = {"p_two": p_two, "shapes": shapes, "sizes": sizes, "relations": relations,
        "relation_weights": relation_weights}

  def sample(rng: np.random.Generator, n: int):
    scenes = [shapes_scene.sample_scene(rng, **kw) for _ in range((n + 1) // 2 if paired else n)]
    if paired:
      scenes = (scenes + [s.paraphrase() for s in scenes])[:n]
    words = [np.array([w for _, w in s.word_reading()], np.int32) for s in scenes]
    return [s.caption() for s in scenes], np.array([s.reading() for s in scenes], np.int32), words

  spec = {"task": "shapes", **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
  if paired:
    spec["paired"] = True
  return ReadingTask(spec, shapes_scene.READING_CLASSES, shapes_scene.WORD_CLASSES, sample)


OBJECTIVES = ("words", "reading")
WORD_LOGIT_SCALE = 10.0  # cosine classifier: logits = 10 × cos(token, class vector)


def pretrain_t5(t5_dir: str | Path, task: ReadingTask, *, steps: int = 600, batch_size: int = 64,
                lr: float = 1e-3, seed: int = 0, max_length: int = 16,
                data_seed: int | None = None, objective: str = "words",
                log: Callable[[str], None] | None = print) -> dict[str, Any]:
  """Train the T5 encoder in `t5_dir` (config.json + model.safetensors + tokenizer, as
  `default_t5.build_default_t5` writes it) on `task`; overwrite its weights and write
  `pretraining.json` (returned): the task, the settings, and the held-out accuracy before and
  after. Deterministic for a given seed (`seed` draws the heads' initial weights, `data_seed` —
  default `seed` — the training captions).

  `objective`: "reading" — the caption's canonical reading through one learnt query per slot
  (accuracy: every slot right); "words" — each token's own reading (what its word belongs to:
  `task.word_classes`) from the token alone, by a cosine classifier (logits = 10 × the cosine
  between the token and a learnt class vector), so the token itself must say it and say it
  loudly — no head weight can grow the margin for it (accuracy: tokens with every slot right)."""
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
  if objective not in OBJECTIVES:
    raise ValueError(f"text pretraining objective {objective!r}: choose one of {OBJECTIVES}")
  reading, words = objective == "reading", objective == "words"
  data_seed = seed if data_seed is None else data_seed
  t5_dir = Path(t5_dir)
  config, t5_params = load_t5_encoder(t5_dir)
  tokenizer = Tokenizer.from_directory(t5_dir, max_length=max_length)
  encoder = T5Encoder(config)
  readout = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=config.d_model)
  heads = [nn.Dense(c) for c in task.num_classes]
  keys = jax.random.split(jax.random.key(seed), 2 + len(heads))
  slots = len(task.num_classes)
  queries = 0.1 * jax.random.normal(keys[0], (slots, config.d_model))
  params = {"t5": jax.tree.map(jnp.asarray, t5_params)}
  if reading:
    params |= {
        "queries": queries,
        "readout": readout.init(keys[1], queries[None],
                                jnp.zeros((1, 2, config.d_model)))["params"],
        "heads": [h.init(k, jnp.zeros((1, config.d_model)))["params"]
                  for h, k in zip(heads, keys[2:])]}
  if words:
    word_keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1),
                                 len(task.word_classes))
    params["word_heads"] = [jax.random.normal(k, (config.d_model, c))
                            for k, c in zip(word_keys, task.word_classes)]

  def unit(x, axis):
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis, keepdims=True) + 1e-12)

  def loss_fn(p, ids, mask, labels, word_labels):
    hidden = encoder.apply({"params": p["t5"]}, ids, mask)
    loss, metrics = 0.0, {}
    if reading:
      q = jnp.broadcast_to(p["queries"], (hidden.shape[0], slots, config.d_model))
      read = readout.apply({"params": p["readout"]}, q, hidden, mask=mask[:, None, None, :])
      right = []
      for s, head in enumerate(heads):
        logits = head.apply({"params": p["heads"][s]}, read[:, s])
        loss += optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, s]).mean()
        right.append(logits.argmax(-1) == labels[:, s])
      metrics["readout"] = jnp.stack(right, 1).all(1).mean()
    if words:
      weight, right = mask / mask.sum(), []
      for s, w in enumerate(p["word_heads"]):
        logits = WORD_LOGIT_SCALE * unit(hidden, -1) @ unit(w, 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, word_labels[..., s])
        loss += (ce * weight).sum()
        right.append(logits.argmax(-1) == word_labels[..., s])
      metrics["words"] = (jnp.stack(right, -1).all(-1) * weight).sum()
    return loss, metrics

  opt = optax.adam(lr)

  @jax.jit
  def step(p, state, *batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, *batch)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, metrics

  def show(metrics):
    return ", ".join(f"{k} right {float(v):.3f}" for k, v in metrics.items())

  evaluate = jax.jit(loss_fn)
  rng, pieces = np.random.default_rng(data_seed), {} if words else None
  held_out = _batch(task, tokenizer, np.random.default_rng((seed, 1)), 512, pieces)
  before = evaluate(params, *held_out)[1]
  state, start = opt.init(params), time.time()
  for i in range(steps):
    batch = _batch(task, tokenizer, rng, batch_size, pieces)
    params, state, loss, metrics = step(params, state, *batch)
    if log and (i % max(1, steps // 4) == 0 or i == steps - 1):
      log(f"[text pretraining] step {i + 1}/{steps}: loss {float(loss):.4f}, {show(metrics)}")
  loss, after = evaluate(params, *held_out)
  save_t5_encoder(t5_dir, config, jax.tree.map(np.asarray, params["t5"]))
  record = {**task.spec, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "max_length": max_length, "data_seed": data_seed, "objective": objective}
  names = {"readout": "held_out_readout_right", "words": "held_out_words_right"}
  for k in after:
    record[names[k] + "_before"] = round(float(before[k]), 4)
    record[names[k] + "_after"] = round(float(after[k]), 4)
  record |= {"held_out_loss": round(float(loss), 5), "seconds": round(time.time() - start, 1)}
  (t5_dir / RECORD).write_text(json.dumps(record, indent=2))
  return record


def _batch(task: ReadingTask, tokenizer, rng: np.random.Generator, n: int,
           pieces: dict[str, list[int]] | None = None):
  """Token ids, mask and the captions' readings; with `pieces` (a cache of each word's token ids,
  filled here) also each token's word reading (its word's; 0 for the end token and padding),
  else None. A caption whose tokens are not its words' tokens in order is an error."""
  captions, labels, words = task.sample(rng, n)
  tokens = tokenizer(captions, warn=False)
  if pieces is None:
    return tokens.input_ids, tokens.attention_mask, labels, None
  word_labels = np.zeros((*tokens.input_ids.shape, len(task.word_classes)), np.int32)
  for i, (caption, w) in enumerate(zip(captions, words)):
    split = caption.split()
    for word in split:
      if word not in pieces:
        pieces[word] = tokenizer.hf(word, add_special_tokens=False)["input_ids"]
    seq = [t for word in split for t in pieces[word]]
    if tokens.attention_mask[i].sum() != len(seq) + 1 or \
        list(tokens.input_ids[i, :len(seq)]) != seq:
      raise ValueError(f"the tokenizer splits {caption!r} differently word by word than whole; "
                       "the word reading cannot be aligned to its tokens")
    word_labels[i, :len(seq)] = np.repeat(w, [len(pieces[word]) for word in split], axis=0)
  return tokens.input_ids, tokens.attention_mask, labels, word_labels


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
