"""Flax T5 encoder and HF checkpoint import vs transformers' PyTorch T5 (the oracle)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from imagen_jax.text import T5Config, T5Encoder, load_t5_encoder, save_t5_encoder
from imagen_jax.text.t5 import relative_position_bucket

TINY = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20)
LENGTHS = (24, 17, 5)  # L = 24 reaches the exact, log and clamped buckets.
FP32_TOL = 1e-5


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random values for EVERY weight (norms too, so a missing or misplaced norm shows)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif p.ndim == 2 and "relative_attention_bias" not in name and "shared" not in name:
        p.copy_(torch.randn(p.shape, generator=gen) * 0.5 / p.shape[1] ** 0.5)
      else:
        p.copy_(torch.randn(p.shape, generator=gen))
  return model.eval()


def _hf_model(cls: type, ff: str, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  config = transformers.T5Config(**TINY, feed_forward_proj=ff, dropout_rate=0.0,
                                 attn_implementation="eager")
  return _randomise(cls(config), seed)


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  mask = np.arange(max(LENGTHS))[None, :] < np.array(LENGTHS)[:, None]
  ids = np.where(mask, rng.integers(1, TINY["vocab_size"], mask.shape), 0).astype(np.int32)
  return ids, mask


def _torch_encode(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    out = encoder(input_ids=torch.from_numpy(ids).long(),
                  attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  return out.numpy()


def _encode(config: T5Config, params, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  fn = jax.jit(lambda p, i, m: T5Encoder(config).apply({"params": p}, i, m))
  return np.asarray(fn(params, ids, mask), np.float32)


def _max_err(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  return float(np.max(np.abs(a - b)[mask]))


@pytest.fixture(scope="module", params=["gated-gelu", "relu"])
def saved(request, tmp_path_factory):
  """(feed_forward_proj, torch model, safetensors checkpoint dir)."""
  model = _hf_model(transformers.T5EncoderModel, request.param)
  path = tmp_path_factory.mktemp(f"t5_{request.param}")
  model.save_pretrained(path)
  return request.param, model, path


@pytest.mark.parametrize("num_buckets,max_distance,length", [(8, 20, 24), (32, 128, 300)])
def test_relative_position_bucket_matches_hf(num_buckets, max_distance, length):
  pos = np.arange(length)
  rel = pos[None, :] - pos[:, None]
  want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
    torch.from_numpy(rel), bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
  got = relative_position_bucket(rel, num_buckets, max_distance)
  np.testing.assert_array_equal(got, want.numpy())
  # Every reachable bucket (exact, log, clamped; both directions) is exercised. Bucket
  # num_buckets // 2 would be "distance 0, key after query", which cannot happen.
  assert set(np.unique(got)) == set(range(num_buckets)) - {num_buckets // 2}


def test_parity_safetensors(saved):
  ff, model, path = saved
  config, params = load_t5_encoder(path)
  assert config.feed_forward_proj == ff and config.num_layers == TINY["num_layers"]
  ids, mask = _batch()
  err = _max_err(_encode(config, params, ids, mask), _torch_encode(model, ids, mask), mask)
  print(f"{ff} safetensors max abs err {err:.2e}")
  assert err <= FP32_TOL


def test_padding_does_not_leak(saved):
  _, _, path = saved
  config, params = load_t5_encoder(path)
  ids, mask = _batch()
  other = np.where(mask, ids, (ids + 7) % TINY["vocab_size"] + 1).astype(np.int32)
  a, b = _encode(config, params, ids, mask), _encode(config, params, other, mask)
  np.testing.assert_array_equal(a[mask], b[mask])


def test_bfloat16_compute_close_to_fp32(saved):
  """bf16 compute (fp32 params): max abs error <= 5% of the largest fp32 activation."""
  _, _, path = saved
  config, params = load_t5_encoder(path)
  ids, mask = _batch()
  ref = _encode(config, params, ids, mask)
  got = _encode(dataclasses.replace(config, dtype=jnp.bfloat16), params, ids, mask)
  err = _max_err(got, ref, mask)
  print(f"bf16 max abs err {err:.2e} (scale {np.abs(ref[mask]).max():.2f})")
  assert err <= 0.05 * np.abs(ref[mask]).max()
  # Casting the params to bf16 on load works too.
  config16, params16 = load_t5_encoder(path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
  got16 = _encode(dataclasses.replace(config16, dtype=jnp.bfloat16), params16, ids, mask)
  assert _max_err(got16, ref, mask) <= 0.05 * np.abs(ref[mask]).max()


def test_full_seq2seq_checkpoint(tmp_path):
  model = _hf_model(transformers.T5ForConditionalGeneration, "gated-gelu", seed=1)
  model.save_pretrained(tmp_path)
  config, params = load_t5_encoder(tmp_path)
  ids, mask = _batch(1)
  err = _max_err(_encode(config, params, ids, mask), _torch_encode(model, ids, mask), mask)
  print(f"T5ForConditionalGeneration max abs err {err:.2e}")
  assert err <= FP32_TOL


def test_sharded_checkpoint(tmp_path):
  model = _hf_model(transformers.T5EncoderModel, "gated-gelu", seed=2)
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
  config, params = load_t5_encoder(tmp_path)
  ids, mask = _batch(2)
  err = _max_err(_encode(config, params, ids, mask), _torch_encode(model, ids, mask), mask)
  print(f"sharded max abs err {err:.2e}")
  assert err <= FP32_TOL


def test_pytorch_bin_checkpoint(tmp_path, monkeypatch):
  model = _hf_model(transformers.T5EncoderModel, "relu", seed=3)
  model.config.to_json_file(tmp_path / "config.json")
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  config, params = load_t5_encoder(tmp_path)
  ids, mask = _batch(3)
  err = _max_err(_encode(config, params, ids, mask), _torch_encode(model, ids, mask), mask)
  print(f"pytorch_model.bin max abs err {err:.2e}")
  assert err <= FP32_TOL
  monkeypatch.setitem(sys.modules, "torch", None)  # As if torch were not installed.
  with pytest.raises(ImportError, match="needs torch"):
    load_t5_encoder(tmp_path)


def _copy_with_tensors(src: Path, dst: Path, tensors: dict[str, np.ndarray]) -> Path:
  dst.mkdir()
  shutil.copy(src / "config.json", dst / "config.json")
  save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
  return dst


def test_errors_name_the_problem(saved, tmp_path):
  _, _, path = saved
  tensors = load_file(str(path / "model.safetensors"))
  name = "encoder.block.1.layer.0.SelfAttention.k.weight"

  missing = {k: v for k, v in tensors.items() if k != name}
  with pytest.raises(ValueError, match=r"missing.*block\.1\.layer\.0\.SelfAttention\.k\.weight"):
    load_t5_encoder(_copy_with_tensors(path, tmp_path / "missing", missing))

  wrong = dict(tensors, **{name: np.zeros((32, 31), np.float32)})
  with pytest.raises(ValueError, match=r"shape.*SelfAttention\.k\.weight.*\(32, 31\).*\(32, 32\)"):
    load_t5_encoder(_copy_with_tensors(path, tmp_path / "wrong", wrong))

  extra = dict(tensors, **{"encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
                           np.zeros((8, 4), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected.*block\.1.*relative_attention_bias"):
    load_t5_encoder(_copy_with_tensors(path, tmp_path / "extra", extra))

  with pytest.raises(FileNotFoundError, match="directory not found"):
    load_t5_encoder(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_t5_encoder(tmp_path / "empty")
  no_weights = tmp_path / "no_weights"
  no_weights.mkdir()
  shutil.copy(path / "config.json", no_weights / "config.json")
  (no_weights / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"no weights file.*notes\.txt"):
    load_t5_encoder(no_weights)

  hf = json.loads((path / "config.json").read_text())
  with pytest.raises(ValueError, match="model_type is 'bert'"):
    T5Config.from_hf_dict(dict(hf, model_type="bert"))
  with pytest.raises(ValueError, match="BertModel"):
    T5Config.from_hf_dict(dict(hf, architectures=["BertModel"]))
  with pytest.raises(ValueError, match="'d_kv'"):
    T5Config.from_hf_dict({k: v for k, v in hf.items() if k != "d_kv"})
  with pytest.raises(ValueError, match="unknown activation 'foo'"):
    T5Config.from_hf_dict(dict(hf, feed_forward_proj="gated-foo"))


def test_save_round_trip_is_real_hf(saved, tmp_path):
  _, _, path = saved
  config, params = load_t5_encoder(path)
  out = tmp_path / "ours"
  save_t5_encoder(out, config, params)
  save_t5_encoder(out, config, params)  # Overwriting an existing checkpoint works.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]  # No temp leftovers.
  config2, params2 = load_t5_encoder(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  hf = transformers.T5EncoderModel.from_pretrained(out, attn_implementation="eager").eval()
  ids, mask = _batch(4)
  err = _max_err(_encode(config, params, ids, mask), _torch_encode(hf, ids, mask), mask)
  print(f"transformers on our saved checkpoint: max abs err {err:.2e}")
  assert err <= FP32_TOL


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_logical_axis_names(ff):
  config = T5Config(**TINY, feed_forward_proj=ff)
  ids = jnp.ones((2, 5), jnp.int32)
  boxed = jax.eval_shape(lambda: T5Encoder(config).init(jax.random.key(0), ids, ids))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
  specs = nn.get_partition_spec(boxed)
  attn = specs["block_0"]["layer_0"]["SelfAttention"]
  assert tuple(attn["q"]["kernel"]) == ("embed", "heads")
  assert tuple(attn["o"]["kernel"]) == ("heads", "embed")
  assert tuple(attn["relative_attention_bias"]["embedding"]) == ("relpos_buckets", "heads")
  assert "relative_attention_bias" not in specs["block_1"]["layer_0"]["SelfAttention"]
  assert tuple(specs["embed_tokens"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["final_layer_norm"]["scale"]) == ("embed",)
  ffn = specs["block_0"]["layer_1"]["DenseReluDense"]
  assert tuple(ffn["wo"]["kernel"]) == ("mlp", "embed")
  assert tuple(ffn["wi_0" if ff == "gated-gelu" else "wi"]["kernel"]) == ("embed", "mlp")
