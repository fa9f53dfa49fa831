"""`imagen-jax encode` on a DeepFloyd IF directory: the embedding cache IF fine-tuning reads.

The oracle is transformers' PyTorch `T5EncoderModel` on IF's tokenization, computed as diffusers'
`IFPipeline.encode_prompt` does (lower-case and strip, 77 tokens, the attention mask into T5, every
hidden state kept); tests/test_deepfloyd_if.py checks that `encode_prompt` itself agrees with our
IF encoder, importing diffusers (5 s) is left to it. The tiny IF directory is laid out as a user
downloads one: text_encoder/ and tokenizer/ saved by `save_pretrained`, and model_index.json.
"""

import dataclasses
import json
import shutil
import types
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from imagen_jax.cli import main as cli_main
from imagen_jax.configlib import apply_overrides, load_config
from imagen_jax.text.cache import (NULL_EMBEDDING_FILE, CacheError, CacheSpec, CacheWriter,
                                   EmbeddingCache)
from imagen_jax.text.encode import cache_dir_for, run_encode
from imagen_jax.text.encoder import checkpoint_fingerprint, open_text_encoder
from imagen_jax.text.tokenizer import train_sentencepiece

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CAPTIONS = ["a red circle", "a blue square on the left", "a green triangle above a small cube",
            "two large yellow stars", "a painting of a squirrel eating a burger"]
# IF's preprocessing must show (case, surrounding spaces), one caption is cut at 77 tokens
PROMPTS = ["A Red Circle", "  a blue square on the left ", "Two large YELLOW stars",
           " ".join(CAPTIONS * 4), "a green triangle"]
MODEL_INDEX = {"_class_name": "IFPipeline", "_diffusers_version": "0.30.0",
               "tokenizer": ["transformers", "T5Tokenizer"],
               "text_encoder": ["transformers", "T5EncoderModel"],
               "unet": ["diffusers", "UNet2DConditionModel"],
               "scheduler": ["diffusers", "DDPMScheduler"]}


@pytest.fixture(scope="module")
def if_dirs(tmp_path_factory):
  """A tiny IF stage I directory (text_encoder/, tokenizer/, model_index.json), a stage-II-like
  one without text_encoder/, and the torch tokenizer and T5 they were saved from."""
  root = tmp_path_factory.mktemp("if_text")
  tokenizer = transformers.T5Tokenizer.from_pretrained(
      str(train_sentencepiece(CAPTIONS, root / "spm", vocab_size=96)), local_files_only=True)
  torch.manual_seed(0)
  t5 = transformers.T5EncoderModel(transformers.T5Config(
      d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
      vocab_size=len(tokenizer))).eval()
  stage_i, stage_ii = root / "IF-I", root / "IF-II"
  for stage in (stage_i, stage_ii):
    tokenizer.save_pretrained(str(stage / "tokenizer"))
    (stage / "model_index.json").write_text(json.dumps(MODEL_INDEX))
  t5.save_pretrained(str(stage_i / "text_encoder"))
  return types.SimpleNamespace(stage_i=stage_i, stage_ii=stage_ii, tokenizer=tokenizer, t5=t5)


