"""The Fashion-MNIST classifier (trained briefly on the real data), its cache and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagen_jax.data.builders import fashion_mnist_captions as fm
from imagen_jax.data.images import square_resize, to_signed
from imagen_jax.eval import fashion_classifier as fc

pytestmark = pytest.mark.skipif(
    not all((Path(fm.DEFAULT_DIR) / n).is_file() for pair in fm.FILES.values() for n in pair),
    reason="Debian's dataset-fashion-mnist is not installed")

STEPS, BATCH = 200, 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = tmp_path_factory.mktemp("fashion_clf")
  return out, fc.train_classifier(out, steps=STEPS, batch=BATCH, seed=0)


@pytest.fixture(scope="module")
def test_split():
  images, labels = fc.load_fashion_split("test")
  return images[:2000], labels[:2000]


def test_tiny_budget_reaches_well_above_chance(trained, test_split):
  out, path = trained
  info = json.loads((out / fc.INFO_FILE).read_text())
  print("test accuracy after", STEPS, "steps:", info["test_accuracy"], "in", info["train_seconds"],
        "s")
  assert info["steps"] == STEPS and info["batch"] == BATCH
  assert info["test_accuracy"] >= 0.70
  clf = fc.load_classifier(path)
  assert clf.accuracy(*test_split) >= 0.70


def test_second_call_loads_the_cache(trained, monkeypatch):
  out, path = trained
  mtime = path.stat().st_mtime_ns

  def no_training(*args, **kwargs):
    raise AssertionError("retrained instead of loading the cache")

  monkeypatch.setattr(fc, "_train_params", no_training)
  assert fc.train_classifier(out, steps=STEPS, batch=BATCH, seed=0) == path
  assert path.stat().st_mtime_ns == mtime
  with pytest.raises(AssertionError, match="retrained"):  # other settings: not the cached one
    fc.train_classifier(out, steps=STEPS, batch=BATCH, seed=1)


def test_classify_shapes_and_input_formats(trained, test_split):
  _, path = trained
  clf = fc.load_classifier(path.parent)  # the directory works too
  images, labels = test_split
  logits, features = clf.classify(images[:300], batch_size=128)
  assert logits.shape == (300, 10) and features.shape == (300, 128)
  assert np.all(features >= 0)  # post-ReLU penultimate layer
  # the pipeline's form of the same images: 32×32 RGB float in [-1, 1]
  rgb32 = np.stack([to_signed(square_resize(np.repeat(im[:, :, None], 3, 2), 32))
                    for im in images[:300]])
  logits32, _ = clf.classify(rgb32)
  assert np.mean(logits32.argmax(-1) == logits.argmax(-1)) >= 0.85
  assert np.mean(logits32.argmax(-1) == labels[:300]) >= 0.65
  # uint8 and float [-1, 1] 28×28 inputs agree
  np.testing.assert_allclose(clf.classify(to_signed(images[:50, :, :, None]))[0], logits[:50],
                             atol=1e-4)


def test_evaluate_fashion(trained, test_split):
  clf = fc.load_classifier(trained[1])
  images, labels = test_split
  real = fc.evaluate_fashion(images[:1000], labels[:1000], clf, images[1000:])
  assert real["accuracy"] == pytest.approx(clf.accuracy(images[:1000], labels[:1000]))
  noise = np.random.default_rng(0).integers(0, 256, (1000, 28, 28), dtype=np.uint8)
  fake = fc.evaluate_fashion(noise, labels[:1000], clf, images[1000:])
  shuffled = fc.evaluate_fashion(images[:1000], np.roll(labels[:1000], 1), clf, images[1000:])
  print("real:", real, "noise:", fake, "wrong labels:", shuffled)
  assert fake["frechet_distance"] > 10 * real["frechet_distance"]
  assert shuffled["accuracy"] < 0.3 and shuffled["frechet_distance"] == real["frechet_distance"]
  with pytest.raises(ValueError):
    fc.evaluate_fashion(images[:10], labels[:9], clf, images[1000:1100])


def test_parse_fashion_caption_inverts_every_template():
  for label in range(len(fm.NOUNS)):
    for template in range(len(fm.TEMPLATES)):
      assert fc.parse_fashion_caption(fm.caption_for(label, template)) == label
  for bad in ("a photo of a hat", "a photo of shirt", "two sneakers", ""):
    with pytest.raises(ValueError):
      fc.parse_fashion_caption(bad)
