"""DeepFloyd IF's U-Net (`imagen_jax.models.if_unet`) against diffusers' `UNet2DConditionModel`,
and its diffusers-format loader/saver (`imagen_jax.models.if_weights`).

The models are the tiny IF configurations of diffusers' own IF tests
(tests/pipelines/deepfloyd_if/__init__.py: `_get_dummy_components`,
`_get_superresolution_dummy_components`), plus a stage II variant with the options the released
IF-II checkpoints set (scripts/convert_if.py: resnet_skip_time_act, the 1/0.7071 output scales,
only_cross_attention) and a text width different from cross_attention_dim. Every parameter is
perturbed to random values (no layer of this class starts at zero, but the norms start at
scale 1 and bias 0, which would hide a mix-up of the two). The oracle is diffusers' forward in
float32 and, to tell implementation errors from float32 rounding, in float64.
"""

import copy
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from imagen_jax.models.if_unet import IFUNet, IFUNetConfig
from imagen_jax.models.if_weights import (abstract_params, diffusers_name, find_weights,
                                          from_torch_layout, if_param_shardings, load_if_unet,
                                          save_if_unet)
from imagen_jax.sharding import DEFAULT_RULES, make_mesh

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# One xdist worker (`make test` runs `--dist loadgroup`) builds the module's models once.
pytestmark = pytest.mark.xdist_group("if-unet")

