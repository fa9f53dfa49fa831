"""DeepFloyd IF's released stages through our cascade (`imagen_jax.pretrained.deepfloyd_if`),
against diffusers' `IFPipeline` → `IFSuperResolutionPipeline` as the oracle.

Tiny random pipelines are built as diffusers' own IF tests build theirs
(tests/pipelines/deepfloyd_if/__init__.py: `_get_dummy_components`,
`_get_superresolution_dummy_components`: the same U-Net configs, sample sizes 16 and 32 here so
that stage II really upsamples 2×; IF's released scheduler configs), with every U-Net and T5
parameter perturbed (no zero-initialised layer hides a mix-up), a tiny random T5 v1.1 and — no hub
here — a sentencepiece tokenizer trained on a few captions by our own tooling, saved by
diffusers' `save_pretrained` (safetensors) as a user downloads them, and loaded with ours.
diffusers draws every noise with `randn_tensor`; the tests hand it the noises our cascade draws
(`Cascade.sample`'s documented keys). Images are compared as diffusers' pipelines output them,
(x/2 + 0.5) clamped to [0, 1]. torch runs on one thread (its tiny forwards are slower on two busy
cores), and every compiled sampler is shared by the tests that follow (same shapes and steps).
"""

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import cli
from imagen_jax.cascade import CascadeError, SamplingOptions, resize_images
from imagen_jax.diffusion.diffusers_scheduler import (IF_STAGE_I_SCHEDULER_CONFIG,
                                                      IF_STAGE_II_SCHEDULER_CONFIG)
from imagen_jax.diffusion.guidance import Thresholding
from imagen_jax.pretrained import load_if_cascade, upsample_align_corners
from imagen_jax.text.tokenizer import train_sentencepiece
from tests.test_if_unet import STAGE_I, STAGE_II

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.xdist_group("deepfloyd-if")  # one worker builds the pipelines once

# diffusers' IF test U-Nets (tests/pipelines/deepfloyd_if/__init__.py), at 16 and 32 px.
UNET_I = {**STAGE_I, "sample_size": 16}
UNET_II = {**STAGE_II, "sample_size": 32}
# A tiny T5 v1.1 (gated GELU) as wide as the U-Nets' text input.
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
          relative_attention_num_buckets=8, relative_attention_max_distance=20)
CAPTIONS = ["a red circle", "a blue square on the left", "a green triangle above a small cube",
            "two large yellow stars", "a painting of a squirrel eating a burger"]
PROMPTS = ["A Red circle", "  a painting of a blue squirrel "]
# Every U-Net and T5 parameter is moved by PERTURB·N(0, 1): norms start at scale 1, bias 0, and a
# mix-up of the two would hide otherwise. Small enough that the random U-Net stays a tame map: at
# tests/test_if_unet.py's 0.1, 3 guided steps turn float32 rounding into 2–3e-4 between diffusers'
# own float32 and float64 images. The U-Nets' variance channels are scaled by VARIANCE_SCALE so
# that v stays within [−1, 1] as a trained IF's does (unscaled, the learned range extrapolates to
# intermediate images of ~800).
PERTURB = 0.02
VARIANCE_SCALE = 0.2
STEPS = 3  # both stages (then `imagen-jax sample --steps 3` reuses the compiled samplers)
SEED = 4


