"""Mesh shapes written as text ("data=-1,fsdp=8"), parsed without JAX, so that the command line
checks `--mesh` before JAX starts; `imagen_jax.sharding` builds the mesh from the result."""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")
MESH_FORMAT = ("AXIS=SIZE,... with each AXIS one of data, fsdp, tensor (at most once) and SIZE a "
               "positive integer or -1 (for at most one axis: the devices left over), e.g. "
               "data=-1,fsdp=8")


def parse_mesh_shape(text: str) -> dict[str, int]:
  """'data=-1,fsdp=8' → {'data': -1, 'fsdp': 8, 'tensor': 1} (unnamed axes 1); a ValueError
  "must be AXIS=SIZE,... got '<text>'" otherwise."""
  shape = dict.fromkeys(MESH_AXES, 1)
  seen = set()
  for part in text.split(","):
    name, sep, value = (s.strip() for s in part.partition("="))
    try:
      size = int(value)
    except ValueError:
      size = 0
    if not sep or name not in MESH_AXES or name in seen or (size < 1 and size != -1):
      break
    seen.add(name)
    shape[name] = size
  else:
    if list(shape.values()).count(-1) <= 1:
      return shape
  raise ValueError(f"must be {MESH_FORMAT}, got {text!r}")
