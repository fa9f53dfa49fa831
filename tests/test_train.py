"""Training: sharded step equivalence, loss going down, exact resume, SIGTERM, two processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import sharding as shd
from imagen_jax.configlib import apply_overrides, load_config
from imagen_jax.data import build_dataset
from imagen_jax.diffusion import CosineSchedule, LossConfig
from imagen_jax.models import UNet, UNetConfig
from imagen_jax.text.encode import run_encode
from imagen_jax.train.checkpoint import Checkpointer
from imagen_jax.train.loop import train
from imagen_jax.train.metrics import read_metrics
from imagen_jax.train.state import (OptimizerConfig, create_sharded_state, learning_rate,
                                    make_optimizer)
from imagen_jax.train.step import StepConfig, make_train_step

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A 32 px shapes dataset, the embedded tiny T5 and the train-split embedding cache."""
  root = tmp_path_factory.mktemp("train")
  data = build_dataset("shapes", root / "data", resolution=32, num_train=64, num_test=8)
  text = apply_overrides(load_config(str(CONFIGS / "text.py")), [
      f"data.captions=tfds:{data.directory}", "text.max_length=48", "text.batch_size=32"])
  run_encode(text, root / "work", progress=False)
  return data.directory, root / "work"


def stage_overrides(dataset, steps, **extra):
  base = {"data.dataset": str(dataset), "resolution": 32, "train.num_steps": steps,
          "train.log_every": 1, "train.checkpoint_every": 5, "data.num_threads": 0,
          "mesh.num_devices": 1}
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]


def tiny_config(dataset, steps, stage="base64", **extra):
  return apply_overrides(load_config(str(CONFIGS / f"{stage}.py:tiny")),
                         stage_overrides(dataset, steps, **extra))


def losses_by_step(stage_dir):
  """The last logged loss of every step (a resumed run re-logs the steps after its checkpoint)."""
  return {row["step"]: row["loss"] for row in read_metrics(stage_dir)}


SMALL = UNetConfig(width=16, channel_mults=(1, 2), num_res_blocks=(1, 1),
                   self_attention=(False, True), cross_attention=(False, True),
                   attention_style="joint", ff_mult=0, head_dim=16, text_dim=64, cond_dim=32)


@pytest.fixture(scope="module")
def small():
  """The SMALL U-Net's train step (lr 1e-2, EMA decay 0.99) and its fresh state on one device,
  jitted once for the tests below (batches of 4 at 16 px, 4 text tokens); nothing is donated, so
  each test starts from the same state. Adam's eps is 1e-3: its update is then linear in a tiny
  gradient, so reduction-order noise in gradients that are ~0 (the zero-initialised output layer
  makes many so) is not blown up to ±lr between meshes (at eps 1e-8, one weight of 2304 then
  differs by 3e-5)."""
  example = (jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), jnp.zeros((1, 4, 64)),
             jnp.ones((1, 4), bool))
  opt_cfg = OptimizerConfig(lr=1e-2, warmup_steps=0, eps=1e-3)
  optimizer = make_optimizer(opt_cfg)
  init = lambda k: UNet(SMALL).init(k, *example)["params"]
  raw_step = make_train_step(StepConfig(SMALL, CosineSchedule(), LossConfig(), ema_decay=0.99),
                             optimizer, learning_rate(opt_cfg))
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  state, _ = create_sharded_state(init, optimizer, 0, mesh, shd.DEFAULT_RULES)
  return types.SimpleNamespace(state=state, step=jax.jit(raw_step), raw_step=raw_step, init=init,
                               optimizer=optimizer)


def small_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32),
          "text_embeddings": rng.standard_normal((4, 4, 64)).astype(np.float32),
          "text_mask": np.arange(4)[None] < rng.integers(1, 5, (4, 1))}


