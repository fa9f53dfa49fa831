"""The Colab notebook (colab/imagen_jax_tpu.ipynb): stored clean, its install cell skipped in CI,
and executed top to bottom on this CPU with the small-size switch (IMAGEN_JAX_NOTEBOOK_SMALL=1).

The notebook runs in a Jupyter kernel of this very Python (a kernelspec written into a temporary
JUPYTER_PATH, so neither a user-level `python3` kernel nor a missing system one can interfere),
with a temporary working directory: nothing is written into the repository.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "colab" / "imagen_jax_tpu.ipynb"
SMALL_ENV = "IMAGEN_JAX_NOTEBOOK_SMALL"


def read_notebook() -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK, as_version=4)


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
  cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
  return cells[0]


def test_notebook_is_valid_and_stored_without_outputs():
  nb = read_notebook()
  nbformat.validate(nb)
  assert nb.nbformat == 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, "the notebook has no code cells"
  for i, cell in enumerate(code):
    assert cell.outputs == [] and cell.execution_count is None, \
        f"code cell {i} is stored with outputs: clear them before committing"
    compile(cell.source, f"<cell {i}>", "exec")  # plain Python, no IPython magics
    long = [line for line in cell.source.splitlines() if len(line) > 100]
    assert not long, f"code cell {i} has lines over 100 characters: {long}"
  tagged(nb, "parameters")
  tagged(nb, "install")


def _run_cells(sources: list[str]) -> tuple[dict, str]:
  """Run cell sources in one namespace, as a kernel would; returns (namespace, stdout)."""
  import contextlib
  import io

  namespace: dict = {"__name__": "__main__"}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    for source in sources:
      exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 (the notebook's own cells)
  return namespace, out.getvalue()


@pytest.fixture
def colab_like(monkeypatch, tmp_path):
  """A process that looks like a Colab kernel, where installing would really run commands:
  `subprocess.run` records instead of running, `imagen_jax` looks absent, sys.path is restored."""
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.delenv("CI", raising=False)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(list(cmd)))
  import importlib.util

  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "imagen_jax" else real_find_spec(name, *a))
  return calls


def test_install_cell_is_skipped_when_the_small_switch_is_set(colab_like, monkeypatch):
  monkeypatch.setenv(SMALL_ENV, "1")
  nb = read_notebook()
  ns, out = _run_cells([tagged(nb, "parameters").source, tagged(nb, "install").source])
  assert ns["SMALL"] and ns["IN_CI"] and ns["IN_COLAB"] and not ns["INSTALL"]
  assert "install skipped" in out
  assert colab_like == [], f"the install cell ran commands in CI: {colab_like}"


def test_install_cell_installs_on_colab(colab_like, monkeypatch):
  """The converse: without the switch, in Colab, the cell clones REPO and pip-installs it."""
  monkeypatch.delenv(SMALL_ENV, raising=False)
  if Path("/content/imagen_jax").exists():
    pytest.skip("a real Colab clone is present: the cell would not clone")
  nb = read_notebook()
  params, install = tagged(nb, "parameters").source, tagged(nb, "install").source
  with pytest.raises(ValueError, match="set REPO"):  # the placeholder URL is refused
    _run_cells([params, install])
  ns, _ = _run_cells([params, "REPO = 'https://example.invalid/me/imagen_jax'", install])
  assert ns["INSTALL"] and not ns["IN_CI"]
  clone, pip = colab_like
  assert clone[:2] == ["git", "clone"] and "https://example.invalid/me/imagen_jax" in clone
  assert pip[:4] == [sys.executable, "-m", "pip", "install"] and "-e" in pip
  assert pip[-1].startswith(str(ns["REPO_DIR"]))


@pytest.fixture
def kernel_env(monkeypatch, tmp_path):
  """Environment of the notebook's kernel: this Python, CPU, the small-size switch."""
  from ipykernel.kernelspec import write_kernel_spec

  jupyter = tmp_path / "jupyter"
  write_kernel_spec(jupyter / "kernels" / "python3")  # argv: this sys.executable
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter))  # searched before the user's kernels
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.setenv(SMALL_ENV, "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # 8 virtual devices (conftest.py) show a real mesh; XLA:CPU's cheapest optimisation level cuts
  # the compile time that dominates a few-step run by ~40%.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
  monkeypatch.setenv("XLA_FLAGS", flags + " --xla_backend_optimization_level=0"
                     " --xla_llvm_disable_expensive_passes=true")
  monkeypatch.delenv("IMAGEN_JAX_NOTEBOOK_WORKDIR", raising=False)
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  return run_dir


def _text(cell: nbformat.NotebookNode) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(kernel_env):
  from nbclient import NotebookClient

  nb = read_notebook()
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          extra_arguments=["--InteractiveShell.colors=nocolor"],
                          resources={"metadata": {"path": str(kernel_env)}})
  client.execute()  # raises CellExecutionError (with the cell's traceback) if a cell fails

  workdir = kernel_env / "imagen_jax_work"
  assert "SMALL=True" in _text(tagged(nb, "parameters"))
  assert "install skipped" in _text(tagged(nb, "install"))
  # both stages trained and checkpointed their last step (SMALL: 4 and 2 steps)
  assert (workdir / "base64" / "checkpoints" / "4").is_dir()
  assert (workdir / "sr256" / "checkpoints" / "2").is_dir()
  # the cascade grid: 4 prompts side by side, base row (32 px upsampled) over SR row (64 px)
  sample_cell = next(c for c in nb.cells if "load_cascade(" in c.source)
  assert "{'base64': (4, 32, 32, 3), 'sr256': (4, 64, 64, 3)}" in _text(sample_cell)
  grid = np.asarray(Image.open(workdir / "cascade_grid.png"))
  pad, size, n = 2, 64, 4
  assert grid.shape == (2 * size + 3 * pad, n * size + (n + 1) * pad, 3)
  for row in range(2):
    for col in range(n):
      y, x = pad + row * (size + pad), pad + col * (size + pad)
      assert grid[y:y + size, x:x + size].std() > 0, f"tile {row}, {col} of the grid is blank"
  shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
           if "image/png" in o.get("data", {})]
  assert len(shown) >= 2, "the grid and the guidance sweep are displayed inline"
  # the paper-size parameter counts, from jax.eval_shape
  counts = _text(nb.cells[-1])
  for stage, millions in (("base64", "2118M"), ("sr256", "631M"), ("sr1024", "437M")):
    assert any(line.split()[:2] == [stage, millions] for line in counts.splitlines()), counts
  assert not (ROOT / "colab" / "imagen_jax_work").exists()