def _perturbed(model, seed, variance_scale=None):
  """`model` with its parameters perturbed (and, for an IF U-Net, its variance channels scaled)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(PERTURB * torch.randn_like(p))
    if variance_scale is not None:
      model.conv_out.weight[3:] *= variance_scale
      model.conv_out.bias[3:] *= variance_scale
  return model.eval()


@pytest.fixture(scope="module")
def if_setup(tmp_path_factory):
  """Both tiny IF pipelines, saved as diffusers directories, and our cascade loaded from them."""
  from diffusers import (DDPMScheduler, IFPipeline, IFSuperResolutionPipeline,
                         UNet2DConditionModel)

  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    root = tmp_path_factory.mktemp("deepfloyd_if")
    tok_dir = train_sentencepiece(CAPTIONS, root / "spm", vocab_size=96)
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    torch.manual_seed(0)
    text_encoder = _perturbed(transformers.T5EncoderModel(
        transformers.T5Config(vocab_size=len(tokenizer), **T5)), 1)
    torch.manual_seed(0)
    unet_i = _perturbed(UNet2DConditionModel(**UNET_I), 2, VARIANCE_SCALE)
    torch.manual_seed(0)
    unet_ii = _perturbed(UNet2DConditionModel(**UNET_II), 3, VARIANCE_SCALE)
    none = dict(safety_checker=None, feature_extractor=None, watermarker=None,
                requires_safety_checker=False)
    pipe_i = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet_i,
                        scheduler=DDPMScheduler.from_config(IF_STAGE_I_SCHEDULER_CONFIG), **none)
    # stage II as IF-II ships: no text encoder (stage I's embeddings are reused)
    pipe_ii = IFSuperResolutionPipeline(
        tokenizer=tokenizer, text_encoder=None, unet=unet_ii,
        scheduler=DDPMScheduler.from_config(IF_STAGE_II_SCHEDULER_CONFIG),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), **none)
    for pipe, name in ((pipe_i, "IF-I"), (pipe_ii, "IF-II")):
      pipe.save_pretrained(root / name)
      pipe.set_progress_bar_config(disable=True)
    cascade = load_if_cascade(root / "IF-I", root / "IF-II")
    yield types.SimpleNamespace(root=root, pipe_i=pipe_i, pipe_ii=pipe_ii, cascade=cascade)
  finally:
    torch.set_num_threads(threads)


def _nchw(a):
  return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()


def _to01(x):  # the pipelines' output mapping (output_type "np"/"pil")
  return np.clip(np.asarray(x, np.float64) / 2 + 0.5, 0.0, 1.0)


@pytest.fixture
def diffusers_noise(monkeypatch):
  """diffusers' pipelines (initial noise, stage II's augmentation noise) and DDPMScheduler.step
  draw with `randn_tensor`: hand them, in order, the noises queued here."""
  queue = []

  def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    noise = queue.pop(0)
    assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
    return noise.to(dtype)

  from diffusers.pipelines.deepfloyd_if import pipeline_if, pipeline_if_superresolution
  from diffusers.schedulers import scheduling_ddpm

  for module in (pipeline_if, pipeline_if_superresolution, scheduling_ddpm):
    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
  return queue


def _our_noises(seed, stage_index, shape, steps, augmented):
  """What `Cascade.sample` draws for its `stage_index`-th stage, in diffusers' order: the
  initial noise, stage II's augmentation noise, then each DDPM step's but the last (t = 0)."""
  key = jax.random.fold_in(jax.random.key(seed), stage_index)
  init_key, loop_key = jax.random.split(key)
  draws = [jax.random.normal(init_key, shape, jnp.float32)]
  if augmented:
    draws.append(jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32))
  draws += [jax.random.normal(jax.random.fold_in(loop_key, i), shape, jnp.float32)
            for i in range(steps - 1)]
  return [_nchw(d) for d in draws]


def test_defaults_are_ifs_pipelines(if_setup):
  stage_i, stage_ii = if_setup.cascade.stages
  assert (stage_i.name, stage_i.resolution, stage_ii.name, stage_ii.resolution,
          stage_ii.lowres_resolution) == ("if_I", 16, "if_II", 32, 16)
  plan_i, plan_ii = stage_i.sampling(SamplingOptions()), stage_ii.sampling(SamplingOptions())
  assert (plan_i.config.name, plan_i.config.num_steps, plan_i.guidance_weight) == ("ddpm", 100, 7)
  assert (plan_ii.config.num_steps, plan_ii.guidance_weight) == (50, 4)
  assert plan_i.config.learned_variance and not plan_i.config.use_clipped_model_output
  assert plan_i.config.thresholding == Thresholding("dynamic", 95.0, 1.5)  # IF-I's config
  assert plan_ii.config.thresholding == Thresholding("static")  # IF-II's: s clamped to 1
  assert stage_i.sampling(SamplingOptions(thresholding="dynamic")).config == plan_i.config
  swapped = stage_i.sampling(SamplingOptions(sampler="ddim", num_steps=10))
  assert swapped.config.name == "ddim" and swapped.config.thresholding == plan_i.config.thresholding
  with pytest.raises(CascadeError, match="noise_level"):
    stage_i.sampling(SamplingOptions(aug_level=0.2))
  with pytest.raises(CascadeError, match="noise_level must be an integer"):
    stage_ii.lowres_cond(jnp.zeros((1, 16, 16, 3)), SamplingOptions(noise_level=1000),
                         jax.random.key(0))
  for prompts in ([], ["a cat", "  "]):
    with pytest.raises(CascadeError, match="empty prompt"):
      if_setup.cascade.sample(prompts)


def test_text_group_norm_is_two_pass():
  """IF's text GroupNorm ("norm_cross") on an embedding of "" — near-identical padding tokens, a
  channel's mean large against its spread — as torch computes it. E[x²] − E[x]² in float32 (our
  image GroupNorms') is off by ~5e-3 here; it moved the unguided U-Net output by 1.8e-3 (of ~4)."""
  from imagen_jax.models.layers import GroupNorm

  rng = np.random.default_rng(0)
  text = (2.0 + rng.standard_normal((2, 1, 32)) + 0.03 * rng.standard_normal((2, 77, 32)))
  text = text.astype(np.float32)
  want = torch.nn.functional.group_norm(torch.from_numpy(text).permute(0, 2, 1), 32,
                                        eps=1e-5).permute(0, 2, 1).numpy()
  errors = {}
  for two_pass in (True, False):
    norm = GroupNorm(32, 1e-5, two_pass=two_pass)
    out = norm.apply(norm.init(jax.random.key(0), text), text)
    errors[two_pass] = float(np.abs(np.asarray(out) - want).max())
  print(f"\ntext GroupNorm, max |ours − torch|: two-pass {errors[True]:.1e}, one-pass "
        f"{errors[False]:.1e}")
  assert errors[True] <= 1e-4 < errors[False]


