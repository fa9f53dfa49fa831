"""The embedded tiny T5, TextEncoder, caption sources, and the resumable text-embedding cache."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from imagen_jax.cli import main as cli_main
from imagen_jax.configlib import apply_overrides, load_config
from imagen_jax.text.cache import CacheError, EmbeddingCache
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encode import encode_captions, run_encode
from imagen_jax.text.encoder import TextEncoder, checkpoint_fingerprint
from imagen_jax.text.sources import CaptionFile, caption_source

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CAPTIONS = [f"a {size} {colour} {shape}" + (f" to the left of a {c2} square" if k else "")
            for size in ("small", "large") for colour in ("red", "green", "blue", "yellow")
            for shape in ("circle", "square", "triangle") for k, c2 in enumerate(("", "red"))]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  return build_default_t5(tmp_path_factory.mktemp("t5") / "default_t5", CAPTIONS)


@pytest.fixture(scope="module")
def encoder(t5_dir):
  return TextEncoder.from_directory(t5_dir, max_length=24, batch_size=8)


def write_jsonl(path, captions, prefix="ex"):
  path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "caption": c}) + "\n"
                          for i, c in enumerate(captions)))
  return path


def test_default_t5_is_deterministic_and_in_hf_layout(t5_dir, tmp_path):
  other = build_default_t5(tmp_path / "again", CAPTIONS)
  for name in ("model.safetensors", "spiece.model", "config.json"):
    a, b = (hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (t5_dir, other))
    assert a == b, f"{name} differs between two builds from the same captions and seed"
  config = json.loads((t5_dir / "config.json").read_text())
  assert config["model_type"] == "t5" and config["feed_forward_proj"] == "gated-gelu"
  assert checkpoint_fingerprint(t5_dir) == checkpoint_fingerprint(other)
  # a different seed is a different encoder, and the fingerprint says so
  third = build_default_t5(tmp_path / "seed1", CAPTIONS, seed=1)
  assert checkpoint_fingerprint(third) != checkpoint_fingerprint(t5_dir)


def test_default_t5_loads_with_transformers(t5_dir):
  """The embedded default is a real HF checkpoint: transformers' PyTorch T5 gives our outputs."""
  torch = pytest.importorskip("torch")
  from transformers import T5EncoderModel

  enc = TextEncoder.from_directory(t5_dir, max_length=24, batch_size=4)
  emb, mask, tokens = enc.encode(CAPTIONS[:5])
  ref = T5EncoderModel.from_pretrained(str(t5_dir)).eval()
  with torch.no_grad():
    out = ref(input_ids=torch.from_numpy(tokens.input_ids.astype(np.int64)),
              attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
  np.testing.assert_allclose(emb[mask], out[mask], atol=1e-5)


def test_encoder_batches_are_independent_and_padding_is_zero(encoder):
  emb, mask, _ = encoder.encode(CAPTIONS[:11])  # 11 = one full batch of 8 and a padded one
  alone, _, _ = encoder.encode([CAPTIONS[9]])
  np.testing.assert_allclose(emb[9], alone[0], atol=1e-6)
  assert np.all(emb[~mask] == 0.0)
  assert not np.allclose(emb[0][mask[0]].mean(0), emb[1][mask[1]].mean(0)), "captions differ"


def test_encode_writes_a_cache_that_matches_the_encoder(encoder, tmp_path):
  source = CaptionFile(str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)))
  report = encode_captions(source, encoder, tmp_path / "cache", storage_dtype="float32",
                           shard_size=10, progress=False)
  assert report.num_examples == len(CAPTIONS) and report.encoded == len(CAPTIONS)
  cache = EmbeddingCache(tmp_path / "cache")
  assert cache.ids == [f"ex{i}" for i in range(len(CAPTIONS))]
  ids = ["ex7", "ex0", "ex31"]
  got_emb, got_mask = cache.lookup(ids)
  ref_emb, ref_mask, _ = encoder.encode([CAPTIONS[7], CAPTIONS[0], CAPTIONS[31]])
  np.testing.assert_array_equal(got_mask, ref_mask)
  np.testing.assert_allclose(got_emb, ref_emb, atol=1e-6)
  row = cache[5]
  assert row["id"] == "ex5" and row["embeddings"].shape == (24, encoder.width)
  with pytest.raises(CacheError, match="'nope' is not in the embedding cache"):
    cache.lookup(["nope"])


