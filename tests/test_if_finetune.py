"""Fine-tuning DeepFloyd IF stages with our trainer (`imagen_jax.train.if_finetune`).

A tiny IF stage I directory — a random IF U-Net (tests/test_if_unet.py's stage I layout, every
parameter perturbed so no zero-initialised layer hides a mix-up) written by `save_if_unet` in
diffusers' format, IF's stage I scheduler config, and the embedded tiny T5 and its tokenizer as
IF's `text_encoder/` and `tokenizer/` — stands in for IF-I-XL-v1.0; the captions of a 16 px
shapes dataset are encoded with it as IF encodes prompts (`imagen-jax encode` on an IF
directory). Stage II's training conditioning is checked against diffusers' own operations.
"""

import json
import re
import shutil
import signal
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.configlib import apply_overrides, load_config
from imagen_jax.data import build_dataset
from imagen_jax.diffusion.diffusers_scheduler import IF_STAGE_I_SCHEDULER_CONFIG
from imagen_jax.models.if_config import IFUNetConfig
from imagen_jax.models.if_weights import abstract_params, load_if_unet, save_if_unet
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encode import run_encode
from imagen_jax.train import if_finetune
from imagen_jax.train.loop import train
from imagen_jax.train.state import init_state
from tests.test_if_unet import STAGE_I
from tests.test_train import CONFIGS, _cli, _wait_for_step, losses_by_step

pytestmark = pytest.mark.xdist_group("if-finetune")  # one worker builds the fixture once

UNET_I = {**STAGE_I, "sample_size": 16}
TEXT_DIM = STAGE_I["encoder_hid_dim"]  # 32: the tiny T5's width
TINY_T5 = dict(d_model=TEXT_DIM, d_kv=8, d_ff=64, num_heads=4)
PERTURB = 0.02


