"""The one-step denoising error of `imagen_jax.eval.diagnose` against its analytic value."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion import CosineSchedule, alpha_sigma
from imagen_jax.eval.diagnose import one_step_error

S = 0.5  # data: iid N(0, S²) per pixel


@dataclasses.dataclass(frozen=True)
class GaussianDenoiser:
  """The exact posterior mean E[x₀ | x_t] for N(0, S²) data (x₀-prediction), scaled by `gain`
  (gain ≠ 1: a wrong denoiser, the negative control)."""

  gain: float = 1.0

  def __call__(self, params, x, logsnr, cond):
    alpha, sigma = (a[:, None, None, None] for a in alpha_sigma(logsnr))
    return self.gain * alpha * S**2 * x / (alpha**2 * S**2 + sigma**2)


def test_one_step_error_is_the_posterior_variance():
  x0 = S * jax.random.normal(jax.random.key(1), (64, 16, 16, 3))
  times = (0.1, 0.4, 0.7, 1.0)
  schedule = CosineSchedule()
  kw = dict(schedule=schedule, prediction="x0", times=times, key=jax.random.key(2), clip=False)
  measured = one_step_error(GaussianDenoiser(), None, x0, None, **kw)
  alpha, sigma = (np.asarray(a, np.float64) for a in alpha_sigma(schedule.logsnr(jnp.array(times))))
  expected = S**2 * sigma**2 / (alpha**2 * S**2 + sigma**2)
  np.testing.assert_allclose(measured, expected, rtol=0.03)
  # the negative control is told apart where the posterior mean carries signal (low noise)
  worse = one_step_error(GaussianDenoiser(gain=0.5), None, x0, None, **kw)
  assert np.all(worse[:2] > 1.1 * expected[:2]), (worse, expected)


def test_line_plot_draws_each_series(tmp_path):
  from PIL import Image

  from benchmarks.plots import COLORS, line_plot

  path = line_plot(tmp_path / "p.png", {"a": ([1, 10, 100], [1.0, 0.1, 0.01]),
                                        "b": ([1, 100], [0.5, 0.5])}, logx=True, logy=True)
  pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
  for color in COLORS[:2]:
    assert (pixels == color).all(axis=1).sum() > 50, color  # each line is drawn
  assert not (pixels == COLORS[2]).all(axis=1).any()  # and nothing for a third series


def test_caption_variants_alter_one_thing_each():
  """The text probe's alterations parse in the shapes grammar and change what they say."""
  from benchmarks.diagnose import caption_variants
  from imagen_jax.eval.shapes_score import parse_caption

  caption = "a small red circle to the left of a large blue square"
  v = caption_variants(caption)
  assert v["true caption"] == caption and v["no text"] is None
  assert v["relation flipped"] == "a small red circle to the right of a large blue square"
  assert v["relation turned 90 deg"] == "a small red circle above a large blue square"
  assert v["colours swapped"] == "a small blue circle to the left of a large red square"
  assert v["second object dropped"] == "a small red circle"
  changed = parse_caption(v["one colour changed"])
  assert changed.objects[0].color not in ("red", "blue") and changed.objects[1].color == "blue"
  for text in v.values():
    if text is not None:
      parse_caption(text)  # raises if not in the grammar