def test_sharded_step_matches_one_device(small):
  """A data × fsdp × tensor mesh (2 × 2 × 2) on 8 devices gives the one-device loss and
  parameters over two steps at lr 1e-2 (tolerance 1e-5: only the order of floating-point
  reductions differs). (Its earlier form warmed up from lr 0, so its second step still had the
  zero-initialised output layer, which zeroes every gradient upstream: it could not see the wrong
  convolution gradients XLA computes on this mesh; see models/layers.py:Conv.)"""
  batch = small_batch()
  state, ref_losses = small.state, []
  for _ in range(2):
    state, metrics = small.step(state, batch)
    ref_losses.append(float(metrics["loss"]))
  ref_params, ref_ema = jax.device_get((state.params, state.ema_params))

  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state, shardings = create_sharded_state(small.init, small.optimizer, 0, mesh, shd.DEFAULT_RULES)
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    fn = jax.jit(small.raw_step, in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))
    losses = []
    for _ in range(2):
      state, metrics = fn(state, jax.device_put(batch, batch_sh))
      losses.append(float(metrics["loss"]))
  kernel = state.params["down_1_attn_0"]["attention"]["query"]["kernel"]
  # parameters really are split over both model axes
  assert kernel.sharding.spec[0] == "fsdp" and kernel.sharding.spec[1] == "tensor", kernel.sharding
  assert len(kernel.sharding.device_set) == 8
  assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=1e-5)
  params, ema = jax.device_get((state.params, state.ema_params))
  for a, b in zip(jax.tree.leaves(params) + jax.tree.leaves(ema),
                  jax.tree.leaves(ref_params) + jax.tree.leaves(ref_ema)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_nonfinite_update_is_skipped_and_counted(small):
  state, step = small.state, small.step
  bad = {**small_batch(), "image": np.full((4, 16, 16, 3), np.nan, np.float32)}
  kept = lambda s: jax.device_get((s.params, s.opt_state, s.ema_params))
  before = kept(state)
  for i in range(3):
    state, metrics = step(state, bad)
  assert int(state.nonfinite_run) == 3 and int(state.nonfinite_total) == 3
  assert int(metrics["skipped"]) == 1 and int(state.step) == 3
  # Parameters, optimiser state (moments, count) and EMA are all left as they were.
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(kept(state))):
    np.testing.assert_array_equal(a, b)
  good = small_batch()
  state, metrics = step(state, good)
  assert int(state.nonfinite_run) == 0 and int(state.nonfinite_total) == 3
  assert int(metrics["skipped"]) == 0
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[0]),
                                                      jax.tree.leaves(jax.device_get(state.params)))]
  assert any(changed)  # a finite step updates


