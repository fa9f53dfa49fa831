"""`imagen-jax plan`: ahead-of-time memory/FLOPs of a stage's real train step and sampler.

The accounting is checked on the 8 virtual CPU devices against independent figures (parameter
counts, Adam's two moments, XLA's own argument sizes); the TPU path compiles a micro stage for a
libtpu compile-only v5e slice and checks that a batch too large for HBM is reported, not raised.
"""

import importlib.util
import json

import jax
import pytest

from imagen_jax.cli import main
from imagen_jax.configlib import apply_overrides, load_config
from imagen_jax.plan import GIB, PlanError, parse_mesh, plan_stage

MICRO = ["model.width=8", "model.channel_mults=(1, 2)", "model.num_res_blocks=(1, 1)",
         "model.self_attention=(False, True)", "model.cross_attention=(False, True)",
         "model.head_dim=8", "model.cond_dim=16", "resolution=16", "train.batch_size=16",
         "train.optimizer=adam"]


def micro_config(*extra):
  return apply_overrides(load_config("configs/base64.py:tiny"), MICRO + list(extra))


@pytest.fixture(scope="module")
def plan_8():
  """The micro stage planned on 8 CPU devices, data=2 × fsdp=4, with its sampler."""
  return plan_stage(micro_config(), "cpu:8", "data=2,fsdp=4", devices=jax.devices()[:8])


def test_cpu_plan_accounts_state_exactly(plan_8):
  plan = plan_8
  assert plan.mesh == {"data": 2, "fsdp": 4, "tensor": 1}
  assert plan.num_params > 10_000
  total = 4 * plan.num_params  # float32
  sb = plan.state_bytes
  # fsdp=4 shards every weight whose input dimension 4 divides; what it cannot stays whole.
  assert total / 4 <= sb["params"] < total / 4 * 1.2
  assert sb["ema"] == sb["params"]
  # Adam: two moments per parameter, sharded like them, plus scalar counters.
  assert 2 * sb["params"] <= sb["optimizer"] <= 2 * sb["params"] + 64
  batch_per_device = 16 // 8 * (16 * 16 * 3 * 4 + 48 * 64 * 4 + 48)
  assert sb["batch"] == batch_per_device
  # XLA's argument buffers are exactly the state shards plus the batch shards.
  assert plan.train.arguments == sum(sb.values())
  assert plan.train.aliased > 0  # the state is donated
  assert plan.train.flops > 0 and plan.sample.flops > 0
  assert plan.train.peak > plan.train.arguments


def test_cpu_plan_flops_split_over_devices(plan_8):
  """Data parallelism (data × fsdp) splits the step's FLOPs: each of 8 devices does about 1/8 of
  what one device does alone."""
  one = plan_stage(micro_config(), "cpu:1", "data=1", devices=jax.devices()[:1], sample=False)
  assert plan_8.train.flops == pytest.approx(one.train.flops / 8, rel=0.05)


def test_bad_input_is_named():
  config = micro_config()
  with pytest.raises(PlanError, match="AXIS=SIZE"):
    parse_mesh("data:8", config)
  with pytest.raises(PlanError, match="needs 16 devices"):
    plan_stage(config, "cpu:8", "data=4,fsdp=4", devices=jax.devices()[:8])
  with pytest.raises(PlanError, match="not divisible"):
    plan_stage(micro_config("train.batch_size=12"), "cpu:8", "data=8", devices=jax.devices()[:8])
  with pytest.raises(PlanError, match="generation"):
    plan_stage(config, "v9x:2x2")
  assert main(["plan", "--config", "configs/base64.py:tiny", "--topology", "tpu"]) == 2


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu (the plan extra) not installed")


