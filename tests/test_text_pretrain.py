"""Pretraining the embedded tiny T5 on the shapes captions' language (imagen_jax/text/pretrain.py)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.text_pretrain import side_probe
from imagen_jax.data import shapes_scene
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encoder import TextEncoder
from imagen_jax.text.pretrain import read_record, shapes_reading_task

SETTINGS = {"steps": 300, "batch_size": 32, "lr": 2e-3, "seed": 0, "max_length": 16,
            "objective": "reading"}


def captions(n: int, seed: int) -> tuple[list[str], list[shapes_scene.Scene]]:
  rng = np.random.default_rng(seed)
  scenes = [shapes_scene.sample_scene(rng) for _ in range(n)]
  return [s.caption() for s in scenes], scenes


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrain")
  train, _ = captions(300, 0)
  random = build_default_t5(root / "random", train)
  pretrained = build_default_t5(root / "pretrained", train,
                                pretrain=(shapes_reading_task(), SETTINGS))
  return random, pretrained, train


@pytest.fixture(scope="module")
def words_t5(t5_dirs, tmp_path_factory):
  _, _, train = t5_dirs
  settings = {**SETTINGS, "steps": 600, "objective": "words"}
  return build_default_t5(tmp_path_factory.mktemp("words") / "t5", train,
                          pretrain=(shapes_reading_task(), settings))


def test_reading_is_the_same_for_a_caption_and_its_paraphrase():
  red, green = (shapes_scene.SceneObject(1, shapes_scene.COLOR_NAMES.index(c), 0, (0.3, 0.5))
                for c in ("red", "green"))
  left_of = shapes_scene.Scene((red, green), 0)  # red to the left of green
  right_of = shapes_scene.Scene((green, red), 1)  # green to the right of red: the same scene
  mirrored = shapes_scene.Scene((red, green), 1)  # red to the right of green
  assert left_of.reading() == right_of.reading()
  assert left_of.reading() != mirrored.reading()
  assert left_of.reading()[1] == shapes_scene.COLOR_NAMES.index("red") + 1  # red read first
  assert shapes_scene.Scene((red, green), 3).reading()[0] == 2  # below: the vertical axis
  one = shapes_scene.Scene((red,)).reading()
  assert one[0] == 0 and one[4:] == [0, 0, 0]
  assert len(one) == len(shapes_scene.READING_CLASSES)


def test_pretraining_puts_where_each_object_is_into_its_colour_token(t5_dirs):
  random, pretrained, _ = t5_dirs
  record = read_record(pretrained)
  assert read_record(random) is None
  assert record["task"] == "shapes" and record["steps"] == SETTINGS["steps"]
  assert record["held_out_readout_right_before"] < 0.05
  assert record["held_out_readout_right_after"] > 0.9, record
  # the tokenizer is the random build's; the weights are not
  for name, same in (("spiece.model", True), ("model.safetensors", False)):
    a, b = (hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (random, pretrained))
    assert (a == b) == same, name
  before, after = side_probe(random, n=600), side_probe(pretrained, n=600)
  assert after["left_or_top"] > 0.85, (before, after)
  assert after["left_or_top"] > before["left_or_top"] + 0.15, (before, after)


def test_a_built_t5_is_reused_only_for_the_pretraining_it_had(t5_dirs):
  random, pretrained, train = t5_dirs
  stamp = (pretrained / "model.safetensors").stat().st_mtime_ns
  assert build_default_t5(pretrained, train, pretrain=(shapes_reading_task(), SETTINGS)) == \
      pretrained
  assert (pretrained / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
  with pytest.raises(ValueError, match="was pretrained .* asks for pretraining .*delete"):
    build_default_t5(pretrained, train, pretrain=(shapes_reading_task(), {**SETTINGS, "steps": 9}))
  with pytest.raises(ValueError, match="was pretrained .* asks for pretraining"):  # a default
    build_default_t5(pretrained, train, pretrain=(shapes_reading_task(), {**SETTINGS,
                                                                          "data_seed": 5}))
  with pytest.raises(ValueError, match="was pretrained .* asks for no pretraining"):
    build_default_t5(pretrained, train)
  with pytest.raises(ValueError, match="was not pretrained"):
    build_default_t5(random, train, pretrain=(shapes_reading_task(p_two=1.0), SETTINGS))
  with pytest.raises(ValueError, match="steps >= 1"):
    from imagen_jax.text.pretrain import pretrain_t5

    pretrain_t5(random, shapes_reading_task(), steps=0)


def test_encode_builds_the_pretrained_t5_its_cache_is_encoded_with(tmp_path):
  """`imagen-jax encode`'s path (as the demo calls it): the embedded T5 is built pretrained, then
  encodes the cache; asking the same workdir for other pretraining is an error, and naming a real
  T5 beside pretraining too."""
  import json

  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.text.encode import resolve_encoder_dir, run_encode
  from imagen_jax.text.encoder import checkpoint_fingerprint

  train, _ = captions(120, 3)
  (tmp_path / "captions.jsonl").write_text(
      "".join(json.dumps({"id": f"c{i}", "caption": c}) + "\n" for i, c in enumerate(train)))
  config = load_config(str(Path(__file__).resolve().parent.parent / "configs" / "text.py"))
  apply_overrides(config, [f"data.captions=file:{tmp_path / 'captions.jsonl'}",
                           "text.max_length=16"])
  quick = (shapes_reading_task(), {**SETTINGS, "steps": 3})
  (report,) = run_encode(config, tmp_path / "w", progress=False, pretrain=quick)
  t5 = tmp_path / "w" / "text" / "default_t5"
  assert report.num_examples == 120 and read_record(t5)["steps"] == 3
  manifest = (tmp_path / "w" / "text_cache" / "train" / "manifest.json").read_text()
  assert checkpoint_fingerprint(t5) in manifest
  assert resolve_encoder_dir(config, tmp_path / "w") == t5  # sampling: used as it is
  with pytest.raises(ValueError, match="delete"):
    run_encode(config, tmp_path / "w", progress=False,
               pretrain=(shapes_reading_task(), {**SETTINGS, "steps": 4}))
  apply_overrides(config, [f"text.encoder={t5}"])
  with pytest.raises(ValueError, match="embedded tiny T5, but config.text.encoder"):
    run_encode(config, tmp_path / "w2", progress=False, pretrain=quick)


def test_paired_batches_hold_each_scene_said_both_ways():
  task = shapes_reading_task(p_two=1.0, paired=True)
  texts, labels, _ = task.sample(np.random.default_rng(0), 6)
  for i in range(3):
    assert texts[i] != texts[i + 3] and (labels[i] == labels[i + 3]).all()
    assert {w for w in texts[i].split()} - {"left", "right", "above", "below"} == \
        {w for w in texts[i + 3].split()} - {"left", "right", "above", "below"}
  assert task.spec["paired"] and "paired" not in shapes_reading_task().spec


def test_each_word_is_read_as_where_its_object_is():
  red, green = (shapes_scene.SceneObject(1, shapes_scene.COLOR_NAMES.index(c), 0, (0.3, 0.5))
                for c in ("red", "green"))
  roles = shapes_scene.ROLES
  for scene, red_role, green_role in (
      (shapes_scene.Scene((red, green), 0), "left", "right"),  # red to the left of green
      (shapes_scene.Scene((green, red), 1), "left", "right"),  # green to the right of red
      (shapes_scene.Scene((red, green), 2), "top", "bottom"),  # red above green
      (shapes_scene.Scene((green, red), 2), "bottom", "top"),  # green above red
      (shapes_scene.Scene((red,)), "only", None)):
    words = scene.word_reading()
    assert " ".join(w for w, _ in words) == scene.caption()
    for word, label in words:
      if word in ("to", "the", "of", "left", "right", "above", "below"):
        assert label == (0, 0, 0, 0), (scene.caption(), word)
      elif word in ("red", "green"):
        assert label[0] == roles.index(red_role if word == "red" else green_role), scene.caption()
        assert label[1] == shapes_scene.COLOR_NAMES.index(word) + 1
    by_word = dict(words)  # the shape word knows its object's colour (the last "square" here)
    assert by_word["square"][1] == scene.objects[-1].color + 1


def test_word_labels_are_aligned_to_their_tokens(t5_dirs):
  from imagen_jax.text.pretrain import _batch
  from imagen_jax.text.tokenizer import Tokenizer

  random, _, _ = t5_dirs
  tokenizer = Tokenizer.from_directory(random, max_length=16)
  task = shapes_reading_task(p_two=1.0)
  ids, mask, _, word_labels = _batch(task, tokenizer, np.random.default_rng(1), 8, pieces={})
  assert _batch(task, tokenizer, np.random.default_rng(1), 8)[3] is None  # reading: not needed
  captions, _, words = task.sample(np.random.default_rng(1), 8)
  for i, caption in enumerate(captions):
    n = len(caption.split())  # one token a word here, then </s>, then padding
    assert mask[i].sum() == n + 1
    np.testing.assert_array_equal(word_labels[i, :n], words[i])
    assert not word_labels[i, n:].any()
    for j, token in enumerate(tokenizer.hf.convert_ids_to_tokens(list(ids[i, :n]))):
      assert token == "\u2581" + caption.split()[j]


def test_the_words_objective_makes_every_token_say_where_its_object_is_loudly(t5_dirs, words_t5):
  random, reading, _ = t5_dirs
  record = read_record(words_t5)
  assert record["objective"] == "words" and "held_out_readout_right_after" not in record
  assert record["held_out_words_right_before"] < 0.05
  assert record["held_out_words_right_after"] > 0.95, record
  probe = side_probe(words_t5, n=600)
  assert probe["left_or_top"] > 0.95, probe
  assert probe["separation"] > 0.5, probe  # the random T5: ≈ 0.04 (RESULTS §15)
  assert side_probe(random, n=600)["separation"] < 0.2
  with pytest.raises(ValueError, match="objective 'tokens': choose one of"):
    from imagen_jax.text.pretrain import pretrain_t5

    pretrain_t5(random, shapes_reading_task(), objective="tokens")


def test_a_caption_tokenized_unlike_its_words_is_an_error(t5_dirs):
  from imagen_jax.text.pretrain import _batch
  from imagen_jax.text.tokenizer import Tokenizer

  random, _, _ = t5_dirs
  hf = Tokenizer.from_directory(random).hf
  renaming = Tokenizer(hf, 16, preprocess=lambda t: t.replace("red", "blue"))  # whole ≠ words
  with pytest.raises(ValueError, match="differently word by word than whole"):
    _batch(shapes_reading_task(), renaming, np.random.default_rng(0), 64, pieces={})
