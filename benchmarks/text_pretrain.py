"""Experiment (issue 17, RESULTS §15): contrastive pretraining of the embedded tiny T5 on caption
paraphrases, text only — the objective that did *not* help (the ones that did are
`imagen_jax.text.pretrain`'s word and reading objectives, the demo's `text_pretrain`).

    python -m benchmarks.text_pretrain T5_DIR [--steps 3000] [--shapes square --sizes large]
    python -m benchmarks.text_pretrain --probe T5_DIR [T5_DIR ...] [--shapes square ...]

`--probe` only measures, for each T5 directory: a linear probe's held-out accuracy at reading,
from each colour token of a two-object caption, whether its object is the left/top one (chance
0.5) — and, for contrast, whether it was mentioned first.

Sentence-T5-style contrastive training (mean-pooled encoder output, a linear head, InfoNCE)
where the positive of a caption is its paraphrase — the same scene said the other way round
("A to the left of B" / "B to the right of A") — and every batch also holds each scene's mirror
("A to the right of B"), the hard negative. No image is seen. The encoder in T5_DIR
(config.json + model.safetensors, as `default_t5.build_default_t5` writes) is overwritten with
the trained weights; the head is discarded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def mirror(scene):
  """The other arrangement of the same two objects, said in the same order."""
  from imagen_jax.data.shapes_scene import INVERSE_RELATIONS, Scene

  return Scene(scene.objects, INVERSE_RELATIONS[scene.relation])


def side_probe(t5_dir, n: int = 1000, seed: int = 7, **restrictions) -> dict[str, float]:
  """Held-out accuracy (last quarter) of ridge-regression probes on the colour tokens of `n`
  two-object captions: is the object the left/top one; was it mentioned first. `separation`:
  the distance between the mean left/top and the mean right/bottom colour token over their
  RMS spread about those means (how loudly the tokens say it, where the probe says whether)."""
  from imagen_jax.data import shapes_scene
  from imagen_jax.text.encoder import TextEncoder

  encoder = TextEncoder.from_directory(t5_dir, max_length=16, batch_size=250)
  rng = np.random.default_rng(seed)
  scenes = []
  while len(scenes) < n:
    s = shapes_scene.sample_scene(rng, **{"p_two": 1.0, **restrictions})
    if len(s.objects) == 2:
      scenes.append(s)
  emb, _, tokens = encoder.encode([s.caption() for s in scenes])
  emb, ids = np.asarray(emb, np.float32), np.asarray(tokens.input_ids)
  colour_ids = [encoder.tokenizer.hf.convert_tokens_to_ids("\u2581" + c)
                for c in shapes_scene.COLOR_NAMES]
  x, side, first = [], [], []
  for i, s in enumerate(scenes):
    where = np.flatnonzero(np.isin(ids[i], colour_ids))
    if len(where) != 2:
      raise ValueError(f"expected two colour tokens in {s.caption()!r}, found {len(where)}")
    for k, j in enumerate(where):
      x.append(np.append(emb[i, j], 1.0))
      side.append(1.0 if (k == 0) == s.first_is_left_or_top else -1.0)
      first.append(1.0 if k == 0 else -1.0)
  x, m = np.array(x), len(x) * 3 // 4
  left = np.array(side) > 0
  a, b = x[left, :-1], x[~left, :-1]
  spread = np.sqrt((np.concatenate([a - a.mean(0), b - b.mean(0)]) ** 2).sum(1).mean())
  out = {"separation": float(np.linalg.norm(a.mean(0) - b.mean(0)) / spread)}
  for name, y in (("left_or_top", np.array(side)), ("first_mentioned", np.array(first))):
    w = np.linalg.solve(x[:m].T @ x[:m] + 1e-2 * np.eye(x.shape[1]), x[:m].T @ y[:m])
    out[name] = float(np.mean(np.sign(x[m:] @ w) == y[m:]))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("t5_dir", type=Path, nargs="+")
  ap.add_argument("--probe", action="store_true", help="only measure (side_probe)")
  ap.add_argument("--steps", type=int, default=3000)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--temperature", type=float, default=0.05)
  ap.add_argument("--p-two", type=float, default=1.0)
  ap.add_argument("--shapes", nargs="*", default=None)
  ap.add_argument("--sizes", nargs="*", default=None)
  ap.add_argument("--max-length", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  restrictions = {"shapes": tuple(args.shapes) if args.shapes else None,
                  "sizes": tuple(args.sizes) if args.sizes else None}
  if args.probe:
    for d in args.t5_dir:
      print(f"{d}: colour token probe {side_probe(d, **restrictions)}")
    return
  if len(args.t5_dir) != 1:
    ap.error("train one T5 directory at a time")
  args.t5_dir = args.t5_dir[0]

  import jax
  import jax.numpy as jnp
  import optax
  from flax import linen as nn

  from imagen_jax.data.shapes_scene import sample_scene
  from imagen_jax.text.t5 import T5Encoder
  from imagen_jax.text.tokenizer import Tokenizer
  from imagen_jax.text.weights import load_t5_encoder, save_t5_encoder

  config, t5_params = load_t5_encoder(args.t5_dir)
  tok = Tokenizer.from_directory(args.t5_dir, max_length=args.max_length)
  encoder = T5Encoder(config)
  head = nn.Dense(64, name="head")
  head_params = head.init(jax.random.key(args.seed), jnp.zeros((1, config.d_model)))["params"]
  params = {"t5": jax.tree.map(jnp.asarray, t5_params), "head": head_params}
  rng = np.random.default_rng(args.seed)
  kw = dict(p_two=args.p_two, shapes=tuple(args.shapes) if args.shapes else None,
            sizes=tuple(args.sizes) if args.sizes else None)

  def batch():
    scenes = [sample_scene(rng, **kw) for _ in range(args.batch)]
    scenes += [mirror(s) for s in scenes if len(s.objects) == 2]
    first = tok([s.caption() for s in scenes], warn=False)
    second = tok([s.paraphrase().caption() for s in scenes], warn=False)
    return (first.input_ids, first.attention_mask, second.input_ids, second.attention_mask)

  def embed(p, ids, mask):
    h = encoder.apply({"params": p["t5"]}, ids, mask)
    m = mask[..., None].astype(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1)
    e = head.apply({"params": p["head"]}, pooled)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

  def loss_fn(p, ids1, m1, ids2, m2):
    e1, e2 = embed(p, ids1, m1), embed(p, ids2, m2)
    logits = e1 @ e2.T / args.temperature
    labels = jnp.arange(logits.shape[0])
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
    return loss, (logits.argmax(1) == labels).mean()

  def hard_negative_test(p, n=512):
    """Share of two-object scenes whose paraphrase is nearer than both forms of their mirror."""
    test_rng = np.random.default_rng(args.seed + 1)
    scenes = []
    while len(scenes) < n:
      s = sample_scene(test_rng, **kw)
      if len(s.objects) == 2:
        scenes.append(s)
    forms = [scenes, [s.paraphrase() for s in scenes], [mirror(s) for s in scenes],
             [mirror(s).paraphrase() for s in scenes]]
    tokens = [tok([s.caption() for s in f], warn=False) for f in forms]
    e = [np.asarray(embed(p, t.input_ids, t.attention_mask)) for t in tokens]
    sim = [np.sum(e[0] * x, -1) for x in e[1:]]
    return float(np.mean((sim[0] > sim[1]) & (sim[0] > sim[2])))

  print(f"hard-negative test before: {hard_negative_test(params):.3f}")
  opt = optax.adam(args.lr)
  state = opt.init(params)

  @jax.jit
  def step(p, s, *b):
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, *b)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss, acc

  start = time.time()
  for i in range(args.steps + 1):
    b = batch()
    if i == args.steps:
      loss, acc = jax.jit(loss_fn)(params, *b)
      print(f"final held-out batch: loss {float(loss):.3f} paraphrase retrieval {float(acc):.3f}")
      print(f"hard-negative test after: {hard_negative_test(params):.3f}")
      break
    params, state, loss, acc = step(params, state, *b)
    if i % 250 == 0:
      print(f"step {i}: loss {float(loss):.3f} acc {float(acc):.3f} ({time.time() - start:.0f} s)",
            flush=True)
  save_t5_encoder(args.t5_dir, config, jax.tree.map(np.asarray, params["t5"]))
  print(f"wrote {args.t5_dir}")


if __name__ == "__main__":
  main()
