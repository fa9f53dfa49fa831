"""FID and CLIP score with user-supplied callables loaded from `module:function` specs."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from imagen_jax.eval import fid as fid_lib
from imagen_jax.eval import metrics

TOY = textwrap.dedent('''
    import numpy as np

    def mean_colour(images):
      """Toy features: the mean and standard deviation of each channel."""
      x = np.asarray(images)
      return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)

    def make_extractor():
      return mean_colour

    def colour_word_scorer(images, captions):
      """Toy CLIP: +1 if the caption names the dominant channel, else -1."""
      names = ("red", "green", "blue")
      dominant = np.asarray(images).mean(axis=(1, 2)).argmax(axis=1)
      return np.array([1.0 if names[d] in c else -1.0 for d, c in zip(dominant, captions)])
''')


@pytest.fixture
def toy_module(tmp_path, monkeypatch) -> str:
  (tmp_path / "toy_eval_models.py").write_text(TOY)
  monkeypatch.syspath_prepend(str(tmp_path))
  return "toy_eval_models"


def _colour_images(rng: np.random.Generator, n: int, tint: tuple[float, float, float]
                   ) -> np.ndarray:
  x = rng.uniform(-0.5, 0.5, (n, 8, 8, 3)) + np.asarray(tint)
  return np.clip(x, -1, 1).astype(np.float32)


def test_load_feature_extractor_specs(toy_module):
  direct = fid_lib.load_feature_extractor(f"{toy_module}:mean_colour")
  built = fid_lib.load_feature_extractor(f"{toy_module}:make_extractor()")
  x = _colour_images(np.random.default_rng(0), 4, (0, 0, 0))
  np.testing.assert_array_equal(direct(x), built(x))
  for bad in ("no_colon", f"{toy_module}:", ":mean_colour"):
    with pytest.raises(ValueError):
      fid_lib.load_feature_extractor(bad)
  with pytest.raises(AttributeError):
    fid_lib.load_feature_extractor(f"{toy_module}:missing")
  with pytest.raises(TypeError):
    fid_lib.load_feature_extractor("math:pi")


def test_fid_zero_for_identical_sets_and_positive_otherwise(toy_module):
  extractor = fid_lib.load_feature_extractor(f"{toy_module}:mean_colour")
  rng = np.random.default_rng(1)
  a = _colour_images(rng, 40, (0, 0, 0))
  b = _colour_images(rng, 40, (0.3, -0.2, 0))
  assert fid_lib.fid(a, a, extractor, batch_size=7) == pytest.approx(0.0, abs=1e-9)
  assert fid_lib.fid(a, b, extractor, batch_size=16) > 0.05
  # batching does not change the features; the value is the Fréchet distance of their statistics
  feats_a = fid_lib.extract_features(a, extractor, batch_size=3)
  np.testing.assert_allclose(feats_a, extractor(a), rtol=1e-6)
  expected = metrics.frechet_distance(*metrics.feature_statistics(extractor(a)),
                                      *metrics.feature_statistics(extractor(b)))
  assert fid_lib.fid(a, b, extractor) == pytest.approx(expected, rel=1e-5)
  # uint8 images are rescaled to [-1, 1] first
  u8 = np.round((a + 1) * 127.5).astype(np.uint8)
  assert fid_lib.fid(u8, a, extractor) < 1e-3


def test_clip_score(toy_module):
  scorer = fid_lib.load_clip_scorer(f"{toy_module}:colour_word_scorer")
  rng = np.random.default_rng(2)
  images = np.concatenate([_colour_images(rng, 3, (0.6, 0, 0)),
                           _colour_images(rng, 3, (0, 0, 0.6))])
  right = ["a red thing"] * 3 + ["a blue thing"] * 3
  assert fid_lib.clip_score(images, right, scorer, batch_size=4) == pytest.approx(100.0)
  assert fid_lib.clip_score(images, right[::-1], scorer) == pytest.approx(0.0)
  with pytest.raises(ValueError):
    fid_lib.clip_score(images, right[:2], scorer)
