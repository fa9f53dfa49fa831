"""XLA:CPU defaults for this package, applied when `imagen_jax` is imported (before JAX starts).

jaxlib 0.10 hands convolutions on the CPU to YNNPACK by default. For the U-Nets here that is the
slow choice: on BENCH-A's shapes (batch 16; `python -m benchmarks.peers.profile convs`) a 3×3
convolution at 32 px, 64→64 channels takes 12.6 ms forward and 44.1 ms for its kernel gradient
through YNNPACK against 9.0 ms and 12.7 ms through XLA's Eigen kernels, and most of the U-Nets'
shapes are 1.1–3.5× faster through Eigen (table in `benchmarks/RESULTS.md`). So, unless told
otherwise, importing `imagen_jax` removes convolutions from YNNPACK's share (dots and reductions
stay there) by adding one flag to `XLA_FLAGS`:

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

It only changes XLA:CPU; TPU and GPU programs are unaffected. It is *not* added when

  * `XLA_FLAGS` already sets `xla_cpu_experimental_ynn_fusion_type` (your choice wins),
  * `IMAGEN_JAX_XLA_CPU_DEFAULTS=0` is in the environment (opt out),
  * the installed jaxlib is not a 0.10 release: the flag is experimental, and XLA aborts on a
    flag it does not know, so it is only set for the versions it was measured on.

XLA reads `XLA_FLAGS` once, when the first JAX backend starts: import `imagen_jax` before running
anything in JAX (importing `jax` first is fine) for the default to take effect.

`skip_absent_tpu` (called when `imagen_jax` is imported, and again by the `imagen-jax` command
line) keeps JAX off the TPU backend where libtpu is installed but no TPU is attached, so programs
start without libtpu's initialisation errors; a TPU VM (its device nodes), a GPU plugin or
`JAX_PLATFORMS` set by you leave it alone. Compile-only TPU topologies (`imagen-jax plan`) work
either way.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{FLAG_NAME}=-individual_convolution",)
OPT_OUT = "IMAGEN_JAX_XLA_CPU_DEFAULTS"
SUPPORTED_JAXLIB = ("0.10.",)


def cpu_flags_to_add(environ: dict[str, str], jaxlib_version: str | None) -> tuple[str, ...]:
  """The flags `apply_cpu_defaults` would append to `environ['XLA_FLAGS']` (pure, for tests)."""
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return ()
  if jaxlib_version is None or not jaxlib_version.startswith(SUPPORTED_JAXLIB):
    return ()
  if FLAG_NAME in environ.get("XLA_FLAGS", ""):
    return ()
  return CPU_FLAGS


def apply_cpu_defaults(environ=os.environ) -> tuple[str, ...]:
  """Append the CPU defaults to `XLA_FLAGS` where they apply; returns what was added."""
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    version = None
  added = cpu_flags_to_add(environ, version)
  if added:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", "").strip(), *added]).strip()
  return added


# --- libtpu installed, no TPU attached -----------------------------------------------------------

GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "jax_rocm6_plugin")


def tpu_absent_platforms(environ: dict[str, str], has_libtpu: bool, tpu_device_nodes: list[str],
                         has_gpu_plugin: bool) -> str | None:
  """The `JAX_PLATFORMS` the command line sets when libtpu is installed but no TPU is attached
  (pure, for tests), else None.

  The `plan` and `test` extras install libtpu (for compile-only TPU topologies); on a machine
  without a TPU, JAX then tries the TPU backend first and prints libtpu's initialisation errors
  ("Failed to find host bounds for accelerator type", "could not determine TPU worker
  hostnames") before it falls back to the CPU. A TPU VM has device nodes (`/dev/accel*` up to
  v4 and on v5p, `/dev/vfio/<n>` from v5e on); without them the CPU is the only platform, unless
  a GPU plugin is installed (then nothing is changed). `JAX_PLATFORMS` already set wins.
  """
  if "JAX_PLATFORMS" in environ or not has_libtpu or tpu_device_nodes or has_gpu_plugin:
    return None
  return "cpu"


def skip_absent_tpu(environ=os.environ) -> str | None:
  """Set `JAX_PLATFORMS=cpu` where `tpu_absent_platforms` says so (before JAX starts)."""
  import glob
  from importlib.util import find_spec

  platforms = tpu_absent_platforms(
      environ, find_spec("libtpu") is not None,
      glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*"),
      any(find_spec(p) is not None for p in GPU_PLUGINS))
  if platforms is not None:
    environ["JAX_PLATFORMS"] = platforms
    import sys
    if "jax" in sys.modules:  # imported but not started: the config is read at backend start
      sys.modules["jax"].config.update("jax_platforms", platforms)
  return platforms