def _random_params(cfg, seed):
  """Random parameters for `IFUNet(cfg)`, drawn with numpy from the abstract tree (compiling the
  U-Net's init takes ~50 s here): kernels N(0, 1/fan-in), norm scales 1 + PERTURB·N(0, 1), every
  other parameter (biases, embeddings) PERTURB·N(0, 1) — no zero layer hides a mix-up."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    z = rng.standard_normal(leaf.shape).astype(np.float32)
    if "kernel" in name:
      return (z / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return ((1.0 if "scale" in name else 0.0) + PERTURB * z).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_params(cfg)))


def _write_if_stage_I(root, captions):
  """A diffusers-format IF stage I directory with a random U-Net and the tiny T5."""
  cfg = IFUNetConfig.from_diffusers(UNET_I)
  params = _random_params(cfg, 0)
  save_if_unet(root / "unet", cfg, params)
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text(
      json.dumps(IF_STAGE_I_SCHEDULER_CONFIG))
  t5 = build_default_t5(root.parent / "t5", captions, vocab_size=96, **TINY_T5)
  (root / "text_encoder").mkdir()
  (root / "tokenizer").mkdir()
  for f in t5.iterdir():
    shutil.copy(f, root / ("tokenizer" if f.name.startswith(("spiece", "tokenizer",
                                                               "special")) else "text_encoder"))
  (root / "model_index.json").write_text(json.dumps(
      {"_class_name": "IFPipeline", "tokenizer": ["transformers", "T5Tokenizer"],
       "text_encoder": ["transformers", "T5EncoderModel"], "unet": ["diffusers",
                                                                    "UNet2DConditionModel"]}))
  return params


@pytest.fixture(scope="module")
def if_prepared(tmp_path_factory):
  """The tiny IF stage I directory, a 16 px shapes dataset and its IF-encoded caption cache."""
  root = tmp_path_factory.mktemp("if_finetune")
  data = build_dataset("shapes", root / "data", resolution=16, num_train=32, num_test=4)
  from imagen_jax.eval.run import read_split

  captions, _ = read_split(str(data.directory), "train", 32)
  if_dir = root / "IF-I-tiny"
  if_dir.mkdir()
  params = _write_if_stage_I(if_dir, captions)
  work = root / "work"
  text = apply_overrides(load_config(str(CONFIGS / "text.py")), [
      f"data.captions=tfds:{data.directory}", f"text.encoder={if_dir}", "text.max_length=77",
      "text.batch_size=32", "text.cache_dtype=float32"])
  run_encode(text, work, progress=False)
  return types.SimpleNamespace(dataset=data.directory, if_dir=if_dir, work=work, params=params)


def _config(p, steps, **extra):
  overrides = {"data.dataset": str(p.dataset), "init_from": str(p.if_dir),
               "train.num_steps": steps, **extra}
  return apply_overrides(load_config(str(CONFIGS / "if_finetune.py:I,tiny")),
                         [f"{k}={v}" for k, v in overrides.items()])


def _own_workdir(p, path):
  path.mkdir()
  (path / "text_cache").symlink_to(p.work / "text_cache")
  return path


def test_drop_text_to_null():
  """Dropped examples get exactly the null text (IF's encoding of ""), kept ones their own."""
  text = jnp.arange(4 * 3 * 2, dtype=jnp.float32).reshape(4, 3, 2)
  null = -jnp.ones((1, 3, 2))
  key = jax.random.key(0)
  out = if_finetune.drop_text_to_null(key, text, null, 0.5)
  keep = jax.random.bernoulli(key, 0.5, (4,))
  assert 0 < int(keep.sum()) < 4  # this key mixes both
  for i in range(4):
    np.testing.assert_array_equal(out[i], text[i] if keep[i] else null[0])
  np.testing.assert_array_equal(if_finetune.drop_text_to_null(key, text, null, 0.0), text)


def test_stage_II_conditioning_matches_diffusers():
  """Stage II's training input equals diffusers' IF super-resolution conditioning at the drawn
  levels: `F.interpolate(bilinear, align_corners=True)` then the image-noising
  `DDPMScheduler(beta_schedule="squaredcos_cap_v2").add_noise` with the same noise."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from imagen_jax.diffusion.diffusers_scheduler import from_diffusers_config

  scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
  noising = from_diffusers_config(dict(scheduler.config), "DDPMScheduler").schedule
  lowres = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  key = jax.random.key(3)
  ours, levels = if_finetune.noised_lowres(noising, jnp.asarray(lowres), 16, key, 1000)
  _, noise_key = jax.random.split(key)
  noise = np.asarray(jax.random.normal(noise_key, (3, 16, 16, 3)))
  nchw = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  up = torch.nn.functional.interpolate(nchw(lowres), (16, 16), mode="bilinear",
                                       align_corners=True)
  ref = scheduler.add_noise(up, nchw(noise), torch.from_numpy(np.asarray(levels)).long())
  assert len(set(np.asarray(levels).tolist())) == 3
  np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), atol=2e-6)


# Every run here — in-process or `imagen-jax train` subprocesses — compiles the same step (the
# number of steps and checkpoint interval are not part of it): the suite's XLA cache compiles it once.
STEPS, EVERY = 16, 4


@pytest.fixture(scope="module")
def finetuned(if_prepared, tmp_path_factory):
  """30 steps of fine-tuning from the tiny IF directory, in-process, with a grid of 2 samples (3
  sampler steps) written at the end."""
  p = if_prepared
  work = _own_workdir(p, tmp_path_factory.mktemp("finetuned") / "w")
  config = _config(p, 30, **{"train.checkpoint_every": 30, "train.sample_every": 30,
                             "train.num_samples": 2, "train.sample_steps": 3})
  summary = train(config, work, progress=False)
  return types.SimpleNamespace(work=work, summary=summary, config=config)


def test_first_state_holds_the_weights(if_prepared):
  """The first state holds the IF directory's weights exactly, and its EMA too."""
  from imagen_jax import sharding as shd
  from imagen_jax.train.state import abstract_sharded_state

  p = if_prepared
  program = if_finetune.IFStageProgram.build(_config(p, 1), 77)
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  _, shardings = abstract_sharded_state(program.init_params, program.optimizer, mesh,
                                        shd.DEFAULT_RULES)
  state = program.initial_state(0, mesh, shd.DEFAULT_RULES, shardings)
  for tree in (state.params, state.ema_params):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(tree), p.params)


