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