def test_bfloat16_storage(encoder, tmp_path):
  source = CaptionFile(str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:9])))
  encode_captions(source, encoder, tmp_path / "c", storage_dtype="bfloat16", progress=False)
  emb, mask = EmbeddingCache(tmp_path / "c").lookup(["ex3"])
  ref, _, _ = encoder.encode([CAPTIONS[3]])
  np.testing.assert_allclose(emb, ref, rtol=2**-7, atol=1e-6)  # bf16 keeps 8 mantissa bits


class Interrupt(Exception):
  pass


class FailingSource:
  """A caption file that raises after yielding `fail_after` captions (an interrupted run)."""

  def __init__(self, inner, fail_after):
    self.inner, self.fail_after = inner, fail_after

  def __len__(self):
    return len(self.inner)

  def __iter__(self):
    for i, item in enumerate(self.inner):
      if i == self.fail_after:
        raise Interrupt()
      yield item

  def describe(self):
    return self.inner.describe()


def test_interrupted_encode_resumes_without_recomputing(encoder, tmp_path, monkeypatch):
  source = CaptionFile(str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)))
  with pytest.raises(Interrupt):
    encode_captions(FailingSource(source, 25), encoder, tmp_path / "cache", shard_size=10,
                    progress=False)
  with pytest.raises(CacheError, match="incomplete"):
    EmbeddingCache(tmp_path / "cache")
  assert not list((tmp_path / "cache").glob("*.tmp")), "no partial shard may be left behind"
  encoded_rows = []
  original = encoder.encode_tokens
  monkeypatch.setattr(encoder, "encode_tokens",
                      lambda ids, m: encoded_rows.append(len(ids)) or original(ids, m))
  report = encode_captions(source, encoder, tmp_path / "cache", shard_size=10, progress=False)
  assert report.skipped_shards == 2 and report.encoded == len(CAPTIONS) - 20
  assert sum(encoded_rows) == len(CAPTIONS) - 20, "finished shards must not be re-encoded"
  fresh = encode_captions(source, encoder, tmp_path / "fresh", shard_size=10, progress=False)
  a, b = EmbeddingCache(tmp_path / "cache"), EmbeddingCache(tmp_path / "fresh")
  assert a.ids == b.ids and fresh.encoded == len(CAPTIONS)
  for i in (0, 15, 47):
    np.testing.assert_array_equal(a[i]["embeddings"], b[i]["embeddings"])
  # a finished cache is not recomputed
  encoded_rows.clear()
  again = encode_captions(source, encoder, tmp_path / "cache", shard_size=10, progress=False)
  assert again.encoded == 0 and encoded_rows == []


def test_mismatched_cache_is_refused(t5_dir, encoder, tmp_path):
  source = CaptionFile(str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:5])))
  encode_captions(source, encoder, tmp_path / "cache", progress=False)
  longer = TextEncoder.from_directory(t5_dir, max_length=32, batch_size=8)
  with pytest.raises(CacheError, match="max_length: cache has 24, this run has 32"):
    encode_captions(source, longer, tmp_path / "cache", progress=False)
  other = TextEncoder.from_directory(build_default_t5(tmp_path / "s1", CAPTIONS, seed=1),
                                     max_length=24)
  with pytest.raises(CacheError, match="encoder_fingerprint"):
    encode_captions(source, other, tmp_path / "cache", progress=False)
  with pytest.raises(CacheError, match="storage_dtype"):
    encode_captions(source, encoder, tmp_path / "cache", storage_dtype="float16", progress=False)
  other_captions = CaptionFile(str(write_jsonl(tmp_path / "other.jsonl", CAPTIONS[:6])))
  with pytest.raises(CacheError, match="another source.*num_examples: cache has 5, this run has "
                     "6.*--config.data.captions"):
    encode_captions(other_captions, encoder, tmp_path / "cache", progress=False)
  edited = CaptionFile(str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[1:6])))
  with pytest.raises(CacheError, match="another source.*fingerprint"):
    encode_captions(edited, encoder, tmp_path / "cache", progress=False)