def test_fine_tuning_lowers_the_loss(if_prepared, finetuned):
  """30 steps of IF's hybrid loss at lr 1e-3 lower it (mean of the last 10 steps below 80% of
  the first 10's); the stage's folder holds the IF configs (not the weights), so it loads
  without the IF directory."""
  p = if_prepared
  losses = [row["loss"] for row in finetuned.summary["history"]]
  assert len(losses) == 30 and all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
  copied = finetuned.work / "if_I" / if_finetune.CONFIG_DIR
  assert json.loads((copied / "unet" / "config.json").read_text()) == \
      json.loads((p.if_dir / "unet" / "config.json").read_text())
  assert not list(copied.rglob("*.safetensors"))


def test_samples_written_while_training_are_what_the_checkpoint_draws(finetuned):
  """`train.sample_every` on an IF stage: the grid written at step 30 holds what the step-30
  checkpoint draws through the cascade (`load_cascade`: its EMA weights, IF's scheduler, guidance
  against the encoder's "") for the captions of the step's batch (replayed from the data
  pipeline), with the same seed, steps and guidance weight."""
  from imagen_jax.cascade import SamplingOptions, load_cascade
  from imagen_jax.train.loop import open_data
  from imagen_jax.train.metrics import make_grid
  from PIL import Image

  config, work = finetuned.config, finetuned.work
  written = np.asarray(Image.open(work / "if_I" / "samples" / "samples_00000030.png"))
  iterator, _ = open_data(config, work)
  for _ in range(30):
    batch = next(iterator)
  cascade = load_cascade(work)
  assert cascade.stages[0].step == 30
  drawn = cascade.sample_encoded(
      {"text": batch["text_embeddings"][:2], "text_mask": batch["text_mask"][:2]}, seed=30,
      options={"if_I": SamplingOptions(config.train.guidance_weight, num_steps=3)})["if_I"]
  assert drawn.shape == (2, 16, 16, 3) and np.std(drawn) > 0.05
  np.testing.assert_array_equal(written, make_grid(drawn))


def test_exported_stage_samples_like_the_workdir(if_prepared, finetuned, tmp_path):
  """`imagen-jax export` writes the fine-tuned EMA weights as a diffusers directory whose
  weights are the checkpoint's exactly, and `imagen-jax sample --pretrained EXPORTED` draws the
  images `imagen-jax sample --workdir W` draws (same seed and steps): the workdir's stage is the
  IF stage it exports — configs, weights, the negative prompt "" — through the same sampler."""
  from PIL import Image

  from imagen_jax import cli
  from imagen_jax.cascade import load_stage

  exported = tmp_path / "IF-I-finetuned"
  assert cli.main(["export", "--workdir", str(finetuned.work), "--stage", "if_I", "--out",
                   str(exported)]) == 0
  assert cli.main(["export", "--workdir", str(finetuned.work), "--stage", "if_I", "--out",
                   str(exported)]) == 2  # never overwrites
  _, weights = load_if_unet(exported / "unet")
  jax.tree.map(np.testing.assert_array_equal, weights,
               jax.device_get(load_stage(finetuned.work / "if_I").params))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(weights),
                                                       jax.tree.leaves(if_prepared.params)))
  outs = {}
  for name, source in (("workdir", ["--workdir", str(finetuned.work)]),
                       ("exported", ["--pretrained", str(exported)])):
    out = tmp_path / name / "grid.png"
    assert cli.main(["sample", "a red circle", "two blue squares", *source, "--steps", "3",
                     "--seed", "1", "--out", str(out)]) == 0
    outs[name] = sorted(out.parent.rglob("*.png"))
  assert len(outs["workdir"]) == len(outs["exported"]) == 3  # the grid and two images
  for a, b in zip(outs["workdir"], outs["exported"]):
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_sigkill_then_resume_reproduces_an_uninterrupted_fine_tune(if_prepared, finetuned,
                                                                  tmp_path):
  """Killed with SIGKILL mid-run, an `imagen-jax train --init-from` IF fine-tune resumed without
  --init-from (the stage knows its source) logs exactly the losses of an uninterrupted run — the
  `finetuned` fixture's first STEPS steps (same config, seed and data order; the number of steps
  and the checkpoint interval change neither the program nor the batches)."""
  p = if_prepared
  work = _own_workdir(p, tmp_path / "w")

  def run(init=True):
    extra = ["--init-from", str(p.if_dir)] if init else []
    # 8 devices as in this process (mesh.num_devices=1 either way): the XLA cache then serves
    # the step the fixture compiled
    return _cli(["--config", str(CONFIGS / "if_finetune.py:I,tiny"), "--workdir", str(work),
                 *extra, f"--config.data.dataset={p.dataset}",
                 f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={EVERY}"],
                env_devices=8)

  interrupted = run()
  _wait_for_step(work / "if_I", 9, interrupted)
  interrupted.send_signal(signal.SIGKILL)
  interrupted.wait()
  resumed = run(init=False)
  out = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, out
  resumed_at = int(re.search(r"resumed from step (\d+)", out).group(1))
  assert EVERY <= resumed_at < STEPS and resumed_at % EVERY == 0, out
  assert "initialised from" not in out
  ref = {r["step"]: r["loss"] for r in finetuned.summary["history"]}
  got = losses_by_step(work / "if_I")
  assert sorted(got) == list(range(1, STEPS + 1))
  assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]


