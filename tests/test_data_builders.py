"""The TFDS builders of imagen_jax.data, built tiny into tmp_path (no TensorFlow, no network)."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import build_dataset, dataset_metadata, open_split, shapes_scene
from imagen_jax.data.builders import emoji_captions, fashion_mnist_captions

FASHION_DIR = Path(fashion_mnist_captions.DEFAULT_DIR)
EMOJI_DIR = Path(emoji_captions.DEFAULT_DIR)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist is not installed ({FASHION_DIR} missing)")
needs_emoji = pytest.mark.skipif(
    not (EMOJI_DIR / "smiley.png").is_file(),
    reason=f"Debian package libjs-emojify is not installed ({EMOJI_DIR} missing)")


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def records(directory, split):
  source = open_split(directory, split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return build_dataset("shapes", tmp_path_factory.mktemp("tfds"), resolution=48, num_train=40,
                       num_test=8, seed=3).directory


def test_shapes_builder_splits_features_and_determinism(shapes_dir, tmp_path):
  train, test = records(shapes_dir, "train"), records(shapes_dir, "test")
  assert (len(train), len(test)) == (40, 8)
  ids = [text(r["id"]) for r in train + test]
  assert len(set(ids)) == 48 and all(i.startswith("shapes/") for i in ids)
  for r in train:
    assert r["image"].shape == (48, 48, 3) and r["image"].dtype == np.uint8
    assert text(r["caption"]).startswith("a ")
  assert {int(r["num_objects"]) for r in train} == {1, 2}
  meta = dataset_metadata(shapes_dir)
  assert meta["vocabulary"]["shapes"] == list(shapes_scene.SHAPES)
  # the same seed gives the same examples; another seed others
  again = build_dataset("shapes", tmp_path / "a", resolution=48, num_train=40, num_test=8, seed=3)
  other = build_dataset("shapes", tmp_path / "b", resolution=48, num_train=40, num_test=8, seed=4)
  by_id = lambda d: {text(r["id"]): (text(r["caption"]), r["image"].tobytes())
                     for r in records(d, "train")}
  assert by_id(again.directory) == by_id(shapes_dir)
  assert by_id(other.directory) != by_id(shapes_dir)
  assert again.splits == {"train": 40, "test": 8}


def test_building_a_dataset_logs_no_custom_config_warning(shapes_dir, caplog):
  """TFDS warns "Using custom data configuration" for each of our configs (none is predefined) on
  every run — the demo printed it for each dataset; the builder silences it, and only it."""
  data_dir = shapes_dir.parents[2]  # <data_dir>/shapes/<config>/<version>
  with caplog.at_level(logging.WARNING):
    build_dataset("shapes", data_dir, resolution=48, num_train=40, num_test=8, seed=3)
    assert not [r for r in caplog.records if "custom data configuration" in r.getMessage()]
    logging.getLogger("absl").warning("Using custom data configuration: after the build")
  assert [r for r in caplog.records if "after the build" in r.getMessage()]


def test_a_second_process_waits_for_a_build_under_way_and_reuses_it(tmp_path, caplog):
  """Two builds of one dataset at once used to end with one failing ("Cannot rename
  …incomplete… Destination … already exists"): while one holds the dataset's build lock, another
  build_dataset waits, says why, then reads the finished dataset (its splits, not an empty
  info)."""
  import threading
  import time

  from imagen_jax.data.builders import _one_build_at_a_time, make_builder

  spec = dict(resolution=16, num_train=12, num_test=4, seed=5)
  builder, built = make_builder("shapes", tmp_path, **spec), []
  with caplog.at_level(logging.WARNING), _one_build_at_a_time(tmp_path, builder) as waited:
    assert not waited
    second = threading.Thread(target=lambda: built.append(build_dataset("shapes", tmp_path,
                                                                        **spec)))
    second.start()
    deadline = time.time() + 60
    while not any("being prepared by another process" in r.getMessage() for r in caplog.records):
      assert time.time() < deadline and second.is_alive(), "the second build did not wait"
      time.sleep(0.05)
    builder.download_and_prepare()  # the lock holder builds while the other waits
  second.join(timeout=60)
  assert built and built[0].splits == {"train": 12, "test": 4}
  assert built[0].directory == Path(builder.data_dir)


def test_shapes_ground_truth_matches_pixels(shapes_dir):
  """Recover each colour's bounding box from the pixels and compare with the stored boxes."""
  palette = np.array([shapes_scene.COLORS[c] for c in shapes_scene.COLOR_NAMES])
  r = 48
  for rec in records(shapes_dir, "train"):
    image, n = rec["image"].astype(int), int(rec["num_objects"])
    background = np.all(image == shapes_scene.BACKGROUND, axis=-1)
    matches = np.all(image[:, :, None, :] == palette[None, None], axis=-1)  # (H, W, colours)
    assert np.all(background | matches.any(-1)), "every pixel is background or a palette colour"
    colors = rec["color"][:n]
    assert set(np.flatnonzero(matches.any((0, 1)))) == set(colors.tolist())
    for color in set(colors.tolist()):
      ys, xs = np.nonzero(matches[:, :, color])
      found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / r
      boxes = rec["box"][:n][colors == color]
      truth = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(),
                        boxes[:, 3].max()])
      np.testing.assert_allclose(found, truth, atol=1.0 / r, err_msg=text(rec["caption"]))
    words = text(rec["caption"])
    for k in range(n):
      phrase = " ".join((shapes_scene.SIZE_NAMES[rec["size"][k]],
                         shapes_scene.COLOR_NAMES[rec["color"][k]],
                         shapes_scene.SHAPES[rec["shape"][k]]))
      assert phrase in words
    if n == 2:
      relation = shapes_scene.RELATIONS[int(rec["relation"])]
      assert relation in words
      (ax, ay), (bx, by) = rec["center"]
      expect = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by,
                "below": ay > by}
      assert expect[relation]
    else:
      assert int(rec["relation"]) == -1 and rec["shape"][1] == -1


