"""Test-suite set-up: CPU only, 8 virtual devices for sharding tests, deterministic XLA, and one
XLA compilation cache shared by the whole run.

Many tests compile the same programs: the train/resume/multi-host tests start several `imagen-jax
train` processes on one tiny config, and pytest-xdist runs two workers. JAX's persistent cache
(in a fresh directory per run, removed at the end) lets each program compile once per run; a cache
hit loads the executable compiled from the same program (the SIGKILL/resume test compares
losses bit for bit across processes, and passes with it).
"""

import os
import shutil
import tempfile

import pytest

# Must happen before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# LLVM's -O0 for XLA:CPU's generated kernels: compiling is most of this suite's time (a tiny U-Net
# train step: 37 → 25 s of CPU, its init 29 → 14 s) while its few steps run ~1.5× slower. The
# programs and their semantics are unchanged; convolutions and matmuls are library calls either way.
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

# Set by the first process that imports this file (the xdist controller, or pytest without
# xdist); workers and the subprocesses tests start inherit it through the environment.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="imagen_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  # A size bound makes JAX guard cache reads/writes with a file lock: processes share the cache.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Module fixtures that take minutes to build: every test using one runs on the same xdist worker
# (`--dist loadgroup`, see the Makefile), so the fixture is built once, not once per worker.
_SHARED_FIXTURES = {"demo_workdir": "cascade-demo", "base_tiny": "unet-tiny",
                    "sr_tiny": "unet-tiny", "toy_run": "toy-run",
                    "small": "train-small", "plan_8": "plan-8"}

# Tests (node-id prefixes) that take a minute or more of a worker: handed out first, so the two
# workers do not end the run with one of them alone on a long test (longest first; measured
# with `make test PYTEST_ARGS=--durations=40`).
_SLOW_FIRST = (
    "tests/test_cascade.py",  # the quick demo fixture, then everything that samples from it
    "tests/test_train.py::test_sigkill_then_resume",
    "tests/test_colab.py::test_notebook_runs_top_to_bottom",
    "tests/test_train.py::test_demo_recipe_learns",
    "tests/test_train.py::test_two_processes_match_one",
    "tests/test_train.py::test_sharded_step_matches_one_device",  # with the train-small group
    "tests/test_plan.py::test_tpu_plan",
    "tests/test_train.py::test_sr1024_stage_trains",
)


def _slowness(item) -> int:
  for rank, prefix in enumerate(_SLOW_FIRST):
    if item.nodeid.startswith(prefix):
      return rank
  return len(_SLOW_FIRST)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
  for item in items:
    groups = {_SHARED_FIXTURES[f] for f in item.fixturenames if f in _SHARED_FIXTURES}
    if groups:
      (group,) = groups  # a test that needs two shared fixtures would need one group for both
      item.add_marker(pytest.mark.xdist_group(group))
  items.sort(key=_slowness)  # stable: the rest keep their order
