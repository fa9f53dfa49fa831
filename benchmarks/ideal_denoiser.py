"""How much the diffusion loss can reward reading a caption's word order (issue 17): the ideal
denoiser of the shapes scenes, computed, not trained.

    python -m benchmarks.ideal_denoiser                       # the table, ≈ 5 min
    python -m benchmarks.ideal_denoiser --scenes 64 --noise-draws 8 --times 0.85 0.9
    python -m benchmarks.ideal_denoiser --shapes square --sizes large   # the two-squares toy

A denoiser trained to convergence predicts E[x₀ | x_t, what it reads of the caption]. For
two-object scenes whose objects differ in colour, this computes that posterior mean exactly, up
to a 64 × 64 lattice of object centres: every layout the generator can draw for a caption
(centres uniform, the relation's rule of `imagen_jax.data.shapes_scene`), weighted by the
Gaussian likelihood of x_t (`IdealDenoiser`: the likelihood factorises over the two objects,
`tests/test_ideal_denoiser.py` checks it against rendering every layout), for four readers:

  caption     — the whole caption;
  objects     — which attributes belong together (the two objects), not which object the
                relation puts first: "A left of B" or "A right of B", equally likely;
  bag         — its bag of words: the caption is one of the (up to 8) captions that share its
                words (each object's size, colour and shape word may belong to either object),
                equally likely, so which colour is where is not known, but the relation is;
  attributes  — its attribute words only: also the relation unknown (4 relations × bag).

and prints, per noise time t (the cosine schedule of the base stage), the x̂₀ MSE of each reader
against the true image (×1000, mean ± s.e. over scenes and noise draws). bag − caption is the
most a denoiser gains by reading word order, split into binding attributes to objects
(bag − objects) and the relation's direction between the objects (objects − caption);
attributes − bag is what the relation word is worth to a reader that does not bind. Compare with
what a trained stage loses when one colour of the caption is changed (RESULTS §9: ≈ +14 at
t = 0.8): that gain is what teaches a stage colour.

Below t ≈ 0.7 the likelihoods of the layouts span more e-folds than float64 holds (an error
says so); the layout is settled there anyway.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from imagen_jax.data import shapes_scene as ss


GRID = 64  # object centres on a GRID × GRID lattice of the unit square (the prior is uniform)


def _signed(rgb) -> np.ndarray:
  return np.asarray(rgb, np.float64) / 127.5 - 1.0


class Layouts:
  """Every centre an object of one (shape, size) can have, with its pixel mask at `resolution`:
  `centres` (P, 2) and `masks` (P, H·W) float."""

  def __init__(self, shape: int, size: int, resolution: int, grid: int = GRID):
    h = ss.SIZES[ss.SIZE_NAMES[size]] / 2
    axis = (np.arange(grid) + 0.5) / grid
    axis = axis[(axis >= h) & (axis <= 1 - h)]
    self.centres = np.stack(np.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    self.half = h
    self.masks = np.stack([
        ss.object_mask(ss.SceneObject(shape, 0, size, tuple(c)), resolution).ravel()
        for c in self.centres]).astype(np.float64)


def valid_pairs(a: Layouts, b: Layouts, relation: int) -> np.ndarray:
  """(Pa, Pb) bool: the generator's rule `shapes_scene._relation_holds` on every centre pair."""
  dx = b.centres[None, :, 0] - a.centres[:, None, 0]
  dy = b.centres[None, :, 1] - a.centres[:, None, 1]
  main, other = {0: (dx, dy), 1: (-dx, dy), 2: (dy, dx), 3: (-dy, dx)}[relation]
  return (main > a.half + b.half + ss.GAP) & (main > np.abs(other))


