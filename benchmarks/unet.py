"""Speed, FLOPs and memory of the cascade's U-Nets (issue 4): `python -m benchmarks.unet`.

For each stage (`--stages`, of the `--variant`: `tiny` by default, '' for paper scale) a fresh
subprocess builds `UNet(UNetConfig.from_dict(load_config('configs/<stage>.py:<variant>').model))`
with random inputs at the stage's training shapes —

  * base64: x 64×64;
  * sr256:  x 256×256, low-res 64×64;
  * sr1024: x 256×256 crops with the matching 64×64 low-res crops (the stage trains on crops; it
    samples at 1024×1024 ← 256×256, where a forward costs ~16× the crop's FLOPs);

plus logsnr (B,), text embeddings (B, `--text-len`, text_dim) with a mask of random lengths and,
for the SR stages, aug_level (B,) — and measures:

  * the parameter count (`jax.eval_shape` of `init`, no allocation);
  * forward: the sampler's denoise function (`UNetDenoiser`), jitted with the parameters as an
    argument; compile time (lower + compile) and the median of `--repeats` timed calls after one
    warm-up call, each `block_until_ready`;
  * forward+backward: `jax.grad` of the mean squared output with respect to the parameters,
    jitted; timed the same way;
  * FLOPs per example of both, from XLA's `cost_analysis()` of the compiled executables (a
    multiply-add counts 2), and the achieved GFLOP/s;
  * the peak RSS (`ru_maxrss`) of the measuring subprocess.

Paper-scale U-Nets (0.4–2.1B parameters) are not run on this machine unless `--force` (float32
parameters, gradients and batch-8 activations at 256×256 would need tens of GB and hours). Their
parameter counts and FLOPs per example are always computed abstractly (`--abstract`, default on):
each stage is lowered and compiled for the CPU at `--abstract-batch` examples from
`jax.ShapeDtypeStruct`s — nothing is allocated or run — and, should compiling exceed
`--compile-timeout` seconds, the pre-compile HLO cost analysis (`jax.jit(...).lower(...)
.cost_analysis()`) is used instead, which the table says in its `method` column.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# stage → (config file, training resolution, low-res resolution (0: base stage)).
STAGES: dict[str, tuple[str, int, int]] = {
  "base64": ("configs/base64.py", 64, 0),
  "sr256": ("configs/sr256.py", 256, 64),
  "sr1024": ("configs/sr1024.py", 256, 64),  # 256×256 training crops of the 1024 px stage
}
_RESULT_PREFIX = "UNET_BENCH_RESULT "
_MEASURED_COLUMNS = (  # (header, key, format)
  ("stage", "stage", "{}"),
  ("variant", "variant_name", "{}"),
  ("params", "params_m", "{:.3f}M"),
  ("input", "input", "{}"),
  ("batch", "batch_size", "{}"),
  ("dtype", "dtype", "{}"),
  ("fwd compile s", "fwd_compile_s", "{:.2f}"),
  ("fwd ms", "fwd_ms", "{:.1f}"),
  ("fwd+bwd compile s", "train_compile_s", "{:.2f}"),
  ("fwd+bwd ms", "train_ms", "{:.1f}"),
  ("train ex/s", "train_examples_per_s", "{:.1f}"),
  ("GFLOP/ex fwd", "fwd_gflop_per_example", "{:.3f}"),
  ("GFLOP/ex fwd+bwd", "train_gflop_per_example", "{:.3f}"),
  ("fwd GFLOP/s", "fwd_gflop_per_s", "{:.1f}"),
  ("fwd+bwd GFLOP/s", "train_gflop_per_s", "{:.1f}"),
  ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
)
_ABSTRACT_COLUMNS = (
  ("stage", "stage", "{}"),
  ("variant", "variant_name", "{}"),
  ("params", "params_m", "{:.1f}M"),
  ("input", "input", "{}"),
  ("GFLOP/ex fwd", "fwd_gflop_per_example", "{:.1f}"),
  ("GFLOP/ex fwd+bwd", "train_gflop_per_example", "{:.1f}"),
  ("bwd/fwd", "bwd_over_fwd", "{:.2f}"),
  ("method", "method", "{}"),
  ("analysis s", "abstract_s", "{:.1f}"),
  ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
)


def _peak_rss_mb() -> float:
  """Peak resident set size of this process in MB (`ru_maxrss` is in KB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flops(cost: Any) -> float:
  """The 'flops' entry of a `cost_analysis()` result (a dict, or one per computation)."""
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def unet_config(stage: str, variant: str, dtype: str = "float32"):
  """The `UNetConfig` of `stage` ('' variant = paper scale) with compute dtype `dtype`."""
  from imagen_jax.configlib import load_config
  from imagen_jax.models.unet import UNetConfig

  path = STAGES[stage][0] + (f":{variant}" if variant else "")
  model = load_config(path).model.to_dict()
  model["dtype"] = dtype
  return UNetConfig.from_dict(model)


def _input_label(stage: str) -> str:
  _, res, lowres = STAGES[stage]
  return f"{res}²" + (f" ← {lowres}²" if lowres else "")


def _abstract_inputs(cfg, stage: str, batch_size: int, text_len: int):
  """`jax.ShapeDtypeStruct`s of (x, logsnr, cond) at the stage's training shapes."""
  import jax
  import jax.numpy as jnp

  _, res, lowres = STAGES[stage]
  s = jax.ShapeDtypeStruct
  cond = {"text": s((batch_size, text_len, cfg.text_dim), jnp.float32),
          "text_mask": s((batch_size, text_len), jnp.bool_)}
  if lowres:
    cond["lowres"] = s((batch_size, lowres, lowres, 3), jnp.float32)
    cond["aug_level"] = s((batch_size,), jnp.float32)
  return s((batch_size, res, res, 3), jnp.float32), s((batch_size,), jnp.float32), cond


def _functions(cfg):
  """The jitted forward (the sampler's denoise function) and forward+backward (parameter grads)."""
  import jax
  import jax.numpy as jnp

  from imagen_jax.models.unet import UNetDenoiser

  denoise = UNetDenoiser(cfg)
  forward = jax.jit(denoise)
  loss = lambda params, x, logsnr, cond: jnp.mean(jnp.square(denoise(params, x, logsnr, cond)))
  return forward, jax.jit(jax.grad(loss))


def _abstract_params(cfg, x, logsnr, cond):
  """The parameter tree as `jax.ShapeDtypeStruct`s (unboxed), from `jax.eval_shape` of init."""
  import flax.linen as nn
  import jax

  from imagen_jax.models.unet import UNet

  init = lambda x, logsnr, cond: UNet(cfg).init(
      jax.random.key(0), x, logsnr, cond["text"], cond["text_mask"], lowres=cond.get("lowres"),
      aug_level=cond.get("aug_level"))
  return nn.unbox(jax.eval_shape(init, x, logsnr, cond)["params"])


def _count(tree) -> int:
  import jax
  import numpy as np

  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _row_base(stage: str, variant: str, n_params: int, batch_size: int, text_len: int,
              dtype: str) -> dict[str, Any]:
  import jax

  return {"stage": stage, "variant": variant, "variant_name": variant or "paper",
          "params": n_params, "params_m": n_params / 1e6, "input": _input_label(stage),
          "batch_size": batch_size, "text_len": text_len, "dtype": dtype,
          "devices": str(jax.devices()), "cpu_count": os.cpu_count(),
          "jax_version": jax.__version__}


def measure(stage: str, variant: str, *, batch_size: int, text_len: int, repeats: int,
            dtype: str, seed: int = 0) -> dict[str, Any]:
  """Initialises the stage's U-Net, compiles and times forward and forward+backward."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from imagen_jax.models.unet import UNet

  cfg = unet_config(stage, variant, dtype)
  shapes = _abstract_inputs(cfg, stage, batch_size, text_len)
  n_params = _count(_abstract_params(cfg, *shapes))

  rng = np.random.default_rng(seed)
  normal = lambda s: rng.standard_normal(s.shape, dtype=np.float32)
  x_s, logsnr_s, cond_s = shapes
  x, logsnr = normal(x_s), rng.uniform(-10.0, 10.0, logsnr_s.shape).astype(np.float32)
  lengths = rng.integers(1, text_len + 1, batch_size)
  cond = {"text": normal(cond_s["text"]),
          "text_mask": np.arange(text_len)[None, :] < lengths[:, None]}
  if "lowres" in cond_s:
    cond["lowres"] = rng.uniform(-1.0, 1.0, cond_s["lowres"].shape).astype(np.float32)
    cond["aug_level"] = rng.uniform(0.0, 1.0, batch_size).astype(np.float32)
  x, logsnr, cond = jax.device_put((x, logsnr, cond))
  params = jax.jit(lambda x, logsnr, cond: nn.unbox(UNet(cfg).init(
      jax.random.key(seed), x, logsnr, cond["text"], cond["text_mask"],
      lowres=cond.get("lowres"), aug_level=cond.get("aug_level"))["params"]))(x, logsnr, cond)
  params = jax.block_until_ready(params)

  forward, train = _functions(cfg)
  row = _row_base(stage, variant, n_params, batch_size, text_len, dtype)
  for key, fn in (("fwd", forward), ("train", train)):
    start = time.perf_counter()
    compiled = fn.lower(params, x, logsnr, cond).compile()
    row[f"{key}_compile_s"] = time.perf_counter() - start
    flops = _flops(compiled.cost_analysis())
    out = jax.block_until_ready(compiled(params, x, logsnr, cond))  # Warm-up.
    if not all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(out)):
      raise RuntimeError(f"{stage}/{key}: non-finite output")
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, x, logsnr, cond))
      times.append(time.perf_counter() - start)
    step = statistics.median(times)
    row[f"{key}_times_s"] = times
    row[f"{key}_ms"] = step * 1e3
    row[f"{key}_examples_per_s"] = batch_size / step
    row[f"{key}_gflop_per_example"] = flops / batch_size / 1e9
    row[f"{key}_gflop_per_s"] = flops / step / 1e9
  row["peak_rss_mb"] = _peak_rss_mb()
  return row


def abstract(stage: str, variant: str, *, batch_size: int, text_len: int, dtype: str,
             compile_: bool) -> dict[str, Any]:
  """Parameter count and FLOPs per example without allocating or running anything."""
  cfg = unet_config(stage, variant, dtype)
  x, logsnr, cond = _abstract_inputs(cfg, stage, batch_size, text_len)
  params = _abstract_params(cfg, x, logsnr, cond)
  forward, train = _functions(cfg)
  row = _row_base(stage, variant, _count(params), batch_size, text_len, dtype)
  row["method"] = "XLA compiled" if compile_ else "HLO pre-compile"
  start = time.perf_counter()
  for key, fn in (("fwd", forward), ("train", train)):
    lowered = fn.lower(params, x, logsnr, cond)
    cost = lowered.compile().cost_analysis() if compile_ else lowered.cost_analysis()
    row[f"{key}_gflop_per_example"] = _flops(cost) / batch_size / 1e9
  row["abstract_s"] = time.perf_counter() - start
  row["bwd_over_fwd"] = row["train_gflop_per_example"] / row["fwd_gflop_per_example"] - 1.0
  row["peak_rss_mb"] = _peak_rss_mb()
  return row


def format_table(rows: list[dict[str, Any]], columns) -> str:
  """A Markdown table of result rows."""
  cells = [[h for h, _, _ in columns]]
  for row in rows:
    cells.append([fmt.format(row[key]) for _, key, fmt in columns])
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"
  rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def _worker_command(args: argparse.Namespace, mode: str, stage: str, variant: str) -> list[str]:
  batch = args.abstract_batch if mode != "measure" else args.batch_size
  return [sys.executable, "-m", "benchmarks.unet", f"--_worker={mode}", f"--stages={stage}",
          f"--variant={variant}", f"--batch-size={batch}", f"--text-len={args.text_len}",
          f"--repeats={args.repeats}", f"--dtype={args.dtype}", f"--seed={args.seed}"]


def _run_worker(args: argparse.Namespace, mode: str, stage: str, variant: str,
                timeout: float | None = None) -> dict[str, Any]:
  cwd = Path(__file__).resolve().parent.parent
  proc = subprocess.run(_worker_command(args, mode, stage, variant), cwd=cwd, check=True,
                        stdout=subprocess.PIPE, text=True, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT_PREFIX)]
  if not lines:
    raise RuntimeError(f"{stage}/{mode}: the worker printed no result:\n{proc.stdout}")
  return json.loads(lines[-1][len(_RESULT_PREFIX):])


def run_abstract(args: argparse.Namespace, stage: str, variant: str) -> dict[str, Any]:
  """Compiled cost analysis within `--compile-timeout`, else the pre-compile HLO one."""
  try:
    return _run_worker(args, "compile", stage, variant, timeout=args.compile_timeout)
  except subprocess.TimeoutExpired:
    print(f"[{stage} {variant or 'paper'}] compiling took over {args.compile_timeout:.0f} s; "
          "using the pre-compile HLO cost analysis", flush=True)
    return _run_worker(args, "hlo", stage, variant)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.unet", description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--stages", default="base64,sr256,sr1024",
                      help=f"comma-separated stages among {','.join(STAGES)}")
  parser.add_argument("--variant", default="tiny",
                      help="config variant to run: 'tiny', or '' for paper scale (needs --force)")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--text-len", type=int, default=16, help="text tokens (mask: random lengths)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--force", action="store_true",
                      help="run the paper-scale U-Nets (--variant '') on this machine anyway")
  parser.add_argument("--abstract", action=argparse.BooleanOptionalAction, default=True,
                      help="also report the paper-scale parameter counts and FLOPs (no running)")
  parser.add_argument("--abstract-batch", type=int, default=1,
                      help="batch size the paper-scale U-Nets are lowered at")
  parser.add_argument("--compile-timeout", type=float, default=60.0,
                      help="seconds allowed to compile a paper-scale U-Net before falling back to "
                           "the pre-compile HLO cost analysis")
  parser.add_argument("--json", help="also write the result rows to this JSON file")
  parser.add_argument("--_worker", choices=("measure", "compile", "hlo"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
  for s in args.stage_list:
    if s not in STAGES:
      parser.error(f"unknown stage {s!r}; known: {', '.join(STAGES)}")
  if args.variant not in ("tiny", ""):
    parser.error(f"unknown variant {args.variant!r}; use 'tiny' or '' (paper scale)")
  if min(args.batch_size, args.text_len, args.repeats, args.abstract_batch) < 1:
    parser.error("--batch-size, --text-len, --repeats and --abstract-batch must be positive")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args._worker:
    stage = args.stage_list[0]
    if args._worker == "measure":
      row = measure(stage, args.variant, batch_size=args.batch_size, text_len=args.text_len,
                    repeats=args.repeats, dtype=args.dtype, seed=args.seed)
    else:
      row = abstract(stage, args.variant, batch_size=args.batch_size, text_len=args.text_len,
                     dtype=args.dtype, compile_=args._worker == "compile")
    print(_RESULT_PREFIX + json.dumps(row), flush=True)
    return

  start, load_before = time.perf_counter(), os.getloadavg()[0]
  measured, abstracts = [], []
  for stage in args.stage_list:
    if args.variant == "" and not args.force:
      print(f"[{stage} paper] not run: paper-scale U-Nets (0.4–2.1B parameters) need tens of GB "
            "and hours per step on this CPU — pass --force to run anyway (--abstract reports "
            "their parameters and FLOPs without running them)", flush=True)
      continue
    row = _run_worker(args, "measure", stage, args.variant)
    fwd = ", ".join(f"{t * 1e3:.0f}" for t in row["fwd_times_s"])
    train = ", ".join(f"{t * 1e3:.0f}" for t in row["train_times_s"])
    print(f"[{stage} {row['variant_name']}] forward (ms): {fwd}; forward+backward (ms): {train}",
          flush=True)
    measured.append(row)
  if args.abstract:
    for stage in args.stage_list:
      row = run_abstract(args, stage, "")
      print(f"[{stage} paper] {row['params_m']:.1f}M parameters, {row['method']} cost analysis in "
            f"{row['abstract_s']:.1f} s", flush=True)
      abstracts.append(row)
  wall = time.perf_counter() - start

  first = (measured or abstracts or [None])[0]
  if first is None:
    return
  print(f"\njax {first['jax_version']}, devices {first['devices']}, {first['cpu_count']} CPU "
        f"cores ({platform.processor() or platform.machine()}); text length {args.text_len}; "
        f"median of {args.repeats} calls; total wall time {wall:.0f} s; 1-min load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes compete for "
        "the cores if it exceeds ~1)\n")
  if measured:
    print(format_table(measured, _MEASURED_COLUMNS))
  if abstracts:
    print(f"\nPaper scale, abstract (lowered at batch {args.abstract_batch}, {args.dtype}, "
          "nothing run):\n")
    print(format_table(abstracts, _ABSTRACT_COLUMNS))
  if args.json:
    Path(args.json).write_text(json.dumps({"measured": measured, "abstract": abstracts},
                                          indent=2) + "\n")


if __name__ == "__main__":
  main()
