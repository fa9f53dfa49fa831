"""The pure parts of the peers benchmark (benchmarks/peers): tables and ratios, the groups, FLOP
counting, BENCH-A in ours and in diffusers, the offline imagen-pytorch helpers, and the worker
protocol on a tiny matmul. Nothing here times anything; imagen-pytorch is not needed."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from benchmarks.peers import harness, peer_env, spec, stats
from benchmarks.peers.flops import conv_flops, jax_flops, torch_flops

# --- medians, ratios, the table --------------------------------------------------------------


def test_median_ratio_summarise():
  assert stats.median([3.0, 1.0, 2.0]) == 2.0
  assert stats.median([1.0, float("nan"), 3.0]) == 2.0
  assert math.isnan(stats.median([]))
  assert stats.ratio(1.0, 4.0) == 0.25
  assert math.isnan(stats.ratio(1.0, 0.0)) and math.isnan(stats.ratio(float("nan"), 1.0))
  s = stats.summarise([[1.0, 3.0], [5.0], [0.5, 0.7, 0.9]])  # per repetition: 2, 5, 0.7
  assert s == {"median_s": 2.0, "min_s": 0.7, "max_s": 5.0, "reps": 3}


def _entry(label, median_s, flops=None, params=None):
  return {"group": "g", "case": "train", "label": label, "median_s": median_s,
          "min_s": median_s, "reps": 3, "flops": flops, "params": params,
          "peak_rss_mb": 900.0, "baseline_rss_mb": 400.0}


def test_group_rows_ratio_is_ours_over_peer():
  rows = stats.group_rows([_entry("ours", 0.5, flops=100e9, params=2e6),
                           _entry("peer", 1.0, flops=80e9)], roof_gflops=400.0)
  ours, peer = rows
  assert math.isnan(ours["ratio"]) and math.isnan(ours["speedup"])
  assert peer["ratio"] == pytest.approx(0.5)  # ours/peer: ours takes half the time
  assert peer["speedup"] == pytest.approx(2.0)
  assert ours["gflop_per_s"] == pytest.approx(200.0)
  assert ours["roof_share"] == pytest.approx(0.5)
  assert peer["gflop"] == pytest.approx(80.0)
  no_ratio = stats.group_rows([_entry("a", 1.0), _entry("b", 2.0)], None, ratios=False)
  assert math.isnan(no_ratio[1]["ratio"]) and math.isnan(no_ratio[1]["speedup"])
  no_roof = stats.group_rows([_entry("ours", 0.5, flops=1e9)], roof_gflops=None)
  assert math.isnan(no_roof[0]["roof_share"])


def test_format_table():
  rows = stats.group_rows([_entry("ours", 0.5, flops=100e9, params=2e6), _entry("peer", 1.0)],
                          roof_gflops=400.0)
  table = stats.format_table(rows)
  lines = table.splitlines()
  assert len(lines) == 4 and lines[1].startswith("|:")
  assert len({len(line) for line in lines}) == 1  # aligned
  assert lines[2].split("|")[1].strip() == "g" and lines[3].split("|")[1].strip() == ""
  assert "2.00M" in lines[2] and "500.0" in lines[2] and "2.00×" in lines[3]
  assert "50%" in lines[2] and "–" in lines[3]  # the peer has no FLOPs: no rate, no share
  assert lines[2].split("|")[-2].strip() == "500"  # Δ RSS = 900 − 400


# --- groups and alternation ----------------------------------------------------------------------


def test_rotation_alternates_the_start():
  assert [harness.rotation(2, r) for r in range(3)] == [[0, 1], [1, 0], [0, 1]]
  assert harness.rotation(3, 1) == [1, 2, 0]
  for r in range(6):
    assert sorted(harness.rotation(3, r)) == [0, 1, 2]


def test_build_groups():
  groups = spec.build_groups(list(spec.DEFAULT_CASES), ["imagen-pytorch", "diffusers"])
  by_case = {}
  for g in groups:
    by_case.setdefault(g.case, []).append(g)
    assert g.entries[0].framework in ("ours", "numpy")  # ratios are against the first entry
  assert [e.framework for e in by_case["train"][0].entries] == [
      "ours", "ours", "imagen-pytorch", "diffusers"]
  # The like-for-like layout leads (the ratios are against it); the Efficient U-Net is second.
  assert [e.kwargs.get("layout", "adm") for e in by_case["train"][0].entries[:2]] == [
      "adm", "efficient"]
  default = {g.entries[1].framework: g for g in by_case["sample_default"]}
  assert default["imagen-pytorch"].entries[0].kwargs == {"sampler": "ddpm", "steps": 1000}
  assert default["diffusers"].entries[1].kwargs == {"sampler": "ddim", "steps": 50}
  ours = by_case["sample_ours"][0]
  assert {e.kwargs["steps"] for e in ours.entries} == {25}
  assert [e.framework for e in by_case["roof"][0].entries] == list(spec.ROOF_FRAMEWORKS)
  cache = by_case["cache"]  # tiny T5, then a T5-base-sized encoder; cache vs on the fly in each
  assert [[(e.kwargs["text"], e.kwargs.get("t5", "tiny")) for e in g.entries] for g in cache] == [
      [("cache", "tiny"), ("on_the_fly", "tiny")], [("cache", "base"), ("on_the_fly", "base")]]

  only_diffusers = spec.build_groups(["train", "sample_default"], ["diffusers"],
                                     {"diffusers": 3, "ours": 2})
  assert [e.framework for e in only_diffusers[0].entries] == ["ours", "ours", "diffusers"]
  assert len(only_diffusers) == 2 and only_diffusers[1].entries[0].kwargs["steps"] == 3
  with pytest.raises(ValueError, match="unknown case"):
    spec.build_groups(["nope"], [])
  e = ours.entries[0]
  assert spec.Entry.from_json(e.to_json()) == e


def test_targets_per_entry_of_ours():
  def row(label, framework, median_s, **params):
    return {"case": "train", "label": label, "median_s": median_s,
            "entry": {"framework": framework, "params": params}}

  rows = [row("ours", "ours", 1.0), row("ours, Efficient U-Net", "ours", 0.5, layout="efficient"),
          row("imagen-pytorch", "imagen-pytorch", 1.2), row("diffusers", "diffusers", 0.1)]
  lines = harness.targets(rows)
  assert lines == [
      "train: ours is 1.20× as fast as imagen-pytorch (target ≥ 1.5×: NOT met)",
      "train: ours, Efficient U-Net is 2.40× as fast as imagen-pytorch (target ≥ 1.5×: met)"]
  assert harness.targets([r for r in rows if r["entry"]["framework"] != "imagen-pytorch"]) == []


def test_parse_args():
  args = harness.parse_args(["--cases", "train,forward", "--reps", "1", "--warmup", "0"])
  assert args.case_list == ["train", "forward"] and args.reps == 1
  with pytest.raises(SystemExit):
    harness.parse_args(["--cases", "bogus"])


def test_inputs_are_masked_prefixes():
  x = spec.make_inputs()
  assert x.images.shape == (spec.BATCH, 32, 32, 3) and x.images.dtype == np.float32
  assert x.text.shape == (spec.BATCH, spec.TEXT_LEN, spec.TEXT_DIM)
  lengths = x.mask.sum(1)
  assert (lengths >= 1).all() and (x.mask == (np.arange(spec.TEXT_LEN) < lengths[:, None])).all()
  assert (x.text[~x.mask] == 0).all()
  assert x.nchw_images().shape == (spec.BATCH, 3, 32, 32)
  np.testing.assert_array_equal(spec.make_inputs().text, x.text)  # same numbers every time


# --- FLOP counting ---------------------------------------------------------------------------


def test_jax_flops_matmul_conv_scan():
  import jax
  import jax.numpy as jnp

  m, k, n = 8, 16, 4
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  assert jax_flops(jnp.matmul, a, b) == 2 * m * n * k
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  from benchmarks.peers.flops import xla_flops
  assert xla_flops(compiled) == 2 * m * n * k

  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]

  assert jax_flops(scanned, a, b) == 7 * 2 * m * n * k

  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))
  conv = lambda x, w, s: jax.lax.conv_general_dilated(x, w, (s, s), "SAME",
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  forward = jax_flops(lambda x, w: conv(x, w, 1), x, w)
  assert forward == 2 * (2 * 8 * 8 * 5) * (4 * 9)
  strided = jax_flops(lambda x, w: conv(x, w, 2), x, w)
  assert strided == 2 * (2 * 4 * 4 * 5) * (4 * 9)
  # Backward of a strided conv: input and kernel gradients, each as costly as the forward (the
  # input gradient's dilation zeros are not counted, as in PyTorch's count).
  grads = jax_flops(jax.grad(lambda x, w: conv(x, w, 2).sum(), argnums=(0, 1)), x, w)
  assert grads == 3 * strided


def test_conv_flops_formula():
  assert conv_flops((3, 3, 4, 5), (2, 8, 8, 5), (3, 2, 0, 1)) == 2 * 2 * 64 * 5 * 36
  assert conv_flops((3, 3, 4, 5), (2, 8, 8, 5), (3, 2, 0, 1), (2, 2)) == 2 * 2 * 64 * 5 * 36 // 4


def test_torch_flops_matmul_and_cpu_attention():
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F

  a, b = torch.ones(8, 16), torch.ones(16, 4)
  assert torch_flops(lambda: a @ b) == 2 * 8 * 4 * 16
  bsz, heads, lq, lk, d = 2, 4, 64, 16, 32
  q, k, v = torch.randn(bsz, heads, lq, d), torch.randn(bsz, heads, lk, d), torch.randn(
      bsz, heads, lk, d)
  mask = torch.ones(bsz, 1, 1, lk, dtype=torch.bool)
  expected = 2 * 2 * bsz * heads * lq * lk * d  # q·kᵀ and weights·v
  assert torch_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == expected
  assert torch_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == expected


# --- BENCH-A, ours ---------------------------------------------------------------------------


def _independent_param_count() -> int:
  """The BENCH-A U-Net's parameters, counted by hand from imagen_jax/models (unet.py, layers.py)."""
  w, e, c, t = spec.WIDTH, 4 * spec.WIDTH, spec.TEXT_DIM, spec.TEXT_DIM  # emb 4·width, cond = text

  def res(ci, co):  # GroupNorm, conv3, emb scale-shift, GroupNorm, conv3, 1×1 skip if widths differ
    return (2 * ci + 9 * ci * co + co + e * 2 * co + 2 * co + 2 * co + 9 * co * co + co
            + (ci * co + co if ci != co else 0))

  def attn(ch):  # self (GroupNorm, qkv, out), cross (LayerNorm, q, context k/v, out), ff ×2
    return (2 * ch + 4 * ch * ch + ch + 2 * ch + 2 * ch * ch + 2 * c * ch + ch
            + 2 * ch + 2 * ch * ch + 2 * ch + 2 * ch * ch + ch)

  conv = lambda ci, co: 9 * ci * co + co
  n = (w * e + e + e * e + e) + 2 * t + (t * c + c) + (c * e + e) + c  # conditioning, null token
  n += conv(3, w)
  n += 2 * res(64, 64) + conv(64, 64)  # level 0 (32 px) and its downsampling
  n += res(64, 128) + res(128, 128) + conv(128, 128)  # level 1 (16 px)
  n += res(128, 256) + res(256, 256) + 2 * attn(256)  # level 2 (8 px), attention
  n += 2 * res(256, 256) + attn(256)  # middle
  n += res(512, 256) + res(512, 256) + res(384, 256) + 3 * attn(256) + conv(256, 256)
  n += res(384, 128) + res(256, 128) + res(192, 128) + conv(128, 128)
  n += res(192, 64) + res(128, 64) + res(128, 64)
  return n + 2 * w + conv(w, 3)