def test_prompt_encoding_matches_encode_prompt(if_setup):
  """Our T5 path against `IFPipeline.encode_prompt` (clean_caption=True, the pipeline's default,
  falls back to lower-casing and stripping without bs4/ftfy): the same token ids, hidden states
  at every one of the 77 positions, and "" as the negative prompt. One prompt is truncated."""
  prompts = PROMPTS + [" ".join(CAPTIONS * 4)]
  encoder = if_setup.cascade.encoder
  ours, mask, ids = encoder.encode(prompts, warn_truncation=False)
  with torch.no_grad():
    theirs, negative = if_setup.pipe_i.encode_prompt(prompts, do_classifier_free_guidance=True,
                                                     device="cpu", clean_caption=True)
  tokens = if_setup.pipe_i.tokenizer([p.lower().strip() for p in prompts], padding="max_length",
                                     max_length=77, truncation=True, return_tensors="np")
  np.testing.assert_array_equal(ids, tokens.input_ids)
  np.testing.assert_array_equal(mask, tokens.attention_mask.astype(bool))
  assert ours.shape == (3, 77, 32) and mask[2].all() and not mask[0].all()
  scale = np.abs(theirs.numpy()).max()
  err = np.abs(ours - theirs.numpy()).max()
  err_negative = np.abs(if_setup.cascade.stages[0].negative_text - negative.numpy()[:1]).max()
  print(f"\nprompt embeddings: max |ours − diffusers| {err:.2e}, negative {err_negative:.2e} "
        f"(scale {scale:.2f})")
  assert err <= 1e-5 and err_negative <= 1e-5
  assert np.abs(ours[0, ~mask[0]]).max() > 0.1  # padding positions are not zeroed: IF sees them