def test_ema_warmup_forgets_the_initial_weights(small):
  """Update t uses decay min(d, (1+t)/(10+t)): after the first update the EMA is 0.1·init +
  0.9·params (a plain EMA would keep 0.99 of the random init), and the decay reaches d later."""
  from imagen_jax.train.step import ema_decay_at

  np.testing.assert_allclose([float(ema_decay_at(t, 0.99)) for t in (0, 10, 100, 10_000)],
                             [0.1, 11 / 20, 101 / 110, 0.99], rtol=1e-6)
  assert float(ema_decay_at(0, 0.99, warmup=False)) == np.float32(0.99)
  state, step = small.state, small.step
  init = jax.device_get(state.params)
  state, _ = step(state, small_batch(1))
  params, ema = jax.device_get((state.params, state.ema_params))
  moved = 0
  for i, p, e in zip(jax.tree.leaves(init), jax.tree.leaves(params), jax.tree.leaves(ema)):
    np.testing.assert_allclose(e, 0.1 * i + 0.9 * p, rtol=1e-5, atol=1e-7)
    moved += not np.allclose(p, i)
  assert moved  # the update changed the parameters, so the check above tells the decays apart


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_demo_recipe_learns(prepared, tmp_path, stage):
  """Each stage of the demo's recipe (configs/demo.py: every model, diffusion and optimiser
  setting it sets), 60 steps on 64 scenes (base 32 px, SR 16 → 32 px on 16 px crops): the loss
  falls (base: by 30%, measured ~50%; SR, which starts as an upsampler and so with a small
  loss: by 15%, measured ~23%), and the EMA's one-step x̂₀ error at mid noise falls below
  where training started — for the base, the untrained U-Net (whose output starts at exactly 0);
  for the SR stage, whose x̂₀ starts as its upsampled input (`lowres_residual`), that copy of the
  clean low-res input."""
  from imagen_jax.cascade import encoder_for, load_stage
  from imagen_jax.demo import flatten
  from imagen_jax.eval import diagnose
  from imagen_jax.eval.run import read_split

  dataset, work = prepared
  recipe = flatten(load_config(str(CONFIGS / "demo.py"))[stage].to_dict())
  recipe.update({"train.num_steps": 60, "train.batch_size": 8, "train.warmup_steps": 5,
                 "train.log_every": 1, "train.checkpoint_every": 60})
  if stage == "sr":
    assert recipe["crop_size"] == recipe["resolution"] // 2 and recipe["model.lowres_residual"]
    recipe.update({"resolution": 32, "lowres_resolution": 16, "crop_size": 16})
  name = "base64" if stage == "base" else "sr256"
  own = tmp_path / "work"  # the fixture's caption cache and T5, not its other stages
  own.mkdir()
  for link in ("text", "text_cache"):
    (own / link).symlink_to(work / link)
  config = tiny_config(dataset, 60, stage=name, **recipe)
  losses = [row["loss"] for row in train(config, own, progress=False)["history"]]
  assert len(losses) == 60 and all(np.isfinite(losses))
  assert (own / name / "checkpoints" / "60").is_dir()
  drop = 0.7 if stage == "base" else 0.85
  assert np.mean(losses[-10:]) < drop * np.mean(losses[:10]), losses
  trained_stage = load_stage(own / name)
  captions, real = read_split(str(dataset), "test", 8)
  batch = diagnose.stage_batch(trained_stage, captions, real, encoder_for(own, config))
  error = lambda params: diagnose.denoising_error(trained_stage, params, batch, times=(0.3, 0.5),
                                                  aug_level=0.0)
  untrained = error(jax.tree.map(jnp.zeros_like, trained_stage.params))
  trained = error(trained_stage.params)
  bound = 0.5 * untrained if stage == "base" else untrained
  assert np.all(trained < bound), (trained, untrained)


def test_sr1024_stage_trains(prepared):
  """The 1024 px stage's layout (no self-attention, linear schedule) trains on random crops at a
  4× factor (32 px scenes from 8 px, on 16 px crops). The sr256 layout trains in
  test_demo_recipe_learns[sr]."""
  dataset, work = prepared
  # two of its four levels (the layout's traits — no self-attention, cross-attention once at the
  # lowest level, linear schedule, crops at a 4× factor — kept; compiling half the U-Net)
  config = tiny_config(dataset, 2, stage="sr1024", resolution=32, lowres_resolution=8,
                       crop_size=16, **{"model.channel_mults": "(1,2)",
                                        "model.num_res_blocks": "(1,1)",
                                        "model.self_attention": "(False,False)",
                                        "model.cross_attention": "(False,True)"})
  assert not any(config.model.self_attention) and config.diffusion.schedule == "linear"
  summary = train(config, work, progress=False)
  assert summary["step"] == 2 and all(np.isfinite(r["loss"]) for r in summary["history"])