class IdealDenoiser:
  """E[x₀ | x_t, reader] for two-object scenes, exactly (up to the centre lattice).

  Objects never overlap, so x₀ = background + Σⱼ maskⱼ · (colourⱼ − background) and the
  log-likelihood of a layout, −|x_t − α x₀|² / 2σ², is a constant plus one term per object,
  Lⱼ(centre) = (2α ⟨x_t − α·bg, maskⱼ·dⱼ⟩ − α² |maskⱼ| |dⱼ|²) / 2σ²: the posterior over the
  pair of centres is exp(L₁ + L₂) on the pairs the relation allows (uniform prior over them), and
  the posterior over the captions a reader cannot tell apart weighs each by its evidence."""

  def __init__(self, resolution: int, grid: int = GRID):
    self.resolution, self.grid = resolution, grid
    self._layouts: dict[tuple[int, int], Layouts] = {}
    self._valid: dict[tuple, tuple[np.ndarray, float]] = {}
    self.background = _signed(ss.BACKGROUND)

  def layouts(self, shape: int, size: int) -> Layouts:
    key = (shape, size)
    if key not in self._layouts:
      self._layouts[key] = Layouts(shape, size, self.resolution, self.grid)
    return self._layouts[key]

  def valid(self, spec_a, spec_b, relation) -> tuple[np.ndarray, float]:
    """The allowed centre pairs (0/1, float64: the likelihoods span hundreds of e-folds) and
    their number: they depend on the sizes, not the shapes."""
    key = (spec_a[2], spec_b[2], relation)
    if key not in self._valid:
      pairs = valid_pairs(self.layouts(spec_a[0], spec_a[2]),
                          self.layouts(spec_b[0], spec_b[2]), relation).astype(np.float64)
      self._valid[key] = (pairs, float(pairs.sum()))
    return self._valid[key]


  def caption_posterior(self, x_t: np.ndarray, alpha: float, sigma: float, specs, relation
                        ) -> tuple[float, np.ndarray]:
    """(log evidence, E[x₀ | x_t, caption]) for x_t (H·W, 3)."""
    residual = x_t - alpha * self.background
    logs, objects = [], []
    for shape, color, size in specs:
      lay = self.layouts(shape, size)
      d = _signed(ss.COLORS[ss.COLOR_NAMES[color]]) - self.background
      logl = (2 * alpha * lay.masks @ (residual @ d) - alpha**2 * lay.masks.sum(1) * (d @ d))
      logl = logl / (2 * sigma**2)
      logs.append(logl)
      objects.append((lay, d))
    valid, num_valid = self.valid(specs[0], specs[1], relation)
    m1, m2 = logs[0].max(), logs[1].max()
    w1, w2 = np.exp(logs[0] - m1), np.exp(logs[1] - m2)
    to1, to2 = valid @ w2, valid.T @ w1  # Σ over the partner's allowed centres
    z = float(w1 @ to1)
    if not z > 0:
      raise FloatingPointError(f"no allowed layout has a representable likelihood at α = {alpha}"
                               " (too little noise for this estimate: use t ≥ 0.7)")
    log_evidence = np.log(z) + m1 + m2 - np.log(num_valid)
    mean = np.broadcast_to(self.background, x_t.shape).copy()
    for (lay, d), marginal in zip(objects, (w1 * to1 / z, w2 * to2 / z)):
      mean += (marginal @ lay.masks)[:, None] * d[None]
    return log_evidence, mean

  def posterior_mean(self, x_t, alpha, sigma, captions) -> np.ndarray:
    """E[x₀ | x_t] when the caption is one of `captions` ((specs, relation) each), equally
    likely a priori."""
    results = [self.caption_posterior(x_t, alpha, sigma, specs, r) for specs, r in captions]
    logz = np.array([r[0] for r in results])
    weights = np.exp(logz - logz.max())
    weights /= weights.sum()
    return sum(w * r[1] for w, r in zip(weights, results))


def readers(scene: ss.Scene) -> dict[str, list[tuple[tuple, int]]]:
  """The captions each reader cannot tell apart from `scene`'s: lists of (specs, relation)."""
  a, b = scene.objects
  recombined = set()
  for sizes, colors, shapes in itertools.product(*[((x, y), (y, x)) for x, y in (
      (a.size, b.size), (a.color, b.color), (a.shape, b.shape))]):
    recombined.add(((shapes[0], colors[0], sizes[0]), (shapes[1], colors[1], sizes[1])))
  true = ((a.shape, a.color, a.size), (b.shape, b.color, b.size))
  bag = sorted(recombined)
  flipped = {0: 1, 1: 0, 2: 3, 3: 2}[scene.relation]
  return {"caption": [(true, scene.relation)],
          "objects": [(true, scene.relation), (true, flipped)],
          "bag": [(specs, scene.relation) for specs in bag],
          "attributes": [(specs, r) for specs in bag for r in range(len(ss.RELATIONS))]}