@needs_libtpu
def test_tpu_plan_fits_and_oom_is_reported(tmp_path, capsys):
  out = tmp_path / "plan.json"
  code = main(["plan", "--config", "configs/base64.py:tiny", "--topology", "v5e:2x2",
               "--no-sampler", "--json", str(out)] + [f"--config.{o}" for o in MICRO])
  assert code == 0, capsys.readouterr().out
  plan = json.loads(out.read_text())
  assert plan["device_kind"] == "TPU v5 lite" and plan["num_devices"] == 4
  assert plan["hbm_bytes"] == pytest.approx(15.75 * GIB)
  assert plan["train"]["oom"] == "" and plan["train"]["flops"] > 0
  # TPU layouts pad small arrays; the arguments are at least the state and batch shards.
  assert plan["train"]["arguments"] >= sum(plan["state_bytes"].values())
  # 2^20 images of 16×16 per step: activations far beyond a v5e chip's 16 GiB.
  config = micro_config(f"train.batch_size={2 ** 20}")
  plan = plan_stage(config, "v5e:2x2", sample=False)
  assert not plan.fits and "HBM" in plan.train.oom


def test_if_sampling_plan_on_cpu_devices():
  """`plan_if_sampling` on 8 CPU devices (fsdp=8) for the tiny IF stage II layout at 16 px: the
  parameter shards hold at least 1/8 of the model's bytes and well under a replicated copy (a
  weight fsdp cannot split stays whole), its inputs include the guided batch (2 × 4 rows), and XLA's
  arguments are at least the parameters and inputs."""
  import math

  from imagen_jax.plan_if import format_if_plan, plan_if_sampling
  from tests.test_if_unet import STAGE_II

  plan = plan_if_sampling({**STAGE_II, "layers_per_block": 1}, "cpu:8", mesh="fsdp=-1", batch=4,
                          resolution=16, dtype="float32", devices=jax.devices()[:8])
  assert plan.mesh["fsdp"] == 8 and plan.batch == 4
  total = 4 * plan.num_params
  assert total / 8 <= plan.param_bytes < total / 4  # sharded, not replicated
  assert plan.input_bytes >= 2 * 4 * 16 * 16 * 6 * 4 / 8  # the guided rows' 6 input channels
  assert not plan.forward.oom and plan.forward.arguments >= plan.param_bytes
  assert plan.forward.flops > 0 and math.isfinite(plan.forward.peak)
  assert "fits" in format_if_plan(plan)


@needs_libtpu
def test_t5_encode_plan_counts_the_flops_of_the_network():
  """`python -m imagen_jax.plan_t5` on a v5e-8 for T5-v1.1-small (the XXL's layout, 8 layers) with
  the weights split over fsdp: XLA's FLOPs per caption match the network's matmuls counted by
  hand — per token and layer, 2·(4·d·hd + 3·d·d_ff) for the projections (gated feed-forward:
  wi_0, wi_1, wo) plus 2·2·n·hd for the attention scores and their weighting over n tokens —
  within 5% (measured +3.8%: norms, softmax and the split program's extra elementwise work; the
  replicated program counts +1.0%); each device holds about 1/8 of the bfloat16 weights; the
  projected rate follows from v5e's peak."""
  from imagen_jax.plan_t5 import T5_V1_1, format_encode_plan, plan_encode

  n, batch = 128, 64
  hp = T5_V1_1["small"]
  d, hd, dff, layers = hp["d_model"], hp["num_heads"] * hp["d_kv"], hp["d_ff"], hp["num_layers"]
  per_caption = n * layers * (2 * (4 * d * hd + 3 * d * dff) + 2 * 2 * n * hd)
  plan = plan_encode("small", "v5e:2x4", mesh="fsdp=-1", batch=batch, max_length=n)
  # t5-v1_1-small's encoder: 16.4M embedding + 8 blocks of 2.36M (77M with decoder and head)
  assert plan.num_params == pytest.approx(35.3e6, rel=0.01)
  assert plan.mesh["fsdp"] == 8 and plan.fits
  xla_per_caption = plan.forward.flops * plan.num_devices / batch
  assert xla_per_caption == pytest.approx(per_caption, rel=0.05)
  assert plan.captions_per_s_at_peak == pytest.approx(batch / (plan.forward.flops / 197e12))
  replicated = 2 * plan.num_params  # bfloat16
  assert replicated / 8 <= plan.param_bytes < replicated / 4  # a weight fsdp cannot split stays
  assert "captions/s" in format_encode_plan(plan)
