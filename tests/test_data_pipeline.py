"""The grain input pipeline: resume, per-host shards, epochs, the embedding join, SR inputs."""

import json

import numpy as np
import pytest

from imagen_jax.data import (
  DataError,
  PipelineConfig,
  build_dataset,
  images,
  make_pipeline,
  open_split,
)
from imagen_jax.data.pipeline import PrepareExample, shard_bounds
from imagen_jax.text.cache import CacheError, EmbeddingCache
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encode import encode_captions
from imagen_jax.text.encoder import TextEncoder
from imagen_jax.text.sources import caption_source

NUM_TRAIN = 64


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return build_dataset("shapes", tmp_path_factory.mktemp("tfds"), resolution=32,
                       num_train=NUM_TRAIN, num_test=8).directory


@pytest.fixture(scope="module")
def train(shapes_dir):
  return open_split(shapes_dir, "train")


def all_ids(source):
  return {source[i]["id"].decode() for i in range(len(source))}


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("crop", [False, True])
def test_resume_gives_exactly_the_uninterrupted_batches(train, crop):
  config = PipelineConfig(batch_size=12, resolution=32, lowres_size=8,
                          crop_size=16 if crop else None, seed=7)
  ds = make_pipeline(train, config, process_index=0, process_count=1)
  it = iter(ds)
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = take(it, 6)  # 9 batches of 12 > 64 records: crosses into the second epoch
  resumed = iter(make_pipeline(train, config, process_index=0, process_count=1))
  resumed.set_state(state)
  assert_same_batches(take(resumed, 6), expected)
  fresh = iter(ds)
  assert_same_batches(take(fresh, 9)[3:], expected)


@pytest.mark.parametrize("count", [2, 4])
def test_host_shards_are_disjoint_and_cover(train, count):
  seen = []
  for index in range(count):
    config = PipelineConfig(batch_size=4 * count, resolution=32, num_epochs=1, seed=1)
    batches = list(make_pipeline(train, config, process_index=index, process_count=count))
    assert all(b["image"].shape[0] == 4 for b in batches), "per-host share of the global batch"
    seen.append([i for b in batches for i in b["id"]])
  flat = [i for ids in seen for i in ids]
  assert len(flat) == len(set(flat)), "shards overlap"
  assert set(flat) == all_ids(train), "shards do not cover the split"
  assert len({len(ids) for ids in seen}) == 1


def test_shard_bounds_are_equal_and_leave_out_less_than_a_host():
  for n, count in [(10, 4), (7, 7), (65, 2)]:
    shards = [range(n)[shard_bounds(n, i, count)] for i in range(count)]
    assert len({len(s) for s in shards}) == 1
    covered = set().union(*map(set, shards))
    assert sum(map(len, shards)) == len(covered) and n - len(covered) < count
  with pytest.raises(ValueError, match="cannot be shared"):
    shard_bounds(3, 0, 4)


def test_epochs_shuffle_differently_and_stop(train):
  config = PipelineConfig(batch_size=8, resolution=32, num_epochs=2, seed=0)
  batches = list(make_pipeline(train, config, process_index=0, process_count=1))
  assert len(batches) == 2 * NUM_TRAIN // 8
  ids = [i for b in batches for i in b["id"]]
  first, second = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
  assert set(first) == set(second) == all_ids(train) and first != second
  other = list(make_pipeline(train, PipelineConfig(batch_size=8, resolution=32, num_epochs=1,
                                                   seed=1), process_index=0, process_count=1))
  assert [i for b in other for i in b["id"]] != first, "the seed changes the order"


def test_base_stage_batch_layout(train):
  config = PipelineConfig(batch_size=4, resolution=64, seed=0)  # 32 px data upsampled to 64
  batch = next(iter(make_pipeline(train, config, process_index=0, process_count=1)))
  assert set(batch) == {"image", "id"}
  assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].max() == 1.0, "the white background maps to +1"


