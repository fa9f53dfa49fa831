"""The diffusion core end to end on a class-conditional 2-D toy problem (`imagen-jax demo` for now).

Data: K Gaussian modes on a circle, class label = mode index. A small MLP denoiser is trained with
`diffusion_loss`, labels dropped to a null label with probability p_uncond (classifier-free guidance
training, as Imagen drops text), then sampled with each configured sampler at several guidance
weights through `jit_sample`. What it shows: class accuracy (nearest mode = prompted mode, chance =
1/K at w = 0), how tight samples sit around their mode vs the data, sampling cost; plus a check of
the samplers alone with the exact ε-predictor of one Gaussian, which needs no training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from imagen_jax.configlib import ConfigError, config_to_json
from imagen_jax.diffusion import (LossConfig, SamplerConfig, Thresholding, alpha_sigma,
                                  diffusion_loss, get_schedule, jit_sample)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ToyData:
  """`num_modes` isotropic Gaussians N(c_k, std²·I), centres c_k on a circle of `radius`."""

  num_modes: int = 4
  radius: float = 0.5
  std: float = 0.2

  def centres(self) -> np.ndarray:
    angles = 2 * np.pi * np.arange(self.num_modes) / self.num_modes
    return (self.radius * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)

  def sample(self, key: Array, batch: int) -> tuple[Array, Array]:
    """(x (batch, 2), labels (batch,) int32)."""
    l_key, n_key = jax.random.split(key)
    labels = jax.random.randint(l_key, (batch,), 0, self.num_modes)
    noise = jax.random.normal(n_key, (batch, 2))
    return jnp.asarray(self.centres())[labels] + self.std * noise, labels


def logsnr_features(u: Array, dim: int, max_freq: float = 100.0) -> Array:
  """[u, sin(f·u), cos(f·u)] with dim/2 frequencies f geometric in [1, max_freq]; u ≈ λ/20."""
  freqs = jnp.exp(jnp.linspace(0.0, math.log(max_freq), dim // 2))
  args = u[:, None] * freqs
  return jnp.concatenate([u[:, None], jnp.sin(args), jnp.cos(args)], axis=-1)


class ToyDenoiser(nn.Module):
  """Residual MLP: (x (B,2), λ (B,), label (B,) in [0, num_classes]) -> output (B,2).

  Label `num_classes` is the null ("unconditional") label.
  """

  num_classes: int
  width: int = 128
  depth: int = 3
  embed_dim: int = 32
  logsnr_scale: float = 20.0

  @nn.compact
  def __call__(self, x: Array, logsnr: Array, label: Array) -> Array:
    emb = logsnr_features(logsnr.astype(jnp.float32) / self.logsnr_scale, self.embed_dim)
    c = nn.Dense(self.width)(emb) + nn.Embed(self.num_classes + 1, self.width)(label)
    c = nn.silu(nn.Dense(self.width)(nn.silu(c)))
    h = nn.Dense(self.width)(x)
    for _ in range(self.depth):
      y = nn.Dense(self.width)(nn.LayerNorm()(h)) + nn.Dense(self.width)(c)
      h = h + nn.Dense(self.width)(nn.silu(y))
    return nn.Dense(2)(nn.silu(nn.LayerNorm()(h)))


@dataclasses.dataclass(frozen=True)
class ToyDenoiseFn:
  """`denoise_fn(params, x_t, logsnr, cond)` of the diffusion core; hashable (a static jit arg)."""

  model: ToyDenoiser

  def __call__(self, params: Any, x: Array, logsnr: Array, label: Array) -> Array:
    return self.model.apply({"params": params}, x, logsnr, label)


def gaussian_eps(params: tuple[Array, Array], x: Array, logsnr: Array, cond: Any) -> Array:
  """Exact E[ε | x_t] for data N(mean, std²·I): σ·(x_t − α·mean)/(α²·std² + σ²)."""
  mean, std = params
  alpha, sigma = (a[:, None] for a in alpha_sigma(logsnr))
  return sigma * (x - alpha * mean) / (alpha**2 * std**2 + sigma**2)


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates (a pytree, donated to the step)."""

  step: Array
  params: Any
  ema_params: Any
  opt_state: Any


def train_step(state: TrainState, data_key: Array, train_key: Array, *, denoise_fn: ToyDenoiseFn,
               optimizer: optax.GradientTransformation, data: ToyData, schedule: Any,
               loss_config: LossConfig, batch_size: int, p_uncond: float, ema_decay: float
               ) -> tuple[TrainState, dict[str, Array]]:
  """One pure update on a fresh batch; keys are folded with the step."""
  x0, labels = data.sample(jax.random.fold_in(data_key, state.step), batch_size)
  drop_key, loss_key = jax.random.split(jax.random.fold_in(train_key, state.step))
  dropped = jax.random.bernoulli(drop_key, p_uncond, labels.shape)
  labels = jnp.where(dropped, data.num_modes, labels)

  def loss_fn(params):
    loss, _ = diffusion_loss(denoise_fn, params, x0, labels, loss_key, schedule, loss_config)
    return jnp.mean(loss)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
  return TrainState(state.step + 1, params, ema, opt_state), {"loss": loss}