def test_cache_follows_its_captions_when_they_move(encoder, tmp_path, monkeypatch):
  """A cache is tied to what its captions are, not where they were read (issue 21)."""
  (tmp_path / "a").mkdir()
  source = CaptionFile(str(write_jsonl(tmp_path / "a" / "caps.jsonl", CAPTIONS[:5])))
  encode_captions(source, encoder, tmp_path / "cache", progress=False)
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "caps.jsonl").rename(tmp_path / "b" / "caps.jsonl")
  (tmp_path / "cache").rename(tmp_path / "b" / "cache")
  monkeypatch.chdir(tmp_path / "b")
  monkeypatch.setattr(encoder, "encode_tokens", lambda *a: pytest.fail("re-encoded"))
  report = encode_captions(CaptionFile("caps.jsonl"), encoder, "cache", progress=False)
  assert report.encoded == 0 and report.num_examples == 5
  manifest = json.loads((tmp_path / "b" / "cache" / "manifest.json").read_text())
  assert manifest["source"]["location"] == str(tmp_path / "b" / "caps.jsonl")


def test_source_identity_and_format_1_manifests():
  from imagen_jax.text.sources import same_source

  now = {"kind": "tfds", "name": "shapes", "config": "r64", "version": "1.0.0", "split": "train",
         "num_examples": 4000, "fingerprint": "ab12", "location": "/new/shapes/r64/1.0.0"}
  assert same_source({**now, "location": "/old/place/shapes/r64/1.0.0"}, now)
  assert not same_source({**now, "fingerprint": "cd34"}, now)
  assert not same_source({**now, "split": "test"}, now)
  # a manifest written before descriptions had fingerprints named the path itself
  legacy = {"kind": "tfds", "dataset": "/old/run/data/shapes/r64/1.0.0", "split": "train",
            "num_examples": 4000}
  assert same_source(legacy, now)
  assert not same_source({**legacy, "num_examples": 10}, now)
  assert not same_source({**legacy, "dataset": "/old/run/data/fashion/1.0.0"}, now)
  legacy_file = {"kind": "file", "path": "/old/caps.jsonl", "num_examples": 5}
  assert same_source(legacy_file, {"kind": "file", "name": "caps.jsonl", "num_examples": 5,
                                   "fingerprint": "x", "location": "/new/caps.jsonl"})
  assert not same_source(legacy_file, now)


def test_recorded_paths_resolve_under_a_moved_workdir(tmp_path, monkeypatch):
  from imagen_jax.paths import record_path, resolve_path

  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs" / "w" / "data").mkdir(parents=True)
  assert record_path("runs/w/data/shapes/1.0.0", "runs/w") == "{workdir}/data/shapes/1.0.0"
  assert record_path(f"tfds:{tmp_path}/runs/w/data", tmp_path / "runs" / "w") == "{workdir}/data"
  assert record_path("elsewhere/t5", "runs/w") == str(tmp_path / "elsewhere" / "t5")
  assert record_path("shapes@/data", "runs/w") == "shapes@/data"
  assert record_path("", "runs/w") == ""
  assert resolve_path("{workdir}/data/shapes/1.0.0", "/mnt/copy") == "/mnt/copy/data/shapes/1.0.0"
  assert resolve_path("/abs/t5", "/mnt/copy") == "/abs/t5"
  with pytest.raises(ValueError, match="relative to a workdir"):
    resolve_path("{workdir}/data", None)


def test_duplicate_ids_and_truncation_are_reported(encoder, tmp_path, caplog):
  dup = tmp_path / "dup.jsonl"
  dup.write_text('{"id": "a", "caption": "x"}\n{"id": "a", "caption": "y"}\n')
  with pytest.raises(CacheError, match="duplicate example id 'a'"):
    encode_captions(CaptionFile(str(dup)), encoder, tmp_path / "c1", progress=False)
  long = " and ".join(CAPTIONS[:6])
  source = CaptionFile(str(write_jsonl(tmp_path / "long.jsonl", [long, CAPTIONS[0]])))
  report = encode_captions(source, encoder, tmp_path / "c2", progress=False)
  assert report.num_truncated == 1 and report.max_tokens > 24
  assert "1 of 2 newly encoded captions were longer than max_length=24" in caplog.text
  manifest = json.loads((tmp_path / "c2" / "manifest.json").read_text())
  assert manifest["num_truncated"] == 1 and manifest["complete"]