# diffusers' IF test U-Nets (stage I and the super-resolution stage), verbatim.
STAGE_I = dict(
    sample_size=32, layers_per_block=1, block_out_channels=[32, 64],
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    in_channels=3, out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
    attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu")
STAGE_II = {**STAGE_I, "layers_per_block": [1, 2], "in_channels": 6,
            "class_embed_type": "timestep", "mid_block_scale_factor": 1.414,
            "time_embedding_act_fn": "gelu", "time_embedding_dim": 32}
# The options of the released IF-II checkpoints (convert_if.py's get_super_res_unet).
STAGE_II_IF = {**STAGE_II, "resnet_skip_time_act": True, "resnet_out_scale_factor": 1 / 0.7071,
               "mid_block_scale_factor": 1 / 0.7071, "only_cross_attention": True,
               "encoder_hid_dim": 48}
CONFIGS = {"I": STAGE_I, "II": STAGE_II, "II-IF": STAGE_II_IF}

BATCH, SIZE, TOKENS = 4, 16, 6
TIMESTEPS = np.array([0, 1, 500, 999])
FRACTIONAL_TIMESTEPS = np.array([0.0, 1.5, 500.25, 999.0], np.float32)  # for stage "II-IF"
NOISE_LEVELS = np.array([0, 250, 20, 999])  # class labels of the SR stages
# Keep all / drop the last two / drop all (only the image keys remain) / drop a scattered few.
MASK = np.array([[1] * 6, [1, 1, 1, 1, 0, 0], [0] * 6, [1, 0, 1, 0, 1, 1]], bool)
# Max |ours − diffusers| relative to the output's scale (max |diffusers|, ≈ 5 here). Measured
# 2–5e-6 (1–2e-5 absolute) against float32 diffusers and 2e-6 against float64 diffusers, whose
# own float32 error is as large (2–4e-6): float32 rounding, with a ≥ 2× margin.
RTOL = 1e-5


def _diffusers_unet(config: dict, seed: int):
  torch.manual_seed(seed)
  model = diffusers.UNet2DConditionModel(**config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _inputs(config: dict, seed: int = 0):
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal((BATCH, SIZE, SIZE, config["in_channels"]), np.float32)
  text = rng.standard_normal((BATCH, TOKENS, config["encoder_hid_dim"]), np.float32)
  labels = NOISE_LEVELS if config.get("class_embed_type") else None
  timesteps = FRACTIONAL_TIMESTEPS if config is STAGE_II_IF else TIMESTEPS
  return sample, timesteps, text, labels


def _torch_forward(model, sample, timesteps, text, labels, mask, dtype=None):
  model = model if dtype is None else copy.deepcopy(model).to(dtype)
  cast = (lambda a: torch.from_numpy(a)) if dtype is None else (
      lambda a: torch.from_numpy(a).to(dtype))
  with torch.no_grad():
    out = model(cast(sample).permute(0, 3, 1, 2), torch.from_numpy(timesteps), cast(text),
                class_labels=None if labels is None else torch.from_numpy(labels),
                encoder_attention_mask=None if mask is None else torch.from_numpy(mask)).sample
  return out.permute(0, 2, 3, 1).double().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, sample, timesteps, text, mask, labels):
  return IFUNet(cfg).apply({"params": params}, sample, timesteps, text, mask, labels)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  """name → (diffusers model, its save_pretrained directory, our config, our params).

  torch runs on one thread meanwhile: its tiny forwards take 15× longer with two threads on two
  busy cores (measured 1.3 s vs 0.07 s)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    out = {}
    for seed, (name, config) in enumerate(CONFIGS.items()):
      model = _diffusers_unet(config, seed)
      path = tmp_path_factory.mktemp(f"if_{name}")
      model.save_pretrained(path)  # safetensors
      cfg, params = load_if_unet(path)
      out[name] = (model, path, cfg, params)
    yield out
  finally:
    torch.set_num_threads(threads)


def _rel_err(ours, ref) -> float:
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# One compilation each (~6 s of a busy CPU): the mask is tested where it applies (stage II of
# diffusers' tests; stage I has the same attention blocks), its absence on the others.
@pytest.mark.parametrize("name,masked", [("I", False), ("II", True), ("II-IF", False)])
def test_matches_diffusers(stages, name, masked):
  """Forward parity for timesteps 0/1/500/999 (fractional ones for II-IF) and noise levels
  0/250/20/999 (stage II), with no text mask and with one dropping none / some / all tokens.
  diffusers' default processor (AttnAddedKVProcessor2_0, torch SDPA) and AttnAddedKVProcessor,
  which diffusers' IF tests set, agree with each other and with us."""
  model, _, cfg, params = stages[name]
  sample, timesteps, text, labels = _inputs(CONFIGS[name])
  mask = MASK if masked else None
  ours = np.asarray(_forward(cfg, params, sample, timesteps, text, mask, labels))
  assert ours.shape == (BATCH, SIZE, SIZE, 6) and ours.dtype == np.float32

  ref = _torch_forward(model, sample, timesteps, text, labels, mask)
  ref64 = _torch_forward(model, sample, timesteps, text, labels, mask, dtype=torch.float64)
  classic = copy.deepcopy(model)
  classic.set_attn_processor(diffusers.models.attention_processor.AttnAddedKVProcessor())
  ref_classic = _torch_forward(classic, sample, timesteps, text, labels, mask)
  print(f"\nstage {name} mask={masked}: output scale {np.abs(ref).max():.2f}, max |ours − "
        f"diffusers f32| {np.abs(ours - ref).max():.2e}, vs f64 {np.abs(ours - ref64).max():.2e}"
        f"; diffusers f32 vs f64 {np.abs(ref - ref64).max():.2e}")
  assert _rel_err(ref_classic, ref) < RTOL
  assert _rel_err(ours, ref) < RTOL
  assert _rel_err(ours, ref64) < RTOL
  if masked:  # the mask matters (so the test above would see it mishandled)
    unmasked = _torch_forward(model, sample, timesteps, text, labels, None)
    assert np.abs(unmasked - ref).max() > 1e3 * RTOL * np.abs(ref).max()


def test_mask_with_only_cross_attention_is_refused(stages):
  """diffusers fails (a shape error) when an only_cross_attention block gets a mask; we say so."""
  model, _, cfg, params = stages["II-IF"]
  sample, timesteps, text, labels = _inputs(CONFIGS["II-IF"])
  with pytest.raises(RuntimeError):
    _torch_forward(model, sample, timesteps, text, labels, MASK)
  with pytest.raises(ValueError, match="only_cross_attention"):
    IFUNet(cfg).apply({"params": params}, sample, timesteps, text, MASK, labels)


def test_config_conversion(stages):
  """from_diffusers resolves the per-level and defaulted keys as diffusers does; to_diffusers is
  its inverse."""
  model, path, cfg, _ = stages["II-IF"]
  assert cfg.layers_per_block == (1, 2)
  assert cfg.only_cross_attention == (True, True) and cfg.mid_block_only_cross_attention
  assert cfg.time_embed_dim == 32 and cfg.text_dim == 48
  assert IFUNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
  stage_i = stages["I"][2]
  assert stage_i.only_cross_attention == (False, False) and stage_i.time_embed_dim == 128
  assert IFUNetConfig.from_diffusers(json.loads((path / "config.json").read_text()),
                                     dtype="bfloat16").dtype == "bfloat16"


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["ResnetDownsampleBlock2D", "CrossAttnDownBlock2D"]),
    ("up_block_types", ["UpBlock2D", "ResnetUpsampleBlock2D"]),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("use_linear_projection", True),
    ("time_embedding_type", "fourier"),
    ("encoder_hid_dim_type", "image_proj"),
    ("addition_embed_type", "text_time"),
    ("class_embed_type", "projection"),
    ("conv_in_kernel", 5),
    ("resnet_time_scale_shift", "default"),
    ("attention_head_dim", [8, 8]),
    ("not_a_diffusers_key", 1),
])
def test_unsupported_config_is_refused(key, value):
  config = {**STAGE_I, key: value}
  with pytest.raises(ValueError) as e:
    IFUNetConfig.from_diffusers(config)
  assert key in str(e.value)
  if key != "not_a_diffusers_key":  # that error lists the unknown keys, not their values
    shown = value[-1] if key.endswith("block_types") else value
    assert str(shown) in str(e.value)