def _cli(args, env_devices=1, **popen):
  # the suite's XLA flags (tests/conftest.py), with this process's own device count
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={env_devices}".strip()}
  return subprocess.Popen([sys.executable, "-m", "imagen_jax.cli", "train", *args, "--no-progress"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen)


# The process tests below are about the loop (resume, signals, hosts), not the model: they train
# a 0.2M-parameter U-Net (SMALL's layout) at 16 px, which compiles and steps several times faster.
MICRO = {"resolution": 16, "model.width": 16, "model.channel_mults": "(1,2)",
         "model.num_res_blocks": "(1,1)", "model.self_attention": "(False,True)",
         "model.cross_attention": "(False,True)", "model.head_dim": 16, "model.cond_dim": 32}


def _train_args(dataset, work, steps, **extra):
  return ["--config", str(CONFIGS / "base64.py:tiny"), "--workdir", str(work)] + [
      f"--config.{o}" for o in stage_overrides(dataset, steps, **{**MICRO, **extra})]


def _wait_for_step(stage_dir, step, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if stage_dir.joinpath("metrics.jsonl").exists() and any(
        r["step"] >= step for r in read_metrics(stage_dir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
    time.sleep(0.2)
  raise AssertionError("training did not reach step %d in time" % step)


def test_sigkill_then_resume_reproduces_an_uninterrupted_run(prepared, tmp_path):
  """Killed with SIGKILL mid-run and restarted, training resumes from its last checkpoint (state
  and data-iterator position) and then logs exactly the losses of an uninterrupted run — here
  the same config trained in this process (its step compiled once: the subprocesses see 8
  devices as this process does, and the suite's XLA cache serves them its executable)."""
  dataset, work = prepared
  for d in ("a", "b"):
    (tmp_path / d).mkdir()
    (tmp_path / d / "text_cache").symlink_to(work / "text_cache")
  args = lambda d: _train_args(dataset, tmp_path / d, 20, **{"train.checkpoint_every": 4})
  train(tiny_config(dataset, 20, **{**MICRO, "train.checkpoint_every": 4}), tmp_path / "a",
        progress=False)
  interrupted = _cli(args("b"), env_devices=8)
  _wait_for_step(tmp_path / "b" / "base64", 9, interrupted)
  interrupted.send_signal(signal.SIGKILL)
  interrupted.wait()
  resumed = _cli(args("b"), env_devices=8)
  out = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, out
  resumed_at = int(re.search(r"resumed from step (\d+)", out).group(1))
  # the last checkpoint that had finished writing (saves are asynchronous) when it was killed
  assert 4 <= resumed_at < 20 and resumed_at % 4 == 0, out
  ref = losses_by_step(tmp_path / "a" / "base64")
  got = losses_by_step(tmp_path / "b" / "base64")
  assert sorted(ref) == sorted(got) == list(range(1, 21))
  assert [got[s] for s in range(1, 21)] == [ref[s] for s in range(1, 21)]


def test_sigterm_saves_the_current_step_and_exits_cleanly(prepared, tmp_path):
  dataset, work = prepared
  (tmp_path / "text_cache").symlink_to(work / "text_cache")
  # 8 devices, as the SIGKILL test's runs: the same program, compiled once
  proc = _cli(_train_args(dataset, tmp_path, 10_000, **{"train.checkpoint_every": 1000}),
              env_devices=8)
  _wait_for_step(tmp_path / "base64", 3, proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  assert "stop requested (SIGTERM)" in out
  last_logged = max(losses_by_step(tmp_path / "base64"))
  with Checkpointer(tmp_path / "base64" / "checkpoints", read_only=True) as ckpt:
    assert ckpt.latest_step() == last_logged, (ckpt.all_steps(), last_logged)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(prepared, tmp_path):
  """Two processes (2 CPU devices each) with jax.distributed.initialize build the global batch
  from host-local data; one process with 4 devices fed the same two hosts' batches
  (data.simulate_hosts=2) gets the same losses (tolerance 1e-5)."""
  dataset, work = prepared
  for d in ("multi", "single"):
    (tmp_path / d).mkdir()
    (tmp_path / d / "text_cache").symlink_to(work / "text_cache")
  port = _free_port()
  final_save_only = {"train.checkpoint_every": 1000}
  procs = [_cli(_train_args(dataset, tmp_path / "multi", 4, **final_save_only) + [
      "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
      "--config.mesh.num_devices=0"], env_devices=2) for i in range(2)]
  single = _cli(_train_args(dataset, tmp_path / "single", 4, **final_save_only, **{
      "data.simulate_hosts": 2, "mesh.num_devices": 0}),
                env_devices=4)
  for p in procs + [single]:
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
  multi = losses_by_step(tmp_path / "multi" / "base64")
  one = losses_by_step(tmp_path / "single" / "base64")
  assert sorted(multi) == sorted(one) == list(range(1, 5))
  np.testing.assert_allclose([multi[s] for s in range(1, 5)], [one[s] for s in range(1, 5)],
                             atol=1e-5, rtol=1e-5)
  config = json.loads((tmp_path / "multi" / "base64" / "config.json").read_text())
  assert config["train"]["batch_size"] == 8