def test_shapes_scene_is_resolution_independent():
  scene = shapes_scene.sample_scene(shapes_scene.scene_rng(0, 0, 5))
  small, large = shapes_scene.render(scene, 32), shapes_scene.render(scene, 128)
  assert small.shape == (32, 32, 3) and large.shape == (128, 128, 3)
  coarse = large.reshape(32, 4, 32, 4, 3)[:, 1, :, 1]  # nearly the same pixels at 4× the size
  assert np.mean(np.any(coarse != small, -1)) < 0.05


def test_shapes_scenes_restricted_to_some_shapes_and_sizes(tmp_path):
  rng = lambda i: shapes_scene.scene_rng(0, 0, i)
  every = dict(shapes=shapes_scene.SHAPES, sizes=shapes_scene.SIZE_NAMES,
               relations=shapes_scene.RELATIONS)
  default = [shapes_scene.sample_scene(rng(i)) for i in range(50)]
  assert [shapes_scene.sample_scene(rng(i), **every) for i in range(50)] == default
  reordered = {k: tuple(reversed(v)) for k, v in every.items()}  # every name, any order
  assert [shapes_scene.sample_scene(rng(i), **reordered) for i in range(50)] == default
  assert {o.shape for s in default for o in s.objects} == {0, 1, 2, 3}
  toy = [shapes_scene.sample_scene(rng(i), 1.0, shapes=("square",), sizes=("large",))
         for i in range(50)]
  assert all(len(s.objects) == 2 for s in toy)
  assert {(o.shape, o.size) for s in toy for o in s.objects} == {(1, 1)}
  assert len({s.relation for s in toy}) == 4 and len({s.caption() for s in toy}) > 20
  one_way = [shapes_scene.sample_scene(rng(i), 1.0, relations=("above", "to the left of"))
             for i in range(50)]
  assert {s.relation for s in one_way} == {0, 2}
  skewed = [shapes_scene.sample_scene(rng(i), 1.0, relation_weights=(3, 1, 0, 0)).relation
            for i in range(400)]
  assert set(skewed) == {0, 1} and 0.65 < skewed.count(0) / 400 < 0.85  # 0.75 ± 0.022
  for bad in ((1.0, 1.0), (1.0, -1.0, 1.0, 1.0)):
    with pytest.raises(ValueError, match="give 4 weights >= 0"):
      build_dataset("shapes", tmp_path, relation_weights=bad)
  with pytest.raises(ValueError, match="every relation drawn has weight 0"):
    shapes_scene.sample_scene(rng(0), relations=("above",), relation_weights=(1, 1, 0, 0))
  with pytest.raises(ValueError, match=r"shapes \['hexagon'\]: choose one or more of"):
    shapes_scene.sample_scene(rng(0), shapes=("hexagon",))
  built = build_dataset("shapes", tmp_path, resolution=16, num_train=6, num_test=2, p_two=1.0,
                        shapes=("circle", "diamond"), relations=("above",))
  assert built.directory.parent.name.endswith("_p1_shapes-circle-diamond_relations-above")
  assert all(set(rec["shape"]) <= {0, 3} for rec in records(built.directory, "train"))