def _encode_prompt(if_dirs, prompts):
  """`IFPipeline.encode_prompt` without a pipeline: hidden states (n, 77, D) and the mask."""
  tokens = if_dirs.tokenizer([p.lower().strip() for p in prompts], padding="max_length",
                             max_length=77, truncation=True, add_special_tokens=True,
                             return_tensors="pt")
  with torch.no_grad():
    out = if_dirs.t5(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
  return out.numpy(), tokens.attention_mask.numpy().astype(bool)


def _config(if_dirs, captions_file, *overrides):
  return apply_overrides(load_config(str(CONFIGS / "text.py")), [
      f"data.captions=file:{captions_file}", f"text.encoder={if_dirs.stage_i}",
      "text.batch_size=4", "text.cache_dtype=float32", "text.shard_size=3", *overrides])


def test_encode_if_directory_matches_encode_prompt(if_dirs, tmp_path, capsys):
  """Every caption's 77 hidden states (padding positions included) and the null embedding (the
  encoding of "") as IF's pipeline computes them; sampling the workdir loads the same encoder."""
  from imagen_jax.cascade import encoder_for

  captions = tmp_path / "caps.jsonl"
  captions.write_text("".join(json.dumps({"id": f"ex{i}", "caption": c}) + "\n"
                              for i, c in enumerate(PROMPTS)))
  config = _config(if_dirs, captions, "text.max_length=77")
  workdir = tmp_path / "w"
  [report] = run_encode(config, workdir, progress=False)
  assert report.num_truncated == 1 and "1 truncated at 77 tokens" in capsys.readouterr().out
  cache = EmbeddingCache(cache_dir_for(config, workdir, "train"))
  assert cache.spec.keep_padding and cache.spec.max_length == 77 and cache.spec.width == 32
  assert cache.spec.encoder_fingerprint == checkpoint_fingerprint(
      if_dirs.stage_i / "text_encoder", if_dirs.stage_i / "tokenizer")
  assert (cache.dir / NULL_EMBEDDING_FILE).is_file()

  got, got_mask = cache.lookup([f"ex{i}" for i in range(len(PROMPTS))])
  want, want_mask = _encode_prompt(if_dirs, PROMPTS)
  np.testing.assert_array_equal(got_mask, want_mask)
  assert got_mask[3].all() and not got_mask[0].all()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert np.abs(got[0, ~got_mask[0]]).min() > 0, "IF's U-Net sees T5's padding outputs: kept"
  null, _ = _encode_prompt(if_dirs, [""])
  assert cache.null_embedding.dtype == np.float32
  np.testing.assert_allclose(cache.null_embedding, null[0], atol=1e-5, rtol=0)

  trained = ml_collections.ConfigDict(config.to_dict())  # a stage's config: one data split
  trained.data.split = "train"
  encoder = encoder_for(workdir, trained)  # as `imagen-jax sample --workdir` loads it
  assert encoder.fingerprint == cache.spec.encoder_fingerprint and not encoder.zero_padding
  with pytest.raises(CacheError, match="keep_padding: cache has True, this run has False"):
    EmbeddingCache(cache.dir, dataclasses.replace(cache.spec, keep_padding=False))


def test_if_directory_errors(if_dirs, tmp_path, capsys):
  """max_length other than IF's 77, and a stage II directory (no T5), are one-line errors."""
  captions = tmp_path / "caps.jsonl"
  captions.write_text(json.dumps({"id": "a", "caption": "a red circle"}) + "\n")
  args = ["encode", "--config", str(CONFIGS / "text.py"), "--workdir", str(tmp_path / "w"),
          f"--config.data.captions=file:{captions}", f"--config.text.encoder={if_dirs.stage_i}"]
  assert cli_main(args) == 2  # config.text.max_length is 128 by default
  err = capsys.readouterr().err
  assert "--config.text.max_length=77" in err and "Traceback" not in err
  with pytest.raises(FileNotFoundError, match="stage I's directory .* carries"):
    open_text_encoder(if_dirs.stage_ii)
  with pytest.raises(FileNotFoundError, match="stage I's directory"):
    run_encode(_config(if_dirs, captions, f"text.encoder={if_dirs.stage_ii}",
                       "text.max_length=77"), tmp_path / "w2")


def _write_cache(directory, spec, embeddings, lengths):
  writer = CacheWriter(directory, spec, shard_size=8, source={"kind": "test"})
  writer.write_shard(0, [f"ex{i}" for i in range(len(lengths))], embeddings, lengths)
  writer.finish(len(lengths), 1)


def test_keep_padding_records_and_old_manifests(tmp_path):
  """keep_padding records return every position as written; a format-1 cache (no keep_padding in
  its spec, no null_embedding.npy) still opens, as our trimmed layout with a null input of 0."""
  rng = np.random.default_rng(0)
  lengths = np.array([2, 5, 1])
  full = rng.standard_normal((3, 6, 4)).astype(np.float32)
  kept = CacheSpec("f" * 16, 6, 4, "float32", keep_padding=True)
  _write_cache(tmp_path / "kept", kept, full, lengths)
  with pytest.raises(CacheError, match="no null_embedding.npy"):
    EmbeddingCache(tmp_path / "kept")
  CacheWriter(tmp_path / "kept", kept, 8, {"kind": "test"}).write_null_embedding(full[0])
  cache = EmbeddingCache(tmp_path / "kept", kept)
  emb, mask = cache.lookup(["ex1", "ex2"])
  np.testing.assert_array_equal(emb, full[1:])
  np.testing.assert_array_equal(mask.sum(1), lengths[1:])
  np.testing.assert_array_equal(cache.null_embedding, full[0])

  trimmed = dataclasses.replace(kept, keep_padding=False)
  _write_cache(tmp_path / "old", trimmed, full, lengths)
  manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
  del manifest["spec"]["keep_padding"]
  (tmp_path / "old" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
  old = EmbeddingCache(tmp_path / "old", trimmed)
  assert not old.spec.keep_padding and not (old.dir / NULL_EMBEDDING_FILE).exists()
  np.testing.assert_array_equal(old.null_embedding, np.zeros((6, 4), np.float32))
  emb, mask = old.lookup(["ex1"])
  np.testing.assert_array_equal(emb[0], np.where(mask[0, :, None], full[1], 0.0))
  with pytest.raises(CacheError, match="keep_padding: cache has False, this run has True"):
    EmbeddingCache(tmp_path / "old", kept)
  with pytest.raises(CacheError, match=r"null embedding of shape \(5, 4\)"):
    CacheWriter(tmp_path / "old", trimmed, 8, {"kind": "test"}).write_null_embedding(full[0, :5])