def _in_float64(pipe):
  """A copy of an IF pipeline computing in float64: its models, and its schedulers' ᾱ tables
  re-accumulated in float64 from their float32 β (diffusers' float32 1 − ᾱ near t = 0 cancels)."""
  from tests.test_samplers_oracle import _in_float64 as scheduler_in_float64

  pipe = copy.deepcopy(pipe)
  for model in (pipe.unet, pipe.text_encoder):
    if model is not None:
      model.double()
  for name in ("scheduler", "image_noising_scheduler"):
    if getattr(pipe, name, None) is not None:
      scheduler_in_float64(getattr(pipe, name))
  return pipe


def test_sampling_matches_diffusers_if_pipelines(if_setup, diffusers_noise):
  """`Cascade.sample` (IF's defaults but STEPS steps: learned-range DDPM, guidance 7 / 4, IF's
  thresholding, noise level 250) against `IFPipeline` and `IFSuperResolutionPipeline` given our
  prompt embeddings, our noises and, for stage II, our stage I image (NCHW): max |ours − theirs|
  of the images as the pipelines output them, (x/2 + 0.5) clamped to [0, 1].

  The oracle is diffusers in float64 (`_in_float64`), since its own float32 pipelines are no closer
  to it than ours: guidance 7 turns the U-Nets' float32 rounding (~1e-5 of an output of ~4) into
  ~1e-4 of x̂₀ = (x − σε)/α, and DDPM steps carry it on. Measured (3 steps): ours − float64 3.0e-5
  (stage I), 3.2e-5 (II); ours − float32 4.6e-5, 4.3e-5; diffusers' own float32 − float64 4.0e-5,
  4.1e-5 (1 step: ours − float64 2e-7, diffusers float32 − float64 1.1e-5)."""
  cascade = if_setup.cascade
  options = {s.name: SamplingOptions(num_steps=STEPS) for s in cascade.stages}
  ours = cascade.sample(PROMPTS, seed=SEED, options=options)
  n = len(PROMPTS)
  assert ours["if_I"].shape == (n, 16, 16, 3) and ours["if_II"].shape == (n, 32, 32, 3)
  emb = torch.from_numpy(cascade.encoder.encode(PROMPTS)[0])
  neg = torch.from_numpy(np.repeat(cascade.stages[0].negative_text, n, axis=0))

  theirs = {}
  for dtype in (torch.float64, torch.float32):
    pipe_i, pipe_ii = if_setup.pipe_i, if_setup.pipe_ii
    if dtype == torch.float64:
      pipe_i, pipe_ii = _in_float64(pipe_i), _in_float64(pipe_ii)
    common = dict(prompt_embeds=emb.to(dtype), negative_prompt_embeds=neg.to(dtype),
                  num_inference_steps=STEPS)
    diffusers_noise.extend(z.to(dtype) for z in _our_noises(SEED, 0, (n, 16, 16, 3), STEPS,
                                                            augmented=False))
    image_i = pipe_i(guidance_scale=7.0, output_type="pt", **common).images
    assert not diffusers_noise
    diffusers_noise.extend(z.to(dtype) for z in _our_noises(SEED, 1, (n, 32, 32, 3), STEPS,
                                                            augmented=True))
    image_ii = pipe_ii(image=_nchw(ours["if_I"]).to(dtype), guidance_scale=4.0, output_type="pt",
                       **common).images  # noise_level: the default 250
    assert not diffusers_noise
    theirs[dtype] = [_to01(image.permute(0, 2, 3, 1).numpy()) for image in (image_i, image_ii)]

  exact, f32 = theirs[torch.float64], theirs[torch.float32]
  errors = [np.abs(_to01(ours[name]) - ref).max() for name, ref in zip(("if_I", "if_II"), exact)]
  errors32 = [np.abs(_to01(ours[name]) - ref).max() for name, ref in zip(("if_I", "if_II"), f32)]
  own = [np.abs(a - b).max() for a, b in zip(f32, exact)]
  print(f"\nimages in [0, 1], max |ours − diffusers float64|: stage I {errors[0]:.2e}, stage II "
        f"{errors[1]:.2e}; ours − diffusers float32: {errors32[0]:.2e}, {errors32[1]:.2e}; "
        f"diffusers float32 − float64: {own[0]:.2e}, {own[1]:.2e}")
  assert min(ref.std() for ref in exact) > 0.1  # not one blank image compared to another
  assert max(errors) <= 1e-4
  assert max(errors32) <= 2e-4