def test_errors(if_prepared, tmp_path):
  p = if_prepared
  work = _own_workdir(p, tmp_path / "w")
  with pytest.raises(ValueError, match="--init-from"):
    train(_config(p, 1, init_from=""), work, progress=False)
  with pytest.raises(ValueError, match="no unet/config.json"):
    train(_config(p, 1, init_from=str(tmp_path)), work, progress=False)
  with pytest.raises(ValueError, match="text_dim"):
    train(_config(p, 1, **{"model.text_dim": 64}), work, progress=False)
  with pytest.raises(ValueError, match="if_finetune.py:I"):
    if_finetune.check_resolutions(_config(p, 1, lowres_resolution=8),
                                  IFUNetConfig.from_diffusers(UNET_I))
  from imagen_jax import cli

  assert cli.main(["train", "--config", str(CONFIGS / "base64.py:tiny"), "--workdir",
                   str(work), "--init-from", str(p.if_dir)]) != 0


def test_stage_II_fine_tune_step(tmp_path):
  """An IF stage II (6 input channels, the noise level as class label) builds its fine-tuning
  program from its directory — the image-noising schedule read, the low-res input 8 → 16 px —
  and its step traces to the right state and metrics. (Traced, not compiled: compiling a second
  IF U-Net's backward pass costs ~45 s of the suite; its parts are checked by value elsewhere —
  the conditioning against diffusers above, the U-Net with class labels in test_if_unet.py, the
  loss in test_learned_variance.py — and stage I's step runs for real above.)"""
  from tests.test_if_unet import STAGE_II

  if_dir = tmp_path / "IF-II-tiny"
  cfg = IFUNetConfig.from_diffusers({**STAGE_II, "sample_size": 16, "layers_per_block": 1})
  save_if_unet(if_dir / "unet", cfg, _random_params(cfg, 1))
  for name, extra in (("scheduler", {"sample_max_value": 1.0}),
                      ("image_noising_scheduler", {"variance_type": "fixed_small"})):
    (if_dir / name).mkdir()
    (if_dir / name / "scheduler_config.json").write_text(json.dumps(
        {**IF_STAGE_I_SCHEDULER_CONFIG, **extra}))
  config = apply_overrides(load_config(str(CONFIGS / "if_finetune.py:II,tiny")),
                           [f"init_from={if_dir}", "resolution=16", "lowres_resolution=8"])
  program = if_finetune.IFStageProgram.build(config, 6)
  assert program.step_config.stage_II and program.step_config.max_noise_level() == 1000
  state = jax.eval_shape(lambda: init_state(program.init_params, program.optimizer,
                                            jax.random.key(0)))
  state = state.replace(params=nn.unbox(state.params))
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch = {"image": f32(4, 16, 16, 3), "lowres": f32(4, 8, 8, 3),
           "text_embeddings": f32(4, 6, TEXT_DIM), "text_mask": jax.ShapeDtypeStruct((4, 6), bool),
           "null_text": f32(1, 6, TEXT_DIM)}
  new_state, metrics = jax.eval_shape(program.step_fn, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "mse", "vb", "grad_norm", "skipped"} <= set(metrics)
  with pytest.raises(ValueError, match="if_finetune.py:II"):
    if_finetune.IFStageProgram.build(apply_overrides(config, ["lowres_resolution=0"]), 6)
