"""DeepFloyd IF's U-Net configuration: `IFUNetConfig`, read from (and written back to) a diffusers
`UNet2DConditionModel` `config.json`.

`IFUNetConfig.from_diffusers` accepts exactly the subset of diffusers' options that IF's stage I
and stage II configurations use (the block types below, `addition_embed_type="text"`,
`encoder_hid_dim` text projection, `class_embed_type="timestep"`, scale-shift resnets, ...) and
raises a ValueError naming the key, its value and what is supported for anything else; a key
absent from the file takes diffusers' default, as in diffusers. The network itself is
`imagen_jax.models.if_unet.IFUNet`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax

from imagen_jax.models.attention import AttentionImpl, get_attention_op

Array = jax.Array

RESNET_DOWN = "ResnetDownsampleBlock2D"
ATTN_DOWN = "SimpleCrossAttnDownBlock2D"
ATTN_UP = "SimpleCrossAttnUpBlock2D"
RESNET_UP = "ResnetUpsampleBlock2D"
MID_BLOCK = "UNetMidBlock2DSimpleCrossAttn"
DOWN_BLOCK_TYPES = (RESNET_DOWN, ATTN_DOWN)
UP_BLOCK_TYPES = (ATTN_UP, RESNET_UP)
CROSS_NORM_GROUPS = 32  # diffusers' `cross_attention_norm_num_groups` (the text GroupNorm)


def gelu_exact(x: Array) -> Array:
  """torch.nn.GELU() / F.gelu: the erf form."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu_exact, "silu": nn.silu, "swish": nn.silu}
DTYPES = ("float32", "bfloat16")
PARAM_DTYPES = ("float32", "bfloat16", "float16")

# Every argument of diffusers' `UNet2DConditionModel.__init__` (0.42) with its default: a config
# key that is absent takes this value, as in diffusers.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2, "downsample_padding": 1, "mid_block_scale_factor": 1.0,
    "dropout": 0.0, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "attention_head_dim": 8, "num_attention_heads": None,
    "dual_cross_attention": False, "use_linear_projection": False, "class_embed_type": None,
    "addition_embed_type": None, "addition_time_embed_dim": None, "num_class_embeds": None,
    "upcast_attention": False, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "projection_class_embeddings_input_dim": None,
    "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64,
}

# Keys whose other values select features IF's U-Nets do not use: only these values are accepted.
# (Some of them, e.g. use_linear_projection, are not even read by IF's block types; a config that
# sets them is not an IF config, so it is refused rather than silently reinterpreted.)
_FIXED_VALUES: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "mid_block_type": (MID_BLOCK,),
    "downsample_padding": (1,),
    "dropout": (0, 0.0),
    "transformer_layers_per_block": (1,),
    "reverse_transformer_layers_per_block": (None,),
    "num_attention_heads": (None,),
    "dual_cross_attention": (False,),
    "use_linear_projection": (False,),
    "addition_time_embed_dim": (None,),
    "num_class_embeds": (None,),
    "upcast_attention": (False,),
    "resnet_time_scale_shift": ("scale_shift",),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "encoder_hid_dim_type": (None, "text_proj"),
    "class_embed_type": (None, "timestep"),
    "addition_embed_type": (None, "text"),
    "cross_attention_norm": (None, "group_norm"),
    "act_fn": tuple(ACTIVATIONS),
    "time_embedding_act_fn": (None, *ACTIVATIONS),
}


def _unsupported(key: str, value: Any, supported: str) -> ValueError:
  return ValueError(f"diffusers config key {key!r} = {value!r} is not supported by IFUNet "
                    f"(DeepFloyd IF's subset of UNet2DConditionModel); supported: {supported}")


def _per_level(key: str, value: Any, n: int, kind: type) -> tuple[Any, ...]:
  """An int/bool broadcast to the n levels, or a list of n of them."""
  if isinstance(value, (list, tuple)):
    if len(value) != n or not all(isinstance(v, kind) for v in value):
      raise ValueError(f"diffusers config key {key!r} = {value!r} must be one {kind.__name__} or "
                       f"a list of {n} (one per entry of block_out_channels)")
    return tuple(value)
  if not isinstance(value, kind):
    raise _unsupported(key, value, f"a {kind.__name__} or a list of {n}")
  return (value,) * n