def test_caption_files_and_tfds_source(tmp_path):
  (tmp_path / "c.csv").write_text("id,caption\nq1,a red circle\nq2,\"a blue, big square\"\n")
  assert list(caption_source(f"file:{tmp_path / 'c.csv'}")) == [
      ("q1", "a red circle"), ("q2", "a blue, big square")]
  (tmp_path / "c.txt").write_text("first\nsecond\n")
  assert list(caption_source(f"file:{tmp_path / 'c.txt'}")) == [("0", "first"), ("1", "second")]
  (tmp_path / "c.tsv").write_text("")
  with pytest.raises(ValueError, match="unknown format"):
    caption_source(f"file:{tmp_path / 'c.tsv'}")
  with pytest.raises(ValueError, match="must look like"):
    caption_source("captions.jsonl")

  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"id": f"img{i}", "caption": CAPTIONS[i]}

  TinyCaptions(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  source = caption_source(f"tfds:{tmp_path / 'tfds' / 'tiny_captions' / '1.0.0'}", "train")
  assert len(source) == 6
  assert sorted(source) == sorted((f"img{i}", CAPTIONS[i]) for i in range(6))
  described = source.describe()
  assert {k: described[k] for k in ("kind", "name", "version", "split", "num_examples")} == {
      "kind": "tfds", "name": "tiny_captions", "version": "1.0.0", "split": "train",
      "num_examples": 6}
  # the same split read from a copy elsewhere is the same source; the other split is not
  import shutil
  shutil.copytree(tmp_path / "tfds", tmp_path / "copy" / "tfds")
  copied = caption_source(f"tfds:{tmp_path / 'copy' / 'tfds' / 'tiny_captions' / '1.0.0'}")
  assert copied.describe()["location"] != described["location"]
  assert copied.describe()["fingerprint"] == described["fingerprint"]
  test_split = caption_source(f"tfds:{tmp_path / 'tfds' / 'tiny_captions' / '1.0.0'}", "test")
  assert test_split.describe()["fingerprint"] != described["fingerprint"]


def test_cli_encode_end_to_end(tmp_path, capsys):
  caps = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:12])
  args = ["encode", "--config", str(CONFIGS / "text.py"), "--workdir", str(tmp_path / "w"),
          f"--config.data.captions=file:{caps}", "--config.text.max_length=16",
          "--config.text.batch_size=4"]
  assert cli_main(args) == 0
  out = capsys.readouterr().out
  assert "building the embedded tiny T5" in out and "12 captions" in out
  cache = EmbeddingCache(tmp_path / "w" / "text_cache" / "train")
  assert len(cache) == 12 and cache.spec.max_length == 16
  assert cli_main(args) == 0
  assert "already complete" in capsys.readouterr().out
  assert cli_main(args[:-2] + ["--config.text.max_length=20"]) == 2
  assert "max_length: cache has 16, this run has 20" in capsys.readouterr().err
  config = apply_overrides(load_config(str(CONFIGS / "text.py")), ["data.captions="])
  with pytest.raises(ValueError, match="config.data.captions is empty"):
    run_encode(config, tmp_path / "w2")


def test_device_put_consuming_releases_host_arrays():
  """Each host array is dropped once it is on the device (no second full copy of T5-XXL)."""
  import gc
  import weakref

  import jax

  from imagen_jax.text.encoder import device_put_consuming

  class Tracked(np.ndarray):
    pass

  host = {"a": {"k": np.ones((4, 4), np.float32).view(Tracked)},
          "b": np.zeros((3,), np.float32).view(Tracked)}
  refs = [weakref.ref(host["a"]["k"]), weakref.ref(host["b"])]
  out = device_put_consuming(host)
  gc.collect()
  assert host == {} and all(r() is None for r in refs)
  assert isinstance(out["a"]["k"], jax.Array) and float(out["a"]["k"].sum()) == 16.0