def train(config: ml_collections.ConfigDict, denoise_fn: ToyDenoiseFn, data: ToyData,
          schedule: Any, loss_config: LossConfig) -> tuple[TrainState, list[list[float]]]:
  """Train; returns the state and [step, mean loss since the previous log] rows."""
  tc = config.train
  warmup = min(max(tc.warmup_steps, 1), max(tc.steps - 1, 1))  # a short run still decays
  lr = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(tc.steps, warmup + 1))
  optimizer = optax.adam(lr)
  init_key, train_key = jax.random.split(jax.random.key(tc.seed))
  params = denoise_fn.model.init(init_key, jnp.zeros((1, 2)), jnp.zeros((1,)),
                                 jnp.zeros((1,), jnp.int32))["params"]
  ema = jax.tree.map(jnp.copy, params)  # separate buffers: the whole state is donated
  state = TrainState(jnp.array(0, jnp.int32), params, ema, optimizer.init(params))
  step_fn = jax.jit(functools.partial(
      train_step, denoise_fn=denoise_fn, optimizer=optimizer, data=data, schedule=schedule,
      loss_config=loss_config, batch_size=tc.batch_size, p_uncond=tc.p_uncond,
      ema_decay=tc.ema_decay), donate_argnums=(0,))
  data_key = jax.random.key(config.data.seed)
  history, pending = [], []
  with tqdm(range(1, tc.steps + 1), desc="train", unit="step", mininterval=0.5) as bar:
    for step in bar:
      state, metrics = step_fn(state, data_key, train_key)
      pending.append(metrics["loss"])
      if step == 1 or step % tc.log_every == 0 or step == tc.steps:
        loss = float(np.mean(jax.device_get(pending)))  # the only host sync
        history.append([step, loss])
        pending = []
        bar.set_postfix(loss=f"{loss:.4f}")
  return state, history