@dataclasses.dataclass(frozen=True)
class IFUNetConfig:
  """DeepFloyd IF's U-Net hyper-parameters (diffusers' names); per-level tuples have one entry per
  level (`block_out_channels`). Build it from a diffusers `unet/config.json` with
  `IFUNetConfig.from_diffusers`; `to_diffusers()` is the inverse."""

  in_channels: int
  out_channels: int
  block_out_channels: tuple[int, ...]
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  layers_per_block: tuple[int, ...]
  only_cross_attention: tuple[bool, ...]
  cross_attention_dim: int
  attention_head_dim: int  # the width of one head
  encoder_hid_dim: int | None = None  # text width, projected to cross_attention_dim (None: same)
  mid_block_only_cross_attention: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  act_fn: str = "gelu"
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embedding_dim: int | None = None  # None: 4 × block_out_channels[0]
  time_embedding_act_fn: str | None = None
  class_embed_type: str | None = None  # 'timestep' (IF-II: the low-res noise level)
  addition_embed_type: str | None = None  # 'text': pooled text added to the embedding
  addition_embed_type_num_heads: int = 64
  cross_attention_norm: str | None = None  # 'group_norm' (IF)
  resnet_skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  mid_block_scale_factor: float = 1.0
  sample_size: int | tuple[int, int] | None = None  # informational (the training resolution)
  # Ours, not diffusers':
  dtype: str = "float32"  # compute dtype ("bfloat16" on TPU)
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise every resnet / attention block in the backward pass
  attention_impl: AttentionImpl = "reference"

  def __post_init__(self):
    for name in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                 "only_cross_attention"):  # lists → tuples (hashable: the config is jit-static)
      object.__setattr__(self, name, tuple(getattr(self, name)))
    n = len(self.block_out_channels)
    for name in ("down_block_types", "up_block_types", "layers_per_block",
                 "only_cross_attention"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"IFUNetConfig.{name} has {len(getattr(self, name))} entries but there "
                         f"are {n} levels (block_out_channels={self.block_out_channels})")
    for name, allowed in (("down_block_types", DOWN_BLOCK_TYPES),
                          ("up_block_types", UP_BLOCK_TYPES)):
      for block in getattr(self, name):
        if block not in allowed:
          raise _unsupported(name, block, f"block types {list(allowed)}")
    for name, value, allowed in (
        ("act_fn", self.act_fn, tuple(ACTIVATIONS)),
        ("time_embedding_act_fn", self.time_embedding_act_fn, (None, *ACTIVATIONS)),
        ("class_embed_type", self.class_embed_type, (None, "timestep")),
        ("addition_embed_type", self.addition_embed_type, (None, "text")),
        ("cross_attention_norm", self.cross_attention_norm, (None, "group_norm")),
        ("dtype", self.dtype, DTYPES), ("param_dtype", self.param_dtype, PARAM_DTYPES)):
      if value not in allowed:
        raise _unsupported(name, value, repr(list(allowed)))
    get_attention_op(self.attention_impl)  # raises for an unknown name
    for level, width in enumerate(self.block_out_channels):
      if width % self.norm_num_groups:
        raise ValueError(f"block_out_channels[{level}] = {width} is not a multiple of "
                         f"norm_num_groups = {self.norm_num_groups} (GroupNorm needs it)")
      attn = self.down_block_types[level] == ATTN_DOWN or (
          self.up_block_types[n - 1 - level] == ATTN_UP)
      if (attn or level == n - 1) and width % self.attention_head_dim:
        raise ValueError(f"block_out_channels[{level}] = {width} is not a multiple of "
                         f"attention_head_dim = {self.attention_head_dim} (the head width)")
    if self.cross_attention_norm == "group_norm" and self.cross_attention_dim % CROSS_NORM_GROUPS:
      raise ValueError(f"cross_attention_norm='group_norm' normalises the text in "
                       f"{CROSS_NORM_GROUPS} groups, but cross_attention_dim = "
                       f"{self.cross_attention_dim} is not a multiple of {CROSS_NORM_GROUPS}")
    if self.addition_embed_type == "text" and self.text_dim % self.addition_embed_type_num_heads:
      raise ValueError(f"the text width {self.text_dim} is not a multiple of "
                       f"addition_embed_type_num_heads = {self.addition_embed_type_num_heads}")

  @property
  def levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def text_dim(self) -> int:
    """Width of `encoder_hidden_states` (the T5 width)."""
    return self.encoder_hid_dim or self.cross_attention_dim

  @property
  def downsampling(self) -> int:
    """Total spatial reduction: inputs must be multiples of this."""
    return 2 ** (self.levels - 1)

  @property
  def has_only_cross_attention(self) -> bool:
    """Whether some attention block attends to the text alone (where masks are not defined)."""
    down = any(o for o, t in zip(self.only_cross_attention, self.down_block_types)
               if t == ATTN_DOWN)
    up = any(o for o, t in zip(reversed(self.only_cross_attention), self.up_block_types)
             if t == ATTN_UP)
    return down or up or self.mid_block_only_cross_attention

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], **overrides: Any) -> IFUNetConfig:
    """Validates a diffusers `UNet2DConditionModel` config dict (`unet/config.json`) and converts
    it; `overrides` set fields of the result (e.g. dtype="bfloat16", remat=True)."""
    unknown = {k for k in config if not k.startswith("_")} - set(DIFFUSERS_DEFAULTS)
    if unknown:
      raise ValueError(f"unknown diffusers UNet2DConditionModel config keys {sorted(unknown)}; "
                       f"IFUNet knows the arguments of diffusers 0.42's UNet2DConditionModel")
    c = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, allowed in _FIXED_VALUES.items():
      if c[key] not in allowed or isinstance(c[key], bool) != isinstance(allowed[0], bool):
        raise _unsupported(key, c[key], " or ".join(map(repr, allowed)))
    if c["encoder_hid_dim_type"] == "text_proj" and c["encoder_hid_dim"] is None:
      raise ValueError("encoder_hid_dim_type='text_proj' needs encoder_hid_dim (the text width)")
    if c["encoder_hid_dim_type"] is None and c["encoder_hid_dim"] is not None:
      c["encoder_hid_dim_type"] = "text_proj"  # as diffusers registers it
    for key in ("norm_num_groups", "cross_attention_dim", "attention_head_dim", "in_channels",
                "out_channels"):
      if not isinstance(c[key], int) or isinstance(c[key], bool):
        raise _unsupported(key, c[key], "an int")
    channels = c["block_out_channels"]
    if not isinstance(channels, (list, tuple)) or not all(isinstance(w, int) for w in channels):
      raise _unsupported("block_out_channels", channels, "a list of ints")
    n = len(channels)
    for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES),
                         ("up_block_types", UP_BLOCK_TYPES)):
      blocks = c[key]
      if not isinstance(blocks, (list, tuple)) or len(blocks) != n:
        raise ValueError(f"diffusers config key {key!r} = {blocks!r} must list {n} block types "
                         f"(one per entry of block_out_channels)")
      for block in blocks:
        if block not in allowed:
          raise _unsupported(key, block, f"block types {list(allowed)}")
    only_cross = c["only_cross_attention"]
    mid_only_cross = c["mid_block_only_cross_attention"]
    if mid_only_cross is None:  # diffusers: follows a bool only_cross_attention, else False
      mid_only_cross = only_cross if isinstance(only_cross, bool) else False
    if not isinstance(mid_only_cross, bool):
      raise _unsupported("mid_block_only_cross_attention", mid_only_cross, "None or a bool")
    time_dim = c["time_embedding_dim"]
    if time_dim is not None and not isinstance(time_dim, int):
      raise _unsupported("time_embedding_dim", time_dim, "None or an int")
    cfg = cls(
        in_channels=c["in_channels"], out_channels=c["out_channels"],
        block_out_channels=tuple(channels), down_block_types=tuple(c["down_block_types"]),
        up_block_types=tuple(c["up_block_types"]),
        layers_per_block=_per_level("layers_per_block", c["layers_per_block"], n, int),
        only_cross_attention=_per_level("only_cross_attention", only_cross, n, bool),
        cross_attention_dim=c["cross_attention_dim"],
        attention_head_dim=c["attention_head_dim"], encoder_hid_dim=c["encoder_hid_dim"],
        mid_block_only_cross_attention=mid_only_cross, norm_num_groups=c["norm_num_groups"],
        norm_eps=float(c["norm_eps"]), act_fn=c["act_fn"],
        flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
        time_embedding_dim=time_dim, time_embedding_act_fn=c["time_embedding_act_fn"],
        class_embed_type=c["class_embed_type"], addition_embed_type=c["addition_embed_type"],
        addition_embed_type_num_heads=int(c["addition_embed_type_num_heads"]),
        cross_attention_norm=c["cross_attention_norm"],
        resnet_skip_time_act=bool(c["resnet_skip_time_act"]),
        resnet_out_scale_factor=float(c["resnet_out_scale_factor"]),
        mid_block_scale_factor=float(c["mid_block_scale_factor"]),
        sample_size=tuple(c["sample_size"]) if isinstance(c["sample_size"], (list, tuple))
        else c["sample_size"])
    fields = {f.name for f in dataclasses.fields(cls)}
    if set(overrides) - fields:
      raise ValueError(f"unknown IFUNetConfig fields {sorted(set(overrides) - fields)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg

  def to_diffusers(self) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config dict of this U-Net (every key explicit)."""
    c = dict(DIFFUSERS_DEFAULTS)
    c.update(
        sample_size=list(self.sample_size) if isinstance(self.sample_size, tuple)
        else self.sample_size, in_channels=self.in_channels,
        out_channels=self.out_channels, block_out_channels=list(self.block_out_channels),
        down_block_types=list(self.down_block_types), up_block_types=list(self.up_block_types),
        mid_block_type=MID_BLOCK, layers_per_block=list(self.layers_per_block),
        only_cross_attention=list(self.only_cross_attention),
        mid_block_only_cross_attention=self.mid_block_only_cross_attention,
        cross_attention_dim=self.cross_attention_dim, attention_head_dim=self.attention_head_dim,
        encoder_hid_dim=self.encoder_hid_dim,
        encoder_hid_dim_type="text_proj" if self.encoder_hid_dim is not None else None,
        norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps, act_fn=self.act_fn,
        flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
        time_embedding_dim=self.time_embedding_dim,
        time_embedding_act_fn=self.time_embedding_act_fn,
        class_embed_type=self.class_embed_type, addition_embed_type=self.addition_embed_type,
        addition_embed_type_num_heads=self.addition_embed_type_num_heads,
        cross_attention_norm=self.cross_attention_norm, resnet_time_scale_shift="scale_shift",
        resnet_skip_time_act=self.resnet_skip_time_act,
        resnet_out_scale_factor=self.resnet_out_scale_factor,
        mid_block_scale_factor=self.mid_block_scale_factor)
    return {"_class_name": "UNet2DConditionModel", **c}
