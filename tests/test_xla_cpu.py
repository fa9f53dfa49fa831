"""The XLA:CPU default that `import imagen_jax` adds to XLA_FLAGS (imagen_jax/xla_cpu.py)."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from imagen_jax import xla_cpu

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_flags_to_add():
  assert xla_cpu.cpu_flags_to_add({}, "0.10.2") == (FLAG,)
  assert xla_cpu.cpu_flags_to_add({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
                                  "0.10.2") == (FLAG,)
  # The user's own setting of the same flag wins; opting out; other jaxlib versions; no jaxlib.
  assert xla_cpu.cpu_flags_to_add(
      {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}, "0.10.2") == ()
  for off in ("0", "false", "OFF"):
    assert xla_cpu.cpu_flags_to_add({xla_cpu.OPT_OUT: off}, "0.10.2") == ()
  assert xla_cpu.cpu_flags_to_add({xla_cpu.OPT_OUT: "1"}, "0.10.2") == (FLAG,)
  assert xla_cpu.cpu_flags_to_add({}, "0.11.0") == ()
  assert xla_cpu.cpu_flags_to_add({}, None) == ()


def test_apply_appends_once():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  added = xla_cpu.apply_cpu_defaults(env)
  import jaxlib

  if not jaxlib.__version__.startswith(xla_cpu.SUPPORTED_JAXLIB):
    assert added == () and env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    return
  assert added == (FLAG,)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
  assert xla_cpu.apply_cpu_defaults(env) == ()  # already there: nothing added twice
  assert env["XLA_FLAGS"].count(FLAG) == 1


def _run(code: str, **env) -> str:
  full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT)}
  full.update(JAX_PLATFORMS="cpu", **env)
  return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                        check=True).stdout.strip()


@pytest.mark.parametrize("opt_out", [False, True])
def test_import_sets_the_flag_and_jax_accepts_it(opt_out):
  """In a fresh process: importing imagen_jax sets the flag (or not), and XLA starts with it and
  still computes a convolution correctly."""
  code = ("import jax, jax.numpy as jnp, numpy as np, os, imagen_jax\n"
          "x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32)\n"
          "w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 4, 5)), jnp.float32)\n"
          "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',\n"
          "    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))\n"
          "ref = sum(np.einsum('bhwi,io->bhwo', xp[:, i:i + 8, j:j + 8], np.asarray(w)[i, j])\n"
          "          for i in range(3) for j in range(3))\n"
          "assert np.allclose(np.asarray(y), ref, atol=1e-4), np.abs(np.asarray(y) - ref).max()\n"
          "print(os.environ.get('XLA_FLAGS', ''))")
  flags = _run(code, **({xla_cpu.OPT_OUT: "0"} if opt_out else {}))
  import jaxlib

  expect = not opt_out and jaxlib.__version__.startswith(xla_cpu.SUPPORTED_JAXLIB)
  assert (FLAG in flags) == expect


def test_tpu_absent_platforms():
  assert xla_cpu.tpu_absent_platforms({}, True, [], False) == "cpu"
  # a TPU attached, no libtpu, a GPU plugin, or the user's own choice: nothing changes
  assert xla_cpu.tpu_absent_platforms({}, True, ["/dev/accel0"], False) is None
  assert xla_cpu.tpu_absent_platforms({}, True, ["/dev/vfio/0"], False) is None
  assert xla_cpu.tpu_absent_platforms({}, False, [], False) is None
  assert xla_cpu.tpu_absent_platforms({}, True, [], True) is None
  assert xla_cpu.tpu_absent_platforms({"JAX_PLATFORMS": "tpu"}, True, [], False) is None


LIBTPU_NO_TPU = (importlib.util.find_spec("libtpu") is not None
                 and not glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*"))


@pytest.mark.skipif(not LIBTPU_NO_TPU, reason="needs libtpu installed on a machine without a TPU")
@pytest.mark.parametrize("skip", [False, True])
def test_libtpu_without_a_tpu_starts_quietly_on_the_cpu(skip):
  """What importing `imagen_jax` (and so every command, notebook and benchmark) does: with libtpu
  installed and no TPU, JAX starts on the CPU without libtpu's initialisation errors; without
  it (the control: jax alone) they are printed."""
  code = ("import jax\n" + ("import imagen_jax\n" if skip else "")
          + "print(jax.devices()[0].platform)")
  # A fresh machine's environment: no TPU_* settings (`imagen-jax plan`, run earlier by
  # test_plan in this worker, sets some in os.environ, and they quieten libtpu) and no platform.
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_PLATFORMS" and k != "TF_CPP_MIN_LOG_LEVEL" and not k.startswith("TPU_")}
  # libtpu initialises (and so prints) only in the process holding /tmp/libtpu_lockfile: while
  # another test has libtpu loaded (test_plan's compile-only TPU), the control would be silent.
  env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "cpu"
  assert ("TPU" in out.stderr) != skip, out.stderr
