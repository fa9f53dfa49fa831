"""benchmarks/ideal_denoiser.py: its factorised posterior equals brute-force enumeration."""

import numpy as np

from benchmarks.ideal_denoiser import IdealDenoiser, readers
from imagen_jax.data import shapes_scene as ss


def brute_force(x_t, alpha, sigma, captions, resolution, grid):
  """E[x₀ | x_t] by rendering every allowed layout of every caption (equal prior per caption,
  uniform over a caption's allowed centre pairs) and weighing it by N(x_t; α x₀, σ²)."""
  axis = (np.arange(grid) + 0.5) / grid
  images, logw = [], []
  for specs, relation in captions:
    objs = []
    for shape, color, size in specs:
      h = ss.SIZES[ss.SIZE_NAMES[size]] / 2
      a = axis[(axis >= h) & (axis <= 1 - h)]
      objs.append([ss.SceneObject(shape, color, size, (x, y)) for y in a for x in a])
    pairs = [(p, q) for p in objs[0] for q in objs[1] if ss._relation_holds(p, q, relation)]
    for p, q in pairs:
      x0 = ss.render(ss.Scene((p, q), relation), resolution).reshape(-1, 3) / 127.5 - 1.0
      images.append(x0)
      logw.append(-((x_t - alpha * x0)**2).sum() / (2 * sigma**2) - np.log(len(pairs)))
  logw = np.array(logw)
  w = np.exp(logw - logw.max())
  return np.tensordot(w / w.sum(), np.stack(images), axes=1)


def test_posterior_mean_equals_enumerating_every_layout():
  rng = np.random.default_rng(0)
  resolution, grid = 8, 10
  ideal = IdealDenoiser(resolution, grid=grid)
  scene = ss.Scene((ss.SceneObject(0, 0, 1, (0.25, 0.5)), ss.SceneObject(1, 2, 0, (0.75, 0.45))),
                   0)  # a large red circle to the left of a small blue square
  x0 = ss.render(scene, resolution).reshape(-1, 3) / 127.5 - 1.0
  options = readers(scene)
  assert len(options["bag"]) == 8 and len(options["attributes"]) == 32
  for alpha in (0.3, 0.1):
    sigma = np.sqrt(1 - alpha**2)
    x_t = alpha * x0 + sigma * rng.standard_normal(x0.shape)
    for name in ("caption", "bag"):
      got = ideal.posterior_mean(x_t, alpha, sigma, options[name])
      want = brute_force(x_t, alpha, sigma, options[name], resolution, grid)
      np.testing.assert_allclose(got, want, atol=1e-9, err_msg=f"{name} at α={alpha}")
    # reading the caption beats reading its bag of words for this image (the layout helps)
    err = {n: ((ideal.posterior_mean(x_t, alpha, sigma, options[n]) - x0)**2).mean()
           for n in ("caption", "bag")}
    assert err["caption"] < err["bag"]
