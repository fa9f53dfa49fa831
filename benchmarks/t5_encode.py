"""Throughput and memory of the frozen T5 encoder (issue 3): `python -m benchmarks.t5_encode`.

For each size the benchmark

  1. writes a T5 encoder with RANDOM weights (no download) as a Hugging Face checkpoint
     (config.json + model.safetensors, float32, via `save_t5_encoder`) into a temporary directory,
     in a subprocess of its own so that building the weights does not count towards the memory
     of step 2;
  2. in a fresh subprocess, loads it with `load_t5_encoder` (the loading path of
     `TextEncoder.from_directory`, minus the tokenizer) and puts it on the device, then lowers and
     compiles the very function `TextEncoder` jits (`T5Encoder(config).apply` with the parameters
     as an argument) for fixed-shape (batch, max_length) token ids and mask, and times it.

Token ids bypass the tokenizer: each caption has `--tokens` real tokens (random ids, the last one
EOS) and padding after them; the compiled encoder always processes all `max_length` positions.

Reported per size: parameter count (from `jax.eval_shape`, no allocation), checkpoint load time
(safetensors → host numpy → device), compile time (lower + compile), steady-state captions/s and
ms/batch (median over `--repeats` timed calls after one warm-up call, each `block_until_ready`),
FLOPs per caption from XLA's cost analysis of the compiled executable and the achieved GFLOP/s,
the host RSS growth across loading, and the peak RSS (`ru_maxrss`) of the measuring process.

Sizes: `tiny` is the embedded default encoder (`TINY_T5`, vocab 512); `small` … `xxl` use the
hyper-parameters of Google's t5-v1_1 checkpoints (gated GELU, vocab 32128). Sizes above `base` are
skipped unless `--force`, since their float32 weights alone may not fit this machine's RAM.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_V1_1 = {"vocab_size": 32128, "feed_forward_proj": "gated-gelu"}
# Encoder hyper-parameters (names of Hugging Face `T5Config`).
SIZES: dict[str, dict[str, Any] | None] = {
  "tiny": None,  # filled in from imagen_jax.text.default.TINY_T5 (vocab 512) in `size_config`.
  "small": {"d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8, "num_heads": 6, **_V1_1},
  "base": {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12, **_V1_1},
  "large": {"d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24, "num_heads": 16, **_V1_1},
  "xl": {"d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32, **_V1_1},
  "xxl": {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, **_V1_1},
}
_TINY_VOCAB = 512  # The vocabulary size `build_default_t5` trains by default.
_SAFE_SIZES = ("tiny", "small", "base")  # Run without --force.
_RESULT_PREFIX = "T5_ENCODE_RESULT "
_COLUMNS = (  # (header, key, format)
  ("size", "size", "{}"),
  ("devices", "devices_used", "{}"),
  ("mesh", "mesh", "{}"),
  ("params", "params_m", "{:.1f}M"),
  ("batch", "batch_size", "{}"),
  ("max_len", "max_length", "{}"),
  ("dtype", "dtype", "{}"),
  ("load s", "load_s", "{:.2f}"),
  ("compile s", "compile_s", "{:.2f}"),
  ("captions/s", "captions_per_s", "{:.1f}"),
  ("ms/batch", "ms_per_batch", "{:.1f}"),
  ("GFLOP/caption", "gflop_per_caption", "{:.3f}"),
  ("GFLOP/s", "gflop_per_s", "{:.1f}"),
  ("load ΔRSS MB", "load_rss_delta_mb", "{:.0f}"),
  ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
)


def size_config(size: str, dtype: str = "float32"):
  """The `T5Config` of a benchmark size with compute dtype `dtype` (parameters float32)."""
  import jax.numpy as jnp

  from imagen_jax.text.default import TINY_T5
  from imagen_jax.text.t5 import T5Config

  hp = dict(TINY_T5, vocab_size=_TINY_VOCAB) if size == "tiny" else SIZES[size]
  return T5Config(**hp, dtype=jnp.dtype(dtype))


def _param_count(config) -> int:
  """Number of parameters of `T5Encoder(config)`, from shapes alone (`jax.eval_shape`)."""
  import numpy as np

  from imagen_jax.text.weights import expected_shapes

  return int(sum(np.prod(s) for s in expected_shapes(config).values()))


def _rss_mb() -> float:
  """Current resident set size of this process in MB (Linux /proc)."""
  with open("/proc/self/statm") as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
  """Peak resident set size of this process in MB (`ru_maxrss` is in KB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(size: str, directory: str, seed: int = 0) -> None:
  """Writes a random-weight float32 T5 encoder checkpoint of `size` to `directory`."""
  import numpy as np
  from flax import traverse_util

  from imagen_jax.text.weights import expected_shapes, save_t5_encoder

  config = size_config(size)
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in expected_shapes(config).items():
    if path[-1] == "scale":  # RMSNorm
      flat[path] = np.ones(shape, np.float32)
    else:  # Kernels (in, out) scaled by 1/sqrt(in); embeddings unit normal.
      scale = 1.0 / np.sqrt(shape[0]) if path[-1] == "kernel" else 1.0
      array = rng.standard_normal(shape, dtype=np.float32)
      array *= np.float32(scale)
      flat[path] = array
  save_t5_encoder(directory, config, traverse_util.unflatten_dict(flat))


def measure(size: str, directory: str, *, batch_size: int, max_length: int, tokens: int,
            repeats: int, dtype: str, seed: int = 0, mesh: str = "") -> dict[str, Any]:
  """Loads the checkpoint in `directory`, compiles and times the encoder; returns the metrics.
  mesh: e.g. "data=-1" — the weights placed and the batch split over this process's devices as
  `imagen-jax encode` does (`text.mesh`); "" = one device."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from imagen_jax import sharding as shd
  # The exact function `TextEncoder` jits: T5Encoder(config).apply, params as an argument.
  from imagen_jax.text.encoder import _apply, local_mesh, t5_param_shardings
  from imagen_jax.text.weights import load_t5_encoder, read_config

  # Warm up what loading uses besides the weights (backend, imports, the abstract init that
  # `load_t5_encoder` traces), so the RSS delta below is what loading the weights costs.
  devices = jax.devices()
  jax.block_until_ready(jax.device_put(np.zeros(1, np.float32)))
  n_params = _param_count(read_config(directory))
  gc.collect()
  rss_before = _rss_mb()
  start = time.perf_counter()
  # As TextEncoder.from_directory(param_dtype=..., dtype=...): bfloat16 runs also store bf16.
  param_dtype = None if dtype == "float32" else jnp.dtype(dtype)
  config, params = load_t5_encoder(directory, dtype=param_dtype)
  config = dataclasses.replace(config, dtype=jnp.dtype(dtype))
  the_mesh = local_mesh(mesh) if mesh else None
  placement = t5_param_shardings(config, the_mesh) if the_mesh else None
  params = jax.block_until_ready(jax.device_put(params, placement))
  load_s = time.perf_counter() - start
  gc.collect()
  load_rss_delta = _rss_mb() - rss_before

  rng = np.random.default_rng(seed)
  tokens = min(tokens, max_length)
  ids = np.zeros((batch_size, max_length), np.int32)
  ids[:, :tokens] = rng.integers(2, config.vocab_size, (batch_size, tokens))
  ids[:, tokens - 1] = 1  # EOS
  mask = np.zeros((batch_size, max_length), bool)
  mask[:, :tokens] = True
  rows = shd.batch_sharding(the_mesh, 2) if the_mesh else None
  ids, mask = jax.device_put(ids, rows), jax.device_put(mask, rows)

  fn = jax.jit(lambda p, i, m: _apply(config, p, i, m))
  start = time.perf_counter()
  compiled = fn.lower(params, ids, mask).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))  # per device
  flops *= len(the_mesh.devices.flat) if the_mesh else 1  # the whole batch's

  out = jax.block_until_ready(compiled(params, ids, mask))  # Warm-up.
  if not bool(jnp.isfinite(out).all()):
    raise RuntimeError(f"{size}: the encoder produced non-finite values")
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, ids, mask))
    times.append(time.perf_counter() - start)
  step = statistics.median(times)
  return {
    "devices_used": len(the_mesh.devices.flat) if the_mesh else 1,
    "mesh": ",".join(f"{k}={v}" for k, v in the_mesh.shape.items() if v > 1) if the_mesh else "-",
    "size": size, "params": n_params, "params_m": n_params / 1e6, "batch_size": batch_size,
    "max_length": max_length, "tokens": tokens, "dtype": dtype, "load_s": load_s,
    "compile_s": compile_s, "times_s": times, "ms_per_batch": step * 1e3,
    "captions_per_s": batch_size / step, "gflop_per_caption": flops / batch_size / 1e9,
    "gflop_per_s": flops / step / 1e9, "load_rss_delta_mb": load_rss_delta,
    "peak_rss_mb": _peak_rss_mb(), "devices": str(devices), "cpu_count": os.cpu_count(),
    "jax_version": jax.__version__}


def format_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table of result rows."""
  cells = [[h for h, _, _ in _COLUMNS]]
  for row in rows:
    cells.append([fmt.format(row[key]) for _, key, fmt in _COLUMNS])
  widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
  line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"
  rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def _worker_command(args: argparse.Namespace, mode: str, size: str, directory: str,
                    dtype: str) -> list[str]:
  return [sys.executable, "-m", "benchmarks.t5_encode", f"--_worker={mode}", f"--sizes={size}",
          f"--_dir={directory}", f"--dtype={dtype}", f"--batch-size={args.batch_size}",
          f"--max-length={args.max_length}", f"--tokens={args.tokens}",
          f"--repeats={args.repeats}", f"--seed={args.seed}", f"--mesh={args.mesh}",
          f"--devices={args.devices}"]


def run_size(args: argparse.Namespace, size: str, dtypes: list[str]) -> list[dict[str, Any]]:
  """Builds the checkpoint of `size`, then measures each dtype in its own subprocess."""
  cwd = Path(__file__).resolve().parent.parent
  rows = []
  with tempfile.TemporaryDirectory(prefix=f"t5_encode_{size}_") as tmp:
    directory = str(Path(tmp) / "checkpoint")
    start = time.perf_counter()
    subprocess.run(_worker_command(args, "prepare", size, directory, "float32"), cwd=cwd,
                   check=True)
    mb = (Path(directory) / "model.safetensors").stat().st_size / 2**20
    print(f"[{size}] random float32 checkpoint written ({mb:.0f} MB) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    env = dict(os.environ)
    if args.devices > 1:  # virtual CPU devices of the measuring process
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={args.devices}").strip()
    for dtype in dtypes:
      proc = subprocess.run(_worker_command(args, "measure", size, directory, dtype), cwd=cwd,
                            check=True, stdout=subprocess.PIPE, text=True, env=env)
      lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT_PREFIX)]
      if not lines:
        raise RuntimeError(f"{size}/{dtype}: the worker printed no result:\n{proc.stdout}")
      row = json.loads(lines[-1][len(_RESULT_PREFIX):])
      times = ", ".join(f"{t * 1e3:.0f}" for t in row["times_s"])
      print(f"[{size} {dtype}] compile {row['compile_s']:.2f} s, batch times (ms): {times}",
            flush=True)
      rows.append(row)
  return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.t5_encode", description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--sizes", default="tiny,base",
                      help=f"comma-separated sizes among {','.join(SIZES)}")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--tokens", type=int, default=16,
                      help="real tokens per caption (the rest is padding)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
  parser.add_argument("--dtype", default="float32",
                      help="compute dtype(s), comma-separated: float32, bfloat16 (bfloat16 also "
                           "casts the weights on load, as TextEncoder's param_dtype)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--devices", type=int, default=1,
                      help="CPU devices of the measuring process (XLA host devices; on this "
                           "machine they share its cores)")
  parser.add_argument("--mesh", default="",
                      help="encode over a mesh of those devices as `imagen-jax encode` does, "
                           "e.g. data=-1 or fsdp=-1 (default: one device)")
  parser.add_argument("--force", action="store_true",
                      help="also run sizes above base (may exceed this machine's RAM)")
  parser.add_argument("--json", help="also write the result rows to this JSON file")
  parser.add_argument("--_worker", choices=("prepare", "measure"), help=argparse.SUPPRESS)
  parser.add_argument("--_dir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.size_list = [s.strip() for s in args.sizes.split(",") if s.strip()]
  args.dtype_list = [d.strip() for d in args.dtype.split(",") if d.strip()]
  for s in args.size_list:
    if s not in SIZES:
      parser.error(f"unknown size {s!r}; known: {', '.join(SIZES)}")
  for d in args.dtype_list:
    if d not in ("float32", "bfloat16"):
      parser.error(f"unknown dtype {d!r}; use float32 or bfloat16")
  if args.batch_size < 1 or args.max_length < 1 or args.tokens < 1 or args.repeats < 1:
    parser.error("--batch-size, --max-length, --tokens and --repeats must be positive")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args._worker == "prepare":
    prepare(args.size_list[0], args._dir, args.seed)
    return
  if args._worker == "measure":
    row = measure(args.size_list[0], args._dir, batch_size=args.batch_size,
                  max_length=args.max_length, tokens=args.tokens, repeats=args.repeats,
                  dtype=args.dtype_list[0], seed=args.seed, mesh=args.mesh)
    print(_RESULT_PREFIX + json.dumps(row), flush=True)
    return

  rows = []
  for size in args.size_list:
    if size not in _SAFE_SIZES and not args.force:
      params = _param_count(size_config(size))
      print(f"[{size}] skipped: {params / 1e6:.0f}M parameters ({params * 4 / 2**30:.1f} GiB in "
            "float32, about twice that while writing and loading the checkpoint); the run may "
            "exceed this machine's RAM — pass --force to run it anyway", flush=True)
      continue
    rows.extend(run_size(args, size, args.dtype_list))
  if not rows:
    return
  first = rows[0]
  print(f"\njax {first['jax_version']}, devices {first['devices']}, {first['cpu_count']} CPU "
        f"cores; {args.tokens} real tokens per caption, median of {args.repeats} calls\n")
  print(format_table(rows))
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  main()