def class_metrics(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> dict[str, float]:
  """Accuracy (nearest centre = prompted), mean distance to prompted and to nearest centre."""
  dists = np.linalg.norm(x[:, None, :] - centres[None], axis=-1)
  return {"accuracy": float(np.mean(dists.argmin(-1) == labels)),
          "dist_prompted": float(np.mean(dists[np.arange(len(x)), labels])),
          "dist_nearest": float(np.mean(dists.min(-1)))}


def timed_sample(denoise_fn: Any, params: Any, cond: Any, null_cond: Any, key: Array,
                 num: int, schedule: Any, config: SamplerConfig, prediction: str
                 ) -> tuple[np.ndarray, float, float]:
  """Samples (num, 2) with `jit_sample`; returns (samples, compile seconds, run seconds)."""
  t0 = time.perf_counter()
  compiled = jit_sample.lower(denoise_fn, params, (num, 2), key, cond, schedule=schedule,
                              config=config, prediction=prediction, null_cond=null_cond).compile()
  t1 = time.perf_counter()
  x = np.asarray(jax.block_until_ready(compiled(params, key, cond, null_cond=null_cond)))
  return x, t1 - t0, time.perf_counter() - t1


def parse_sampler(spec: str) -> tuple[str, int]:
  """'name:num_steps' -> (name, num_steps)."""
  name, sep, steps = spec.partition(":")
  if not sep or not steps.strip().isdigit():
    raise ConfigError(f"sampler spec {spec!r} must look like 'name:num_steps', e.g. 'ddim:50'")
  return name.strip(), int(steps)


def evaluate(config: ml_collections.ConfigDict, denoise_fn: ToyDenoiseFn, params: Any,
             data: ToyData, schedule: Any, samplers: list[SamplerConfig]
             ) -> tuple[list[dict[str, Any]], dict[tuple[str, float], np.ndarray]]:
  """Class metrics for every (sampler, guidance weight); the same initial noise for all."""
  num, k = config.sample.num_samples, data.num_modes
  labels = np.arange(num) % k
  cond, null = jnp.asarray(labels, jnp.int32), jnp.full((num,), k, jnp.int32)
  key = jax.random.key(config.sample.seed)
  rows, samples = [], {}
  for base in samplers:
    for w in config.sample.guidance_weights:
      sc = dataclasses.replace(base, guidance_weight=float(w))
      x, compile_s, run_s = timed_sample(denoise_fn, params, cond, null, key, num, schedule, sc,
                                         config.loss.prediction)
      samples[(f"{sc.name}:{sc.num_steps}", float(w))] = x
      rows.append({"sampler": sc.name, "steps": sc.num_steps, "guidance_weight": float(w),
                   **class_metrics(x, labels, data.centres()), "compile_s": compile_s,
                   "sample_s": run_s})
  return rows, samples


def analytic_check(config: ml_collections.ConfigDict, schedule: Any,
                   samplers: list[SamplerConfig]) -> list[dict[str, Any]]:
  """Sample N(mean, std²·I) with its exact ε-predictor, unthresholded; mean/std vs the truth."""
  mean = np.asarray(config.analytic.mean, np.float32)
  std, num = float(config.analytic.std), int(config.analytic.num_samples)
  params = (jnp.asarray(mean), jnp.asarray(std, jnp.float32))
  rows = []
  for sc in samplers:
    sc = dataclasses.replace(sc, thresholding=Thresholding("none"))
    x, _, run_s = timed_sample(gaussian_eps, params, None, None,
                               jax.random.key(config.sample.seed), num, schedule, sc, "eps")
    rows.append({"sampler": sc.name, "steps": sc.num_steps, "num_samples": num,
                 "mean_err": float(np.abs(x.mean(0) - mean).max()),
                 "std_err": float(np.abs(x.std(0) - std).max()),
                 "mean_stderr": std / math.sqrt(num), "sample_s": run_s})
  return rows


def print_report(m: dict[str, Any]) -> None:
  """The readable tables and a short interpretation."""
  tr, a = m["train"], m["analytic"]
  num = lambda v: f"{v:8.3f}" if abs(v) < 1e4 else f"{v:8.1e}"  # diverged samplers stay aligned
  print(f"\ntrain: {tr['steps']} steps in {tr['wall_s']:.1f}s (incl. compile); loss "
        f"{tr['first_loss']:.4f} (step 1) -> {tr['final_loss']:.4f} (last logging window)\n"
        f"\n{m['num_samples']} samples per row, labels balanced over {m['num_modes']} classes; "
        f"thresholding {m['thresholding']!r}. acc: nearest centre is the prompted one (chance "
        f"{1 / m['num_modes']:.2f}); dist / d_near: mean distance to the prompted / nearest centre")
  head = f"{'sampler':<10}{'steps':>6}{'w':>6}{'acc':>8}{'dist':>8}{'d_near':>8}" \
         f"{'compile':>9}{'sample':>8}"
  print(f"{head}\n{'-' * len(head)}\n{'data':<22}" + "".join(
      num(m["data"][k]) for k in ("accuracy", "dist_prompted", "dist_nearest")))
  for r in m["samples"]:
    print(f"{r['sampler']:<10}{r['steps']:>6}{r['guidance_weight']:>6.1f}{num(r['accuracy'])}"
          f"{num(r['dist_prompted'])}{num(r['dist_nearest'])}{r['compile_s']:>8.2f}s"
          f"{r['sample_s']:>7.2f}s")
  print(f"\nanalytic check: exact ε-predictor of N({m['analytic_mean']}, {m['analytic_std']}²·I), "
        f"{a[0]['num_samples']} samples, no thresholding (std error of the mean "
        f"{a[0]['mean_stderr']:.4f})")
  for r in a:
    print(f"  {r['sampler']:<10}{r['steps']:>4} steps: max |mean err| {r['mean_err']:.4f}   "
          f"max |std err| {r['std_err']:.4f}")
  print("\n" + "\n".join(interpret(m)))


def interpret(m: dict[str, Any]) -> list[str]:
  """One sentence per finding, computed from the numbers (averaged over samplers)."""
  avg: dict[float, dict[str, float]] = {}
  for w in dict.fromkeys(r["guidance_weight"] for r in m["samples"]):
    rs = [r for r in m["samples"] if r["guidance_weight"] == w]
    avg[w] = {k: float(np.mean([r[k] for r in rs])) for k in ("accuracy", "dist_prompted")}
  d, lines = m["data"], []
  if 0.0 in avg:
    lines.append(f"- w=0 (null label only): accuracy {avg[0.0]['accuracy']:.3f} vs chance "
                 f"{1 / m['num_modes']:.3f}: the unconditional branch ignores the prompt.")
  if 1.0 in avg:
    gap = abs(avg[1.0]["accuracy"] - d["accuracy"])
    lines.append(f"- w=1 (no guidance): accuracy {avg[1.0]['accuracy']:.3f}, distance "
                 f"{avg[1.0]['dist_prompted']:.3f} vs the data's {d['accuracy']:.3f}, "
                 f"{d['dist_prompted']:.3f}: the conditional model "
                 f"{'matches' if gap < 0.05 else 'does NOT match'} p(x | class).")
  ws = sorted(w for w in avg if w >= 1.0)
  if len(ws) >= 2:
    lo, hi = avg[ws[0]], avg[ws[-1]]
    lines.append(f"- guidance w={ws[0]:g} -> {ws[-1]:g}: accuracy {lo['accuracy']:.3f} -> "
                 f"{hi['accuracy']:.3f}, distance {lo['dist_prompted']:.3f} -> "
                 f"{hi['dist_prompted']:.3f}; guided samples leave the other classes' regions, "
                 "trading diversity for fidelity.")
  mean_err, std_err = (max(r[k] for r in m["analytic"]) for k in ("mean_err", "std_err"))
  lines.append(f"- with the exact denoiser the samplers' own error is at most {mean_err:.4f} in "
               f"the mean and {std_err:.4f} in the std (of {m['analytic_std']}); errors beyond "
               "that come from the trained model.")
  return lines


def save_plot(path: Path, data_x: np.ndarray, data_labels: np.ndarray,
              samples: dict[tuple[str, float], np.ndarray], labels: np.ndarray,
              panel: int = 160) -> bool:
  """Scatter panels (rows: samplers; columns: data, then each w), coloured by class; needs PIL."""
  try:
    from PIL import Image, ImageDraw
  except ImportError:
    return False
  palette = np.array([[228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163],
                      [255, 127, 0], [166, 86, 40], [247, 129, 191], [80, 80, 80]], np.uint8)
  names = list(dict.fromkeys(s for s, _ in samples))
  weights = list(dict.fromkeys(w for _, w in samples))
  img = np.full((panel * len(names), panel * (1 + len(weights)), 3), 255, np.uint8)
  titles = []
  for i, name in enumerate(names):
    cells = [("data", data_x, data_labels)] + [
        (f"{name} w={w:g}", samples[(name, w)], labels) for w in weights]
    for j, (title, x, lab) in enumerate(cells):
      px = np.round((np.clip(x, -1.2, 1.2) + 1.2) / 2.4 * (panel - 3)).astype(int) + 1
      rows, cols = i * panel + (panel - 2 - px[:, 1]), j * panel + px[:, 0]
      for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        img[rows + dr, cols + dc] = palette[lab % len(palette)]
      img[i * panel, j * panel:(j + 1) * panel] = img[i * panel:(i + 1) * panel, j * panel] = 180
      titles.append(((j * panel + 4, i * panel + 3), title))
  image = Image.fromarray(img)
  draw = ImageDraw.Draw(image)
  for xy, title in titles:
    draw.text(xy, title, fill=(0, 0, 0))
  image.save(path)
  return True


def _parse(config: ml_collections.ConfigDict
           ) -> tuple[ToyData, Any, LossConfig, list[SamplerConfig]]:
  """The typed pieces of the config; any invalid value is a ConfigError."""
  try:
    thresholding = Thresholding(config.sample.thresholding)
    return (ToyData(config.data.num_modes, config.data.radius, config.data.std),
            get_schedule(config.schedule), LossConfig(**config.loss.to_dict()),
            [SamplerConfig(*parse_sampler(s), thresholding=thresholding)
             for s in config.sample.samplers])
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"invalid toy config: {e}") from e