def test_lowres_and_crop_shapes_values_and_alignment():
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  record = {"id": b"noise", "image": noise}  # every crop offset is identifiable
  full = PrepareExample(PipelineConfig(batch_size=1, resolution=32, lowres_size=8))(record)
  assert full["image"].shape == (32, 32, 3) and full["lowres"].shape == (8, 8, 3)
  expected_low = images.to_signed(images.resize(images.from_signed(full["image"]), 8))
  np.testing.assert_array_equal(full["lowres"], expected_low)
  for upsample in (False, True):
    config = PipelineConfig(batch_size=1, resolution=32, lowres_size=8, crop_size=16,
                            upsample_lowres=upsample)
    for seed in range(6):
      crop = PrepareExample(config)(record, np.random.default_rng(seed))
      assert crop["image"].shape == (16, 16, 3)
      assert crop["lowres"].shape == ((16, 16, 3) if upsample else (4, 4, 3))
      for key in ("image", "lowres"):
        assert crop[key].dtype == np.float32 and np.abs(crop[key]).max() <= 1.0
      offsets = [(t, l) for t in range(17) for l in range(17)
                 if np.array_equal(full["image"][t:t + 16, l:l + 16], crop["image"])]
      assert len(offsets) == 1 and offsets[0][0] % 4 == 0 and offsets[0][1] % 4 == 0
      (top, left), = offsets
      if upsample:
        up = images.to_signed(images.resize(images.from_signed(full["lowres"]), 32))
        np.testing.assert_array_equal(crop["lowres"], up[top:top + 16, left:left + 16])
      else:
        low_top, low_left = top // 4, left // 4
        np.testing.assert_array_equal(
            crop["lowres"], full["lowres"][low_top:low_top + 4, low_left:low_left + 4])
  with pytest.raises(ValueError, match="multiple of the scale factor"):
    PipelineConfig(batch_size=1, resolution=32, lowres_size=8, crop_size=10)


def test_wrong_image_shape_names_the_example():
  bad = [{"id": b"good", "image": np.zeros((8, 8, 3), np.uint8)},
         {"id": b"grey/0042", "image": np.zeros((8, 8), np.uint8)}]
  config = PipelineConfig(batch_size=2, resolution=8, shuffle=False, num_threads=0)
  with pytest.raises(DataError, match="'grey/0042'.*shape \\(8, 8\\)"):
    next(iter(make_pipeline(bad, config, process_index=0, process_count=1)))


@pytest.fixture(scope="module")
def text_caches(shapes_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("text")
  spec = f"tfds:{shapes_dir}"
  captions = [c for split in ("train", "test") for _, c in caption_source(spec, split)]
  encoder = TextEncoder.from_directory(build_default_t5(tmp / "t5", captions), max_length=16,
                                       batch_size=32)
  for split in ("train", "test"):
    encode_captions(caption_source(spec, split), encoder, tmp / split, storage_dtype="float32",
                    progress=False)
  return encoder, {s: EmbeddingCache(tmp / s) for s in ("train", "test")}


def test_join_with_the_embedding_cache(train, text_caches):
  encoder, caches = text_caches
  config = PipelineConfig(batch_size=8, resolution=32, seed=2)
  batches = take(iter(make_pipeline(train, config, caches["train"], process_index=1,
                                    process_count=2)), 3)
  captions = {train[i]["id"].decode(): train[i]["caption"].decode() for i in range(len(train))}
  for batch in batches:
    assert batch["text_embeddings"].shape == (4, 16, encoder.width)
    assert batch["text_mask"].shape == (4, 16) and batch["text_mask"].dtype == bool
    emb, mask, _ = encoder.encode([captions[i] for i in batch["id"]])
    np.testing.assert_array_equal(batch["text_mask"], mask)
    np.testing.assert_allclose(batch["text_embeddings"], emb, atol=1e-5)


def test_missing_cache_entry_names_the_id(train, text_caches):
  _, caches = text_caches
  config = PipelineConfig(batch_size=4, resolution=32, seed=0)
  it = iter(make_pipeline(train, config, caches["test"], process_index=0, process_count=1))
  with pytest.raises(CacheError, match="example id 'shapes/train/\\d+' is not in the embedding"):
    next(it)