def test_ours_bench_a_params_and_shapes():
  import jax
  import jax.numpy as jnp

  from benchmarks.peers import ours
  from imagen_jax.models.unet import UNet, UNetDenoiser

  cfg = ours.unet_config()
  assert cfg.channel_mults == (1, 2, 4) and cfg.num_res_blocks == (2, 2, 2)
  assert cfg.self_attention == cfg.cross_attention == (False, False, True)
  assert ours.abstract_param_count() == _independent_param_count() == 19_717_955

  s = jax.ShapeDtypeStruct
  x = s((spec.BATCH, 32, 32, 3), jnp.float32)
  cond = {"text": s((spec.BATCH, spec.TEXT_LEN, spec.TEXT_DIM), jnp.float32),
          "text_mask": s((spec.BATCH, spec.TEXT_LEN), jnp.bool_)}
  logsnr = s((spec.BATCH,), jnp.float32)
  variables = jax.eval_shape(lambda x, l, c: UNet(cfg).init(
      jax.random.key(0), x, l, c["text"], c["text_mask"]), x, logsnr, cond)
  import flax.linen as nn
  params = nn.unbox(variables["params"])
  out = jax.eval_shape(UNetDenoiser(cfg), params, x, logsnr, cond)
  assert out.shape == (spec.BATCH, 32, 32, 3) and out.dtype == jnp.float32
  # Attention at 8×8 only: two in the lowest down level, one in the middle, three going up.
  attn = [k for k in params if "attn" in k]
  assert sorted(attn) == ["down_2_attn_0", "down_2_attn_1", "mid_attn", "up_2_attn_0",
                          "up_2_attn_1", "up_2_attn_2"]