def cosine_alpha_sigma(t: float) -> tuple[float, float]:
  from imagen_jax.diffusion.schedules import CosineSchedule, alpha_sigma

  a, s = alpha_sigma(np.float32(CosineSchedule().logsnr(np.float32(t))))
  return float(a), float(s)


NAMES = ("caption", "objects", "bag", "attributes")


SIZE_PAIRS = ("both small", "one small, one large", "both large")


def run(num_scenes: int, resolution: int, times, noise_draws: int, seed: int, **scenes
        ) -> tuple[dict[str, dict[float, np.ndarray]], np.ndarray]:
  """Per reader and t, the x̂₀ MSE of every (scene, noise draw), paired across readers; and per
  (scene, noise draw) its number of large objects (an index into SIZE_PAIRS). `scenes`: the
  restrictions `shapes_scene.sample_scene` takes (`shapes`, `sizes`)."""
  rng = np.random.default_rng(seed)
  ideal = IdealDenoiser(resolution)
  errors = {n: {t: [] for t in times} for n in NAMES}
  large = []
  done = 0
  while done < num_scenes:
    scene = ss.sample_scene(rng, p_two=1.0, **scenes)
    if scene.objects[0].color == scene.objects[1].color:
      continue
    done += 1
    large += [sum(o.size == ss.SIZE_NAMES.index("large") for o in scene.objects)] * noise_draws
    x0 = ss.render(scene, resolution).reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
    options = readers(scene)
    for t in times:
      alpha, sigma = cosine_alpha_sigma(t)
      for _ in range(noise_draws):
        x_t = alpha * x0 + sigma * rng.standard_normal(x0.shape)
        for n in NAMES:
          mean = ideal.posterior_mean(x_t, alpha, sigma, options[n])
          errors[n][t].append(float(((mean - x0)**2).mean()))
  return ({n: {t: np.asarray(v) for t, v in per_t.items()} for n, per_t in errors.items()},
          np.asarray(large))


def mean_se(values: np.ndarray) -> tuple[float, float]:
  return float(values.mean()), float(values.std() / np.sqrt(len(values)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--scenes", type=int, default=32)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--noise-draws", type=int, default=2)
  parser.add_argument("--times", type=float, nargs="+",
                      default=[0.8, 0.85, 0.9, 0.95])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shapes", nargs="+", choices=ss.SHAPES, default=None,
                      help="draw the scenes' objects from these shapes only (a toy; default all)")
  parser.add_argument("--sizes", nargs="+", choices=ss.SIZE_NAMES, default=None,
                      help="… and from these sizes only")
  args = parser.parse_args(argv)
  result, large = run(args.scenes, args.resolution, args.times, args.noise_draws, args.seed,
                      shapes=args.shapes, sizes=args.sizes)
  times = args.times
  print(f"ideal x̂₀ MSE ×1000 ({args.scenes} two-colour scenes × {args.noise_draws} noise draws, "
        f"centres on a {GRID}² lattice, {args.resolution} px, cosine schedule)\n")
  print("| reader | " + " | ".join(f"t={t:g}" for t in times) + " |")
  print("|---|" + "---:|" * len(times))
  for n in NAMES:
    print(f"| {n} | " + " | ".join(f"{1000 * result[n][t].mean():.1f}" for t in times) + " |")
  for hi, lo, label in (("bag", "caption", "word order (bag − caption)"),
                        ("objects", "caption", "… of it the relation's direction (objects − caption)"),
                        ("bag", "objects", "… of it binding attributes to objects (bag − objects)"),
                        ("attributes", "bag", "relation word (attributes − bag)")):
    cells = []
    for t in times:
      diff, se = mean_se(1000 * (result[hi][t] - result[lo][t]))
      cells.append(f"{diff:+.2f} ± {se:.2f}")
    print(f"| {label} | " + " | ".join(cells) + " |")
  print("\nthe relation's direction (objects − caption) by the scene's object sizes:\n")
  print("| objects | scenes | " + " | ".join(f"t={t:g}" for t in times) + " |")
  print("|---|---:|" + "---:|" * len(times))
  for k, name in enumerate(SIZE_PAIRS):
    pick = large == k
    if not pick.any():
      continue
    cells = [("{:+.2f} ± {:.2f}".format(*mean_se(
        1000 * (result["objects"][t][pick] - result["caption"][t][pick])))) for t in times]
    print(f"| {name} | {pick.sum() // args.noise_draws} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
