"""The shapes scorer: caption grammar round trip; accuracy on real dataset images, with noise,
against mismatched captions and on blank / noise images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from imagen_jax.data import build_dataset, shapes_scene
from imagen_jax.data.images import to_signed
from imagen_jax.data.pipeline import open_split
from imagen_jax.eval import shapes_score

ATTRIBUTES = ("color", "shape", "size", "count", "relation", "all")


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[np.ndarray, list[str], list[dict]]:
  """64 + 8 images of a real 64 px shapes dataset (uint8), their captions and ground truth."""
  built = build_dataset("shapes", tmp_path_factory.mktemp("tfds"), resolution=64, num_train=64,
                        num_test=8)
  records = []
  for split in ("train", "test"):
    source = open_split(built.directory, split)
    records += [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"]) for r in records])
  captions = [r["caption"].decode() if isinstance(r["caption"], bytes) else str(r["caption"])
              for r in records]
  return images, captions, records


def test_parse_caption_round_trips_every_caption():
  objects = [shapes_scene.SceneObject(s, c, z, (0.5, 0.5)) for s, c, z in itertools.product(
      range(len(shapes_scene.SHAPES)), range(len(shapes_scene.COLORS)),
      range(len(shapes_scene.SIZES)))]
  scenes = [shapes_scene.Scene((o,)) for o in objects]
  scenes += [shapes_scene.Scene((a, b), r) for a, b in itertools.product(objects, objects)
             for r in range(len(shapes_scene.RELATIONS))]
  scenes += [shapes_scene.sample_scene(shapes_scene.scene_rng(3, 0, i)) for i in range(200)]
  for scene in scenes:
    spec = shapes_score.parse_caption(scene.caption())
    assert spec.caption() == scene.caption()
    assert len(spec.objects) == len(scene.objects)
    assert spec.relation == (None if scene.relation < 0 else shapes_scene.RELATIONS[scene.relation])
    for o, obj in zip(spec.objects, scene.objects):
      assert (o.shape, o.color, o.size) == (shapes_scene.SHAPES[obj.shape],
                                            shapes_scene.COLOR_NAMES[obj.color],
                                            shapes_scene.SIZE_NAMES[obj.size])


@pytest.mark.parametrize("caption", ["a red circle", "a small red circle near a large blue square",
                                     "a small pink circle", "A small red circle", ""])
def test_parse_caption_rejects_other_text(caption):
  with pytest.raises(ValueError):
    shapes_score.parse_caption(caption)


def test_connected_components_match_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  classes = np.random.default_rng(0).integers(0, 8, (40, 37))  # 6, 7: not objects
  labels = shapes_score._connected_components(classes)
  count = 0
  for k in range(shapes_score.BACKGROUND_ID):
    expected, n = ndimage.label(classes == k)  # 4-connectivity by default
    count += n
    ours = labels[classes == k]
    theirs = expected[classes == k]
    pairs = set(zip(ours.tolist(), theirs.tolist()))
    assert len(pairs) == len(set(ours.tolist())) == n  # the same partition
  assert np.all(labels[classes >= shapes_score.BACKGROUND_ID] == -1)
  assert len(np.unique(labels[labels >= 0])) == count


def test_analyze_image_recovers_ground_truth(real):
  images, _, records = real
  for image, r in zip(images[:16], records[:16]):
    found = shapes_score.analyze_image(image)
    assert len(found) == int(r["num_objects"])
    for k in range(int(r["num_objects"])):
      # objects of the record in detection order: match by box centre
      det = min(found, key=lambda d: np.abs(np.subtract(d.center, r["center"][k])).sum())
      np.testing.assert_allclose(det.center, r["center"][k], atol=1.0 / 64)
      np.testing.assert_allclose(det.box, r["box"][k], atol=1.0 / 64 + 1e-6)
      assert det.shape == shapes_scene.SHAPES[r["shape"][k]]
      assert det.color == shapes_scene.COLOR_NAMES[r["color"][k]]
      assert det.size == shapes_scene.SIZE_NAMES[r["size"][k]]


def test_real_images_score_high(real):
  images, captions, _ = real
  result = shapes_score.score(images, captions)
  print("real:", result)
  assert result["num_images"] == 72
  for name in ATTRIBUTES:
    assert result[name] >= 0.95, (name, result)
  # uint8 and the float [-1, 1] convention give the same answer
  assert shapes_score.score(to_signed(images), captions) == result


def test_noisy_real_images_score_high(real):
  images, captions, _ = real
  noise = np.random.default_rng(0).normal(0.0, 0.1, images.shape).astype(np.float32)
  result = shapes_score.score(to_signed(images) + noise, captions)
  print("noisy sigma=0.1:", result)
  for name in ATTRIBUTES:
    assert result[name] >= 0.95, (name, result)


def test_blurred_real_images_score_high(real):
  from PIL import Image, ImageFilter

  images, captions, _ = real
  blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0)))
                      for im in images])
  result = shapes_score.score(blurred, captions)
  print("blurred sigma=1px:", result)
  for name in ATTRIBUTES:
    assert result[name] >= 0.9, (name, result)


def test_mismatched_captions_score_low(real):
  images, captions, _ = real
  result = shapes_score.score(images, captions[1:] + captions[:1])
  print("shuffled captions:", result)
  assert result["all"] <= 0.1
  assert np.mean([result[k] for k in ("color", "shape", "size")]) <= 0.7
  assert result["count"] <= 0.7


@pytest.mark.parametrize("kind", ["white", "grey", "noise"])
def test_blank_and_noise_images_score_near_zero(real, kind):
  _, captions, _ = real
  shape = (len(captions), 64, 64, 3)
  images = {"white": np.ones(shape, np.float32), "grey": np.zeros(shape, np.float32),
            "noise": np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)}[kind]
  result = shapes_score.score(images, captions)
  print(kind, result)
  assert result["all"] == 0.0 and result["count"] == 0.0
  for name in ("color", "shape", "size", "relation"):
    assert result[name] <= 0.05, (name, result)


def test_details_explain_a_wrong_image():
  red_circle = shapes_scene.Scene((shapes_scene.SceneObject(0, 0, 1, (0.5, 0.5)),))
  image = shapes_scene.render(red_circle, 64)
  (details,) = shapes_score.score_details([image], ["a small red square"])
  assert details.count_ok and details.relation_ok is None and not details.all_ok
  assert details.correct == ({"color": True, "shape": False, "size": False},)
  assert details.matched[0].shape == "circle" and details.matched[0].size == "large"


def test_relation_is_checked_with_twin_objects():
  a = shapes_scene.SceneObject(1, 2, 0, (0.25, 0.5))
  b = shapes_scene.SceneObject(1, 2, 0, (0.75, 0.5))
  image = shapes_scene.render(shapes_scene.Scene((a, b), 0), 64)
  caption = "a small blue square {} a small blue square"
  for relation, ok in (("to the left of", True), ("to the right of", True), ("above", False)):
    (d,) = shapes_score.score_details([image], [caption.format(relation)])
    assert d.relation_ok is ok


def test_relation_parts_say_whether_both_were_drawn_and_which_way():
  """A red square left of and slightly below a blue circle (dx 0.4, dy 0.1), and an image of the
  red square alone: 'drawn' counts the two-object captions whose objects were both found,
  'direction' the side along the asked axis among those (not the axis' dominance)."""
  red = shapes_scene.SceneObject(1, 0, 0, (0.3, 0.55))
  blue = shapes_scene.SceneObject(0, 2, 0, (0.7, 0.45))
  pair = shapes_scene.render(shapes_scene.Scene((red, blue), 0), 64)
  alone = shapes_scene.render(shapes_scene.Scene((red,)), 64)
  caption = "a small red square {} a small blue circle"
  cases = {"to the left of": (True, 1.0), "to the right of": (False, 0.0),
           "below": (False, 1.0), "above": (False, 0.0)}  # (relation holds, direction)
  for relation, (holds, direction) in cases.items():
    details = shapes_score.score_details([pair, alone, alone],
                                         [caption.format(relation)] * 2 + ["a small red square"])
    assert details[0].relation_ok is holds and details[1].relation_ok is False
    assert shapes_score.relation_parts(details) == {"drawn": 0.5, "direction": direction}
  assert all(np.isnan(v) for v in shapes_score.relation_parts(details[2:]).values())