def test_ours_bench_a_efficient_layout():
  from benchmarks.peers import ours

  cfg = ours.unet_config(layout="efficient")
  assert cfg.efficient and cfg.num_res_blocks == (2, 2, 2) and cfg.width == spec.WIDTH
  # Fewer blocks than the like-for-like layout (2 up instead of 3, no middle block).
  assert ours.abstract_param_count(layout="efficient") < ours.abstract_param_count() / 1.5
  with pytest.raises(ValueError, match="unknown layout"):
    spec.bench_a_unet_config(layout="nope")


def test_profile_ablation_patches_take_the_parts_out():
  """benchmarks/peers/profile.py swaps U-Net parts in a process of its own: check, in a fresh
  process, that 'convs-only' removes GroupNorm statistics, SiLU and the attention blocks."""
  import subprocess

  code = """
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from benchmarks.peers import profile
from imagen_jax.models import unet as unet_mod
from imagen_jax.models.layers import GroupNorm
cfg = unet_mod.UNetConfig(width=32, channel_mults=(1, 2), num_res_blocks=(1, 1),
    self_attention=(False, True), cross_attention=(False, True), head_dim=32, text_dim=8,
    cond_dim=8)
args = (jnp.ones((1, 8, 8, 3)), jnp.zeros((1,)), jnp.ones((1, 2, 8)), jnp.ones((1, 2), bool))
full = nn.unbox(unet_mod.UNet(cfg).init(jax.random.key(0), *args)["params"])
x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 4, 64)), jnp.float32)
gn = GroupNorm().init(jax.random.key(0), x)
profile._patch("convs-only")
from imagen_jax.models import layers
cut = nn.unbox(unet_mod.UNet(cfg).init(jax.random.key(0), *args)["params"])
assert any("attn" in k for k in full) and not any("attn" in k for k in cut), sorted(cut)
y = layers.GroupNorm(dtype=jnp.float32).apply(gn, x)
assert abs(float(y.mean()) - 3.0) < 0.1  # the affine map alone: no normalisation
assert layers.nn.silu(-2.0) == -2.0
print("ok")
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_shapes_captions_are_deterministic():
  from benchmarks.peers import ours

  caps = ours.shapes_captions(5)
  assert caps == ours.shapes_captions(5) and all(isinstance(c, str) and c for c in caps)


# --- BENCH-A, diffusers ----------------------------------------------------------------------


def test_diffusers_bench_a_builds_and_runs():
  torch = pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  from benchmarks.peers import diffusers_pt

  unet = diffusers_pt.build_unet().eval()
  assert 20e6 < sum(p.numel() for p in unet.parameters()) < 25e6
  transformers_ = [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]
  assert len(transformers_) == 6  # 2 down + 1 middle + 3 up, all at 8×8
  heads = {m.heads for m in unet.modules() if type(m).__name__ == "Attention"}
  assert heads == {4}  # 4 heads of 64 at 256 channels, as ours
  x = spec.make_inputs()
  with torch.no_grad():
    out = unet(torch.from_numpy(x.nchw_images()), torch.full((spec.BATCH,), 500),
               encoder_hidden_states=torch.from_numpy(x.text),
               encoder_attention_mask=torch.from_numpy(x.mask)).sample
  assert out.shape == (spec.BATCH, 3, 32, 32) and torch.isfinite(out).all()
  sched = diffusers_pt.scheduler("dpmpp_2m")
  sched.set_timesteps(25)
  assert len(sched.timesteps) == 25 and sched.config.algorithm_type == "dpmsolver++"


# --- imagen-pytorch offline helpers ----------------------------------------------------------


def test_offline_hub_cache_serves_the_t5_config(tmp_path):
  transformers = pytest.importorskip("transformers")
  root = peer_env.offline_hub_cache(tmp_path / "hub")
  assert (root / "models--google--t5-v1_1-base" / "refs" / "main").read_text() == "0" * 40
  config = transformers.T5Config.from_pretrained(peer_env.T5_NAME, cache_dir=str(root),
                                                 local_files_only=True)
  assert config.d_model == 768
  env = peer_env.offline_env(root)
  assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == str(root)


def test_torchvision_stand_in_is_scoped():
  if importlib.util.find_spec("torchvision") is not None:
    pytest.skip("a real torchvision is installed here")
  with peer_env.torchvision_stand_in():
    import torchvision.transforms as T

    transform = T.Compose([T.Resize(32), T.ToTensor()])  # constructible, as imagen-pytorch does
    with pytest.raises(RuntimeError, match="stand-in"):
      transform(None)
    assert {n for n in peer_env.TORCHVISION_NAMES} <= set(vars(T))
  assert "torchvision" not in sys.modules and "torchvision.transforms" not in sys.modules
  assert importlib.util.find_spec("torchvision") is None


def test_import_imagen_pytorch_refuses_online(monkeypatch):
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
    peer_env.import_imagen_pytorch()


# --- the worker protocol, end to end on a tiny matmul ----------------------------------------


def test_measure_group_with_workers(tmp_path):
  import argparse
  import os

  entries = tuple(spec.Entry(f"numpy {i}", "numpy", "roof", (("n", 32),)) for i in range(2))
  group = spec.Group("tiny roof", "roof", entries)
  args = argparse.Namespace(inner=2, warmup=1, reps=3, settle=0.0, sample_reps=0,
                            sample_warmup=0)
  rows = harness.measure_group(group, args, dict(os.environ), tmp_path)
  assert [r["label"] for r in rows] == ["numpy 0", "numpy 1"]
  for r in rows:
    assert r["reps"] == 3 and len(r["times"]) == 3 and all(len(t) == 2 for t in r["times"])
    assert r["flops"] == 2 * 32**3 and r["median_s"] > 0
    assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
  assert harness.roof_gflops(rows) > 0

  bad = spec.Group("bad", "roof", (spec.Entry("bad", "nope", "roof"),))
  with pytest.raises(harness.WorkerError, match="unknown framework"):
    harness.measure_group(bad, args, dict(os.environ), tmp_path)


def test_profile_trace_summary_sorts_events_by_kind_of_op():
  """`profile trace` joins trace events with the compiled HLO's metadata: a YNNPACK fusion is a
  matmul or a reduction by its op_name; the pool's untraced time is threads × wall − traced."""
  from benchmarks.peers import profile

  hlo = """ENTRY %main {
  %ynn_fusion.3 = f32[1024,256]{1,0} fusion(%a, %b), kind=kCustom, calls=%f3, metadata={op_name="jit(f)/UNet/mid_attn/ff_out/dot_general" stack_frame_id=1}
  %ynn_fusion.7 = f32[16,64]{1,0} fusion(%c), kind=kCustom, calls=%f7, metadata={op_name="jit(f)/UNet/norm_out/reduce_sum" stack_frame_id=2}
  %ynn_fusion.8 = f32[16]{0} fusion(%c), kind=kCustom, calls=%f8, metadata={op_name="jit(f)/UNet/loss/reduce_sum" stack_frame_id=4}
  ROOT %divide_multiply_fusion.2 = f32[16,32,32,64]{3,2,1,0} fusion(%d), kind=kLoop, calls=%f2, metadata={op_name="jit(f)/UNet/jit(silu)/mul" stack_frame_id=3}
}"""
  ops = profile.hlo_ops(hlo)
  assert ops["ynn_fusion.3"] == ("f32[1024,256]", "jit(f)/UNet/mid_attn/ff_out/dot_general")
  assert ops["divide_multiply_fusion.2"] == ("f32[16,32,32,64]", "jit(f)/UNet/jit(silu)/mul")
  norm = "GroupNorm statistics (YNNPACK sums, group matmuls)"
  assert profile.op_kind("ynn_fusion.7", ops) == norm
  assert profile.op_kind("ynn_fusion.9", {"ynn_fusion.9": (
      "f32[16,64]", "jit(step)/transpose(jvp(UNet))/up_0_res_1/norm_0/dot_general")}) == norm
  assert profile.op_kind("ynn_fusion.9", {"ynn_fusion.9": (
      "f32[16,64]", "jit(f)/UNet/text_norm/reduce_sum")}) == "reductions (YNNPACK)"
  names = {(1, 1): "python", (1, 2): "tf_XLAEigen/1", (1, 3): "tf_XLAEigen/2"}
  ev = lambda name, tid, dur: {"ph": "X", "pid": 1, "tid": tid, "name": name, "dur": dur}
  events = [ev("ynn_fusion.3", 2, 4000), ev("ynn_fusion.3", 3, 2000), ev("ynn_fusion.8", 2, 1000),
            ev("divide_multiply_fusion.2", 3, 3000), ev("transpose_copy_fusion.1", 2, 500),
            ev("conv_general_dilated.4", 3, 100), ev("ThunkExecutor::Execute", 2, 99000),
            ev("$api.py:1 block_until_ready", 1, 50000)]
  out = profile.summarize_trace(events, names, ops, calls=2, wall_ms=10.0)
  got = {r["kind"]: (r["events"], r["thread_ms"]) for r in out["rows"]}
  assert out["threads"] == 2
  assert got["matmuls (YNNPACK)"] == (1, 3.0) and got["reductions (YNNPACK)"] == (0, 0.5)
  assert got["elementwise and other loop fusions"] == (0, 1.5)
  assert got["transposes and copies"][1] == 0.25
  assert got["convolution dispatch (work untraced)"][1] == 0.05
  traced = 3.0 + 0.5 + 1.5 + 0.25 + 0.05
  untraced = got["untraced (convolution work in Eigen's pool, idle)"][1]
  assert abs(untraced - (2 * 10.0 - traced)) < 1e-9