def test_upsampling_is_torch_align_corners():
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
  for size in (16, 4):  # up and down, from a 5 × 7 image
    want = torch.nn.functional.interpolate(_nchw(x), (size, size), mode="bilinear",
                                           align_corners=True).permute(0, 2, 3, 1).numpy()
    got = np.asarray(upsample_align_corners(x, size))
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"size {size}")


def test_repair_runs_on_if_stage_ii(if_setup):
  """`Cascade.repair` on IF's stage II alone (the image, resized to 16 px, is its low-res input:
  upsampled and noised as in sampling): inpainting keeps the known pixels exactly and fills the
  hole; image-to-image at strength 0.5 runs. One compiled program serves both — the latter is run
  with nothing kept (a mask of ones); `mask=None` differs only in skipping the replacement, then an
  identity. Stage I's repair is the same generic code with a simpler denoiser, and chaining stage II
  on stage I's repaired output is `Cascade.repair`'s own, tested on trained stages (one U-Net
  compile is ~6 s of this file's budget)."""
  cascade = if_setup.cascade
  yy, xx = np.mgrid[:24, :24] / 24
  image = np.stack([np.cos(6 * xx), np.sin(5 * yy), xx - yy], -1).astype(np.float32)[None]
  mask = (xx > 0.5).astype(np.float32)[None]  # fill the right half
  options = {"if_II": SamplingOptions(num_steps=2)}
  want = resize_images(image, 32)[0]
  inpainted = cascade.repair(["a red circle"], image, mask=mask, seed=1, options=options,
                             stages=["if_II"])
  assert set(inpainted) == {"if_II"}
  got = inpainted["if_II"][0]
  keep = resize_images(mask[..., None], 32)[0, ..., 0] <= 0.5
  assert 0 < keep.mean() < 1
  np.testing.assert_array_equal(got[keep], want[keep])
  assert np.abs(got[~keep] - want[~keep]).mean() > 0.05
  redone = cascade.repair(["a red circle"], image, mask=np.ones_like(mask), strength=0.5, seed=1,
                          options=options, stages=["if_II"])["if_II"][0]
  assert np.all(np.isfinite(redone)) and np.abs(redone - want).max() > 1e-3


def test_cli_sample_pretrained(if_setup, tmp_path, capsys):
  root = if_setup.root
  out = tmp_path / "if.png"
  assert cli.main(["sample", *PROMPTS, "--pretrained", str(root / "IF-I"), "--pretrained",
                   str(root / "IF-II"), "--steps", str(STEPS), "--out", str(out)]) == 0
  from PIL import Image

  assert np.asarray(Image.open(tmp_path / "if" / "001_if_II.png")).shape == (32, 32, 3)
  assert np.asarray(Image.open(tmp_path / "if" / "000_if_I.png")).shape == (16, 16, 3)
  assert out.is_file() and "grid:" in capsys.readouterr().out