def test_unsupported_block_type_in_a_saved_config(stages, tmp_path):
  """load_if_unet refuses the config before reading any weights."""
  config = json.loads((stages["I"][1] / "config.json").read_text())
  config["down_block_types"] = ["ResnetDownsampleBlock2D", "CrossAttnDownBlock2D"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
    load_if_unet(tmp_path)


def _weights_dir(stages, tmp_path, tensors: dict[str, np.ndarray]):
  tmp_path.mkdir()
  (tmp_path / "config.json").write_text((stages["I"][1] / "config.json").read_text())
  save_file(tensors, str(tmp_path / "diffusion_pytorch_model.safetensors"))
  return tmp_path


def test_weight_errors(stages, tmp_path):
  """A wrong shape, an unknown tensor and missing tensors are named; so are missing files."""
  conv_in = stages["I"][0].state_dict()["conv_in.weight"].numpy()  # (32, 3, 3, 3)
  bad = _weights_dir(stages, tmp_path / "shape", {"conv_in.weight": conv_in[:, :2]})
  with pytest.raises(ValueError, match=r"conv_in\.weight.*\(32, 2, 3, 3\).*\(32, 3, 3, 3\)"):
    load_if_unet(bad)
  bad = _weights_dir(stages, tmp_path / "unknown", {"conv_in.weights": conv_in})
  with pytest.raises(ValueError, match=r"unexpected tensor 'conv_in\.weights'"):
    load_if_unet(bad)
  bad = _weights_dir(stages, tmp_path / "missing", {"conv_in.weight": conv_in})
  with pytest.raises(ValueError, match=r"missing.*'conv_in\.bias'"):
    load_if_unet(bad)
  with pytest.raises(FileNotFoundError, match="not found"):
    load_if_unet(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_if_unet(tmp_path / "empty")
  (tmp_path / "empty" / "config.json").write_text(json.dumps(STAGE_I))
  with pytest.raises(FileNotFoundError, match=r"no weights file.*found \['config.json'\]"):
    load_if_unet(tmp_path / "empty")


def test_weight_file_choice(tmp_path):
  """Full precision when present, else fp16; an explicit variant takes only its own files."""
  for name in ("diffusion_pytorch_model.fp16.safetensors",
               "diffusion_pytorch_model.safetensors.index.json"):
    (tmp_path / name).touch()
  assert find_weights(tmp_path).name == "diffusion_pytorch_model.safetensors.index.json"
  assert find_weights(tmp_path, "fp16").name == "diffusion_pytorch_model.fp16.safetensors"
  (tmp_path / "diffusion_pytorch_model.safetensors.index.json").unlink()
  assert find_weights(tmp_path).name == "diffusion_pytorch_model.fp16.safetensors"
  with pytest.raises(FileNotFoundError, match="bf16"):
    find_weights(tmp_path, "bf16")


def test_sharded_fp16_variant_onto_a_mesh(stages, tmp_path):
  """An fp16 variant in several shards + index, loaded onto a data×fsdp×tensor mesh of the 8 CPU
  devices: every leaf on its requested sharding, equal to the float16 values. (Every parameter
  has logical axis names from the vocabulary of DEFAULT_RULES.)"""
  model, _, cfg, _ = stages["I"]
  half = copy.deepcopy(model).half()
  half.save_pretrained(tmp_path, variant="fp16", max_shard_size="200KB")
  shards = sorted(tmp_path.glob("diffusion_pytorch_model.fp16-*-of-*.safetensors"))
  assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
  assert len(shards) >= 3 and not (tmp_path / "diffusion_pytorch_model.safetensors").exists()

  vocabulary = {name for name, _ in DEFAULT_RULES}
  is_box = lambda x: isinstance(x, nn.Partitioned)
  for box in jax.tree.leaves(abstract_params(cfg), is_leaf=is_box):
    assert isinstance(box, nn.Partitioned) and len(box.names) == box.value.ndim
    assert set(box.names) - {None} <= vocabulary, box.names
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = if_param_shardings(cfg, mesh, DEFAULT_RULES)
  loaded_cfg, params = load_if_unet(tmp_path, shardings=shardings)
  assert loaded_cfg == cfg
  state = {k: v.float().numpy() for k, v in half.state_dict().items()}
  flat, flat_shardings = (traverse_util.flatten_dict(t) for t in (params, shardings))
  assert set(flat) == set(flat_shardings) and len(flat) == len(state)
  split = 0
  for path, leaf in flat.items():
    assert leaf.sharding == flat_shardings[path], path
    assert leaf.dtype == jnp.float32
    split += any(axis is not None for axis in leaf.sharding.spec)
    expected = from_torch_layout(state[diffusers_name(path)], path)
    np.testing.assert_array_equal(np.asarray(leaf), expected, err_msg="/".join(path))
  assert split > len(flat) // 4  # the fsdp and tensor axes are really used


def test_save_round_trip(stages, tmp_path):
  """save_if_unet → diffusers' from_pretrained gives the original model's outputs (bit for bit) and
  config; load_if_unet gives our params back."""
  model, _, cfg, params = stages["II-IF"]
  save_if_unet(tmp_path / "unet", cfg, params)
  reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
  for key in ("only_cross_attention", "mid_block_only_cross_attention", "resnet_skip_time_act",
              "resnet_out_scale_factor", "mid_block_scale_factor", "class_embed_type",
              "encoder_hid_dim", "time_embedding_act_fn"):
    expected = model.config[key]
    got = reloaded.config[key]
    if key == "only_cross_attention":
      got, expected = list(got), [expected] * 2
    if key == "mid_block_only_cross_attention":
      expected = True  # None in the original: follows the bool only_cross_attention
    assert got == expected, key
  sample, timesteps, text, labels = _inputs(CONFIGS["II-IF"])
  np.testing.assert_array_equal(_torch_forward(reloaded, sample, timesteps, text, labels, None),
                                _torch_forward(model, sample, timesteps, text, labels, None))
  cfg_again, params_again = load_if_unet(tmp_path / "unet")
  assert cfg_again == cfg
  jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_bfloat16_compute(stages):
  """bfloat16 parameters and compute stay as close to the float32 reference as diffusers' own
  bfloat16 model does (measured: 3.1e-2 and 2.6e-2 of the output scale; bfloat16 keeps 8 bits)."""
  model, _, cfg, params = stages["I"]
  sample, timesteps, text, labels = _inputs(CONFIGS["I"])
  cfg16 = dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16")
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  ours = np.asarray(_forward(cfg16, params16, sample, timesteps, text, None, labels))
  ref = _torch_forward(model, sample, timesteps, text, labels, None)
  theirs = _torch_forward(model, sample, timesteps, text, labels, None, dtype=torch.bfloat16)
  err, their_err = _rel_err(ours, ref), _rel_err(theirs, ref)
  print(f"\nbfloat16: max |ours − diffusers f32| / scale = {err:.2e}; diffusers bf16: "
        f"{their_err:.2e}")
  assert ours.dtype == np.float32 and err < 2 * their_err and err < 0.1


def test_remat_same_output_and_gradient():
  """remat=True recomputes the blocks in the backward pass: same loss and parameter gradients.
  On a one-level U-Net without down-block resnets (its mid block and up block still have both kinds
  of rematerialised blocks, resnets and attention), since compiling the backward pass of the
  two-level ones takes a busy 2-core CPU half a minute."""
  cfg = IFUNetConfig.from_diffusers({
      **STAGE_I, "block_out_channels": [32], "layers_per_block": 0,
      "down_block_types": ["SimpleCrossAttnDownBlock2D"],
      "up_block_types": ["SimpleCrossAttnUpBlock2D"], "addition_embed_type": None,
      "encoder_hid_dim": None})
  sample, timesteps, text, _ = _inputs(STAGE_I)
  sample, text, timesteps, mask = sample[:2, :8, :8], text[:2], timesteps[:2], MASK[:2]
  rng = np.random.default_rng(0)  # random params of the abstract init's shapes (no compile)
  params = jax.tree.map(lambda p: rng.normal(float(p.ndim == 1), 0.1, p.shape).astype(np.float32),
                        nn.unbox(abstract_params(cfg)))

  def loss(cfg, params):
    return jnp.mean(IFUNet(cfg).apply({"params": params}, sample, timesteps, text, mask) ** 2)

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  value, grads = grad(cfg, params)
  value_remat, grads_remat = grad(dataclasses.replace(cfg, remat=True), params)
  remat_jaxpr = str(jax.make_jaxpr(functools.partial(loss, dataclasses.replace(cfg, remat=True)))(
      params))
  assert "remat" in remat_jaxpr  # the flag really inserts rematerialisation (jax.checkpoint)
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  flat, flat_remat = traverse_util.flatten_dict(grads), traverse_util.flatten_dict(grads_remat)
  scale = max(float(np.abs(g).max()) for g in flat.values())
  for path, g in flat.items():  # float32 rounding of a recomputed, differently fused program
    np.testing.assert_allclose(flat_remat[path], g, atol=1e-5 * scale, rtol=0,
                               err_msg="/".join(path))