def run_toy(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Train the toy denoiser, evaluate every sampler × guidance weight, print, save; the metrics."""
  start = time.perf_counter()
  data, schedule, loss_config, samplers = _parse(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config_to_json(config) + "\n")
  denoise_fn = ToyDenoiseFn(ToyDenoiser(data.num_modes, config.model.width, config.model.depth))

  state, history = train(config, denoise_fn, data, schedule, loss_config)
  train_s = time.perf_counter() - start
  rows, samples = evaluate(config, denoise_fn, state.ema_params, data, schedule, samplers)
  data_x, data_labels = map(np.asarray, data.sample(jax.random.key(config.data.seed + 1),
                                                    config.sample.num_samples))
  metrics = {
      "num_modes": data.num_modes, "num_samples": config.sample.num_samples,
      "thresholding": config.sample.thresholding,
      "data": class_metrics(data_x, data_labels, data.centres()),
      "train": {"steps": config.train.steps, "wall_s": train_s, "loss_history": history,
                "first_loss": history[0][1], "final_loss": history[-1][1]},
      "samples": rows, "analytic": analytic_check(config, schedule, samplers),
      "analytic_mean": list(config.analytic.mean), "analytic_std": config.analytic.std}
  print_report(metrics)

  plot = workdir / "toy_samples.png"
  labels = np.arange(config.sample.num_samples) % data.num_modes
  if save_plot(plot, data_x, data_labels, samples, labels):
    print(f"\nscatter plot: {plot}")
  else:
    print("\nscatter plot skipped: Pillow (PIL) is not installed")
  metrics["total_s"] = time.perf_counter() - start
  (workdir / "toy_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  print(f"metrics: {workdir / 'toy_metrics.json'} (total {metrics['total_s']:.1f}s)")
  return metrics