def test_pretrained_stages_then_a_workdir_sr_stage(if_setup, tmp_path, capsys):
  """IF-I → IF-II → a super-resolution stage of ours (32 → 64 px here; 256 → 1024 after the real
  IF-II), trained on captions encoded by IF-I's T5 (`imagen-jax encode` with
  `text.encoder=IF_I_DIR`): `imagen-jax sample --pretrained I --pretrained II --workdir W` runs
  the three, IF's stages drawing exactly what they draw without W. A workdir stage trained on
  another text encoder, or a base stage, is refused in one line."""
  import json
  import shutil
  from pathlib import Path

  from PIL import Image

  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.data import build_dataset
  from imagen_jax.text.encode import run_encode
  from imagen_jax.train.loop import train
  from imagen_jax.train.metrics import to_uint8

  configs = Path(__file__).resolve().parent.parent / "configs"
  root = if_setup.root
  data = build_dataset("shapes", tmp_path / "data", resolution=64, num_train=4, num_test=2)
  work = tmp_path / "w"
  text = [f"text.encoder={root / 'IF-I'}", "text.max_length=77"]
  run_encode(apply_overrides(load_config(str(configs / "text.py")), [
      f"data.captions=tfds:{data.directory}", "data.splits=train", "text.cache_dtype=float32",
      *text]), work, progress=False)
  sr = apply_overrides(load_config(str(configs / "sr256.py:tiny")), [
      "resolution=64", "lowres_resolution=32", f"data.dataset={data.directory}", *text,
      f"model.text_dim={T5['d_model']}", "train.num_steps=1", "train.batch_size=2",
      "mesh.num_devices=1", "data.num_threads=1"])
  train(sr, work, progress=False)

  pretrained = ["--pretrained", str(root / "IF-I"), "--pretrained", str(root / "IF-II")]
  out = tmp_path / "mixed.png"
  assert cli.main(["sample", *PROMPTS, *pretrained, "--workdir", str(work), "--steps",
                   str(STEPS), "--seed", str(SEED), "--out", str(out)]) == 0
  folder = tmp_path / "mixed"
  sizes = {name: np.asarray(Image.open(folder / f"001_{name}.png")).shape
           for name in ("if_I", "if_II", sr.stage)}
  assert sizes == {"if_I": (16, 16, 3), "if_II": (32, 32, 3), sr.stage: (64, 64, 3)}
  assert "(2 images of 64 px)" in capsys.readouterr().out  # the grid shows the last stage
  options = {s.name: SamplingOptions(num_steps=STEPS) for s in if_setup.cascade.stages}
  alone = if_setup.cascade.sample(PROMPTS, seed=SEED, options=options)
  for name in ("if_I", "if_II"):
    for i, image in enumerate(to_uint8(alone[name])):
      np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{i:03d}_{name}.png")), image)

  # captions encoded by another T5 (the manifest's fingerprint says so): refused
  other = tmp_path / "other"
  shutil.copytree(work, other)
  manifest = other / "text_cache" / "train" / "manifest.json"
  record = json.loads(manifest.read_text())
  record["spec"]["encoder_fingerprint"] = "0" * 16
  manifest.write_text(json.dumps(record))
  capsys.readouterr()
  assert cli.main(["sample", "a red circle", *pretrained, "--workdir", str(other)]) == 2
  err = capsys.readouterr().err
  assert f"is not the one stage {sr.stage} was trained with" in err and "Traceback" not in err
  # a base stage cannot follow IF's stages
  shutil.copytree(work / sr.stage, other / "base64")
  config = json.loads((other / "base64" / "config.json").read_text())
  (other / "base64" / "config.json").write_text(json.dumps(
      {**config, "stage": "base64", "lowres_resolution": 0}))
  assert cli.main(["sample", "a red circle", *pretrained, "--workdir", str(other),
                   "--stages", "base64"]) == 2
  assert "is a base stage" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--pretrained", "{empty}"], "no unet/config.json"),
    (["--pretrained", "{missing}"], "does not exist"),
    (["--pretrained", "{II}", "--pretrained", "{I}"], "the first directory must be a stage I"),
    (["--pretrained", "{I}", "--pretrained", "{I}"], "must be a stage II"),
    (["--pretrained", "{I}", "--workdir", "{empty}"], "has no trained stages"),
    (["--pretrained", "{I}", "--stages", "if_I"], "--stages selects stages of a --workdir"),
])
def test_cli_pretrained_errors(if_setup, tmp_path, capsys, args, message):
  """A wrong directory or combination is one line on stderr and exit code 2, no traceback."""
  (tmp_path / "empty").mkdir()
  dirs = {"empty": tmp_path / "empty", "missing": tmp_path / "nope",
          "I": if_setup.root / "IF-I", "II": if_setup.root / "IF-II"}
  args = [a.format(**dirs) for a in args]
  assert cli.main(["sample", "a red circle", *args]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert cli.main(["sample", " ", "--pretrained", str(dirs["I"])]) == 2
  assert "empty prompt" in capsys.readouterr().err
