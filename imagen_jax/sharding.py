"""Device mesh, logical-axis rules and shardings.

The mesh has three axes, sized from the config (−1 takes the devices left over):

    data    pure data parallelism (parameters replicated),
    fsdp    data parallelism with parameters, gradients and optimiser state sharded (ZeRO-3),
    tensor  model parallelism: channels / heads / MLP units split across devices.

Every parameter carries logical axis names (see `imagen_jax.models.layers`, `imagen_jax.text.t5`)
and `rules` map them to mesh axes. A dimension that the mapped mesh axes do not divide is left
replicated rather than failing (e.g. the 3 input channels of the first convolution).

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    shardings = param_shardings(abstract_params, mesh, DEFAULT_RULES)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from imagen_jax.mesh_spec import MESH_AXES, parse_mesh_shape  # noqa: F401 (re-exported)

Rules = Sequence[tuple[str, Any]]

# logical name → mesh axes. Batch over data and fsdp; weights' input dims over fsdp, output dims
# (channels, heads, MLP units, vocabulary) over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("height", None), ("width", None), ("channels", "tensor"), ("length", None),
    ("conv_h", None), ("conv_w", None), ("conv_in", "fsdp"), ("conv_out", "tensor"),
    ("embed", "fsdp"), ("embed_kv", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
    ("cond", None), ("cond_in", None), ("text_embed", None), ("norm", None),
    ("vocab", "tensor"), ("relpos_buckets", None), ("kv", None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor'); one size may be −1 (the rest of the devices)."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot fill a mesh of {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but "
                     f"there are {len(devices)}; use -1 for one axis to take the rest")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                 rules: Rules) -> P:
  """PartitionSpec for an array with these logical axis names; indivisible dims replicated."""
  spec = nn.logical_to_mesh_axes(tuple(names), rules)
  fixed, used = [], set()
  for dim, axes in zip(shape, spec):
    flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    if axes is None or dim % _axis_size(mesh, axes) or used & set(flat):
      fixed.append(None)
    else:
      fixed.append(axes)
      used |= set(flat)
  return P(*fixed)


def param_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a (possibly abstract) tree whose leaves may be `nn.LogicallyPartitioned`;
  unboxed leaves (no names) are replicated."""

  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, logical_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over ('data', 'fsdp'); the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Rules from a config (lists from JSON/ConfigDict become tuples); None → DEFAULT_RULES."""
  if not rules:
    return DEFAULT_RULES
  out = []
  for name, axes in rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def strip_boxes(tree: Any) -> Any:
  """The values of `nn.Partitioned` boxes, without the sharding constraint `nn.unbox` applies
  under a mesh (usable on abstract trees outside jit)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))