@needs_fashion
def test_fashion_mnist_captions(tmp_path):
  built = build_dataset("fashion_mnist_captions", tmp_path, max_per_split=25)
  assert built.splits == {"train": 25, "test": 25}
  raw = fashion_mnist_captions.read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
  labels = fashion_mnist_captions.read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
  assert raw.shape == (10_000, 28, 28)
  captions = set()
  for rec in records(built.directory, "test"):
    index = int(text(rec["id"]).rsplit("/", 1)[1])
    assert rec["image"].shape == (28, 28, 3)
    np.testing.assert_array_equal(rec["image"][:, :, 1], raw[index])
    assert int(rec["label"]) == labels[index]
    assert fashion_mnist_captions.NOUNS[labels[index]] in text(rec["caption"])
    captions.add(text(rec["caption"]))
  assert len(captions) > 5, "templates vary"
  assert fashion_mnist_captions.caption_for(9, 1) == "an ankle boot"
  assert fashion_mnist_captions.caption_for(7, 0) == "a photo of a sneaker"


@needs_emoji
def test_emoji_captions(tmp_path):
  built = build_dataset("emoji_captions", tmp_path)
  assert sum(built.splits.values()) == len(list(EMOJI_DIR.glob("*.png"))) == 881
  assert 40 < built.splits["test"] < 140
  recs = {text(r["id"]): r for s in ("train", "test") for r in records(built.directory, s)}
  assert text(recs["emoji/alarm_clock"]["caption"]) == "alarm clock"
  assert text(recs["emoji/+1"]["caption"]) == "thumbs up"
  assert all(r["image"].shape == (64, 64, 3) for r in recs.values())
  corner = np.array([r["image"][0, 0] for r in recs.values()])
  assert np.mean(np.all(corner == 255, -1)) > 0.5, "transparent corners are white"
  dark = build_dataset("emoji_captions", tmp_path / "dark", background=(0, 0, 64),
                       template="an emoji of {}")
  rec = next(r for r in records(dark.directory, "train") if text(r["id"]) in recs)
  assert text(rec["caption"]).startswith("an emoji of ")
  assert sorted(dark.splits.items()) == sorted(built.splits.items()), "same split either way"


def write_png(path, size=(40, 30), color=(200, 10, 10), mode="RGB"):
  Image.new(mode, size, color).save(path)


def test_captioned_folder_skips_and_reports(tmp_path, caplog):
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  for i in range(4):
    write_png(folder / f"ok{i}.png", color=(60 * i, 10, 10))
    (folder / f"ok{i}.txt").write_text(f"picture number {i}\n")
  write_png(folder / "sub" / "wide.png", size=(60, 20))
  (folder / "sub" / "wide.txt").write_text("a  wide\n image")
  write_png(folder / "alpha.png", color=(0, 0, 0, 0), mode="RGBA")
  (folder / "alpha.txt").write_text("transparent")
  (folder / "broken.png").write_bytes(b"not a png at all")
  (folder / "broken.txt").write_text("a broken file")
  write_png(folder / "empty.png")
  (folder / "empty.txt").write_text("  \n")
  write_png(folder / "nocaption.png")
  built = build_dataset("captioned_folder", tmp_path / "tfds", folder=folder, resolution=16)
  assert built.splits == {"train": 6}
  recs = {text(r["id"]): r for r in records(built.directory, "train")}
  assert set(recs) == {"ok0.png", "ok1.png", "ok2.png", "ok3.png", "sub/wide.png", "alpha.png"}
  assert text(recs["sub/wide.png"]["caption"]) == "a wide image"
  assert recs["ok2.png"]["image"].shape == (16, 16, 3)
  np.testing.assert_array_equal(recs["ok2.png"]["image"][8, 8], (120, 10, 10))
  np.testing.assert_array_equal(recs["alpha.png"]["image"][0, 0], (255, 255, 255))
  report = built.metadata["skipped"]["train"]
  assert report["kept"] == 6 and report["skipped"] == 3
  assert report["by_reason"] == {"unreadable image": 1, "empty caption": 1, "missing caption": 1}
  assert report["examples"]["unreadable image"] == ["broken.png"]
  assert "kept 6, skipped 3" in caplog.text


def test_captioned_folder_manifest(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(6):
    write_png(folder / f"{i}.jpg", size=(20, 20), color=(10, 20 * i, 30))
  manifest = tmp_path / "captions.csv"
  manifest.write_text("file,caption\n" + "".join(f"{i}.jpg,photo {i}\n" for i in range(6))
                      + "missing.jpg,gone\n0.jpg,again\n3.jpg,\n")
  built = build_dataset("captioned_folder", tmp_path / "tfds", folder=folder, manifest=manifest,
                        resolution=8, test_percent=50)
  assert sum(built.splits.values()) == 6 and set(built.splits) == {"train", "test"}
  skipped = built.metadata["skipped"]
  reasons: dict[str, int] = {}
  for split in skipped.values():
    for k, v in split["by_reason"].items():
      reasons[k] = reasons.get(k, 0) + v
  assert reasons == {"missing file": 1, "duplicate": 2}
