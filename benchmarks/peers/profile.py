"""Where BENCH-A's time goes in ours: `python -m benchmarks.peers.profile {convs,ablate,trace}`.

    python -m benchmarks.peers.profile convs              # conv kernels: YNNPACK vs Eigen
    python -m benchmarks.peers.profile ablate --case forward --rounds 3
    python -m benchmarks.peers.profile trace --case train # jax.profiler, time by kind of op

`convs`: each 3×3 convolution shape of BENCH-A (batch 16) — forward, input gradient and kernel
gradient, jitted alone — once with jaxlib's default (convolutions in YNNPACK) and once with
`imagen_jax.xla_cpu`'s flag (convolutions in XLA's Eigen kernels), each in its own process.

`ablate`: our BENCH-A U-Net's forward (or train step) with parts taken out, to see what they cost:
`full`; `no-groupnorm` (GroupNorm → its affine map alone); `no-silu` (SiLU → identity);
`no-attention` (the attention blocks → identity); `convs-only` (all three). Each variant runs in
its own process (the parts are swapped in `imagen_jax.models.layers` before tracing); variants
take turns round by round, so a slow moment of the machine hits all of them alike. The
FLOPs column says what is left of the work.

`trace`: one case under `jax.profiler`, its events joined with the compiled HLO (dumped by XLA in
the same process) and summed by kind of op: matmuls and reductions in YNNPACK, XLA's elementwise
loop fusions, layout transposes and copies, ... XLA:CPU runs a program's ops on its thread pool;
a convolution's event covers only its dispatch, its work runs in Eigen's pool tasks, which are not
traced. So the table gives each kind's thread time per call, and the rest of the pool's time
(threads × wall − traced) as "untraced": the convolutions' work, plus any idle time.

All print markdown tables; times are the median of `--calls` calls after 2 warm-up calls, and
for `ablate` the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.timing import median_seconds

ROOT = Path(__file__).resolve().parents[2]
YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
VARIANTS = ("full", "no-groupnorm", "no-silu", "no-attention", "convs-only")
CONV_SHAPES = ((32, 64, 64), (32, 192, 64), (16, 128, 128), (16, 384, 128), (8, 256, 256),
               (8, 512, 256))


# --- convs ---------------------------------------------------------------------------------------


def conv_worker(calls: int) -> list[dict]:
  import jax
  import numpy as np

  dn = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
  rows = []
  for size, cin, cout in CONV_SHAPES:
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((16, size, size, cin), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.05)
    dy = jax.numpy.asarray(rng.standard_normal((16, size, size, cout), np.float32))
    flops = 2 * 16 * size * size * cin * cout * 9
    fns = {"forward": (jax.jit(conv), (x, w)),
           "input grad": (jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
                          (x, w, dy)),
           "kernel grad": (jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
                           (x, w, dy))}
    for what, (fn, args) in fns.items():
      t = median_seconds(fn, *args, calls=calls)
      rows.append({"shape": f"{size}² {cin}→{cout}", "op": what, "ms": t * 1e3,
                   "gflop_s": flops / t / 1e9})
  return rows


def run_convs(args) -> None:
  results = {}
  for backend, flags in (("YNNPACK (jaxlib default)", ""), ("Eigen (imagen_jax default)",
                                                             YNN_CONV_FLAG)):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags,
           "IMAGEN_JAX_XLA_CPU_DEFAULTS": "0"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.peers.profile", "_conv_worker",
                          "--calls", str(args.calls)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    results[backend] = json.loads(out.strip().splitlines()[-1])
  names = list(results)
  print(f"| shape (batch 16) | op | {names[0]} ms | GFLOP/s | {names[1]} ms | GFLOP/s | speed-up |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for a, b in zip(*results.values()):
    print(f"| {a['shape']} | {a['op']} | {a['ms']:.1f} | {a['gflop_s']:.0f} | {b['ms']:.1f} | "
          f"{b['gflop_s']:.0f} | {a['ms'] / b['ms']:.2f}× |")


# --- ablate --------------------------------------------------------------------------------------


def _patch(variant: str) -> None:
  """Swap parts of the U-Net for cheaper stand-ins (this process only, before tracing)."""
  import flax.linen as nn

  from imagen_jax.models import layers, unet

  if variant in ("no-groupnorm", "convs-only"):
    class AffineOnly(layers.GroupNorm):  # GroupNorm's parameters and affine map, no statistics
      @nn.compact
      def __call__(self, x):
        scale, bias = layers._GroupNormParams(x.shape[-1], self.param_dtype, name="GroupNorm_0")()
        return (x * scale + bias).astype(self.dtype)

    layers.GroupNorm = unet.GroupNorm = AffineOnly
  if variant in ("no-silu", "convs-only"):
    class NoSilu:  # `nn` as layers.py and unet.py see it, with SiLU as the identity
      def __getattr__(self, name):
        return (lambda x: x) if name == "silu" else getattr(nn, name)

    layers.nn = unet.nn = NoSilu()
  if variant in ("no-attention", "convs-only"):
    class Identity(layers.AttentionBlock):  # same fields as the real block, no parameters
      def __call__(self, x, text, mask):
        return x

    layers.AttentionBlock = unet.AttentionBlock = Identity


def ablate_worker(case: str, variant: str, calls: int) -> dict:
  _patch(variant)
  from benchmarks.peers import ours

  call, info = ours.build(case)
  return {"variant": variant, "ms": median_seconds(call, calls=calls) * 1e3,
          "gflop": info["flops"] / 1e9}


def run_ablate(args) -> None:
  variants = args.variants.split(",")
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f"unknown variant {v!r}; choose among {','.join(VARIANTS)}")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  per: dict[str, list[dict]] = {v: [] for v in variants}
  for r in range(args.rounds):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      out = subprocess.run([sys.executable, "-m", "benchmarks.peers.profile", "_ablate_worker",
                            "--case", args.case, "--variant", v, "--calls", str(args.calls)],
                           cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
      per[v].append(json.loads(out.strip().splitlines()[-1]))
      print(f"[round {r}] {v}: {per[v][-1]['ms']:.0f} ms", file=sys.stderr, flush=True)
  full = statistics.median(x["ms"] for x in per[variants[0]])
  print(f"| {args.case} variant | GFLOP | median ms (over {args.rounds} rounds) | vs "
        f"{variants[0]} | GFLOP/s |")
  print("|---|---:|---:|---:|---:|")
  for v in variants:
    ms = statistics.median(x["ms"] for x in per[v])
    gflop = per[v][0]["gflop"]
    print(f"| {v} | {gflop:.1f} | {ms:.0f} | {ms - full:+.0f} ms | {gflop / ms * 1e3:.0f} |")


# --- trace ---------------------------------------------------------------------------------------

TRACE_SKIP = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ", "PjitFunction",
              "CommonPjRtLoadedExecutable", "$")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name → (shape, op_name) for the instructions that carry metadata."""
  import re

  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = (\S+) [^\n]*?op_name=\"([^\"]+)\"", hlo_text,
                       re.MULTILINE):
    out[m.group(1)] = (m.group(2).split("{")[0], m.group(3))
  return out


def op_kind(event_name: str, ops: dict[str, tuple[str, str]]) -> str:
  """The kind of op a trace event of XLA:CPU ran (see the module docstring)."""
  import re

  kind = re.sub(r"\.\d+$", "", event_name)
  path = ops.get(event_name, ("", ""))[1]
  op = path.rsplit("/", 1)[-1]
  if kind.startswith(("convolution", "conv_general_dilated")):
    return "convolution dispatch (work untraced)"
  if kind == "ynn_fusion":
    if re.search(r"/(norm|norm_\d+|norm_out|self_norm)/", path):
      return "GroupNorm statistics (YNNPACK sums, group matmuls)"
    if op == "dot_general":
      return "matmuls (YNNPACK)"
    return "reductions (YNNPACK)" if op.startswith("reduce") else "other YNNPACK fusions"
  if kind == "dot":
    return "matmuls (XLA)"
  if kind.startswith(("transpose", "copy", "wrapped_copy")):
    return "transposes and copies"
  if kind in ("sort", "cond", "while", "call"):
    return kind
  return "elementwise and other loop fusions"


def summarize_trace(events: list[dict], thread_names: dict[Any, str], ops: dict, calls: int,
                    wall_ms: float) -> dict:
  """Per kind of op: events and thread-ms per call; the pool's untraced remainder."""
  import collections

  ms = collections.Counter()
  count = collections.Counter()
  pool = set()
  for e in events:
    if "tid" not in e:  # process-level metadata
      continue
    thread = thread_names.get((e["pid"], e["tid"]), "")
    if "Eigen" in thread:
      pool.add((e["pid"], e["tid"]))
    if e.get("ph") != "X" or e["name"].startswith(TRACE_SKIP) or thread == "python":
      continue
    kind = op_kind(e["name"], ops)
    ms[kind] += e["dur"] / 1e3 / calls
    count[kind] += 1 / calls
  threads = max(len(pool), 1)
  traced = sum(ms.values())
  rows = [{"kind": k, "events": round(count[k]), "thread_ms": v} for k, v in ms.most_common()]
  rows.append({"kind": "untraced (convolution work in Eigen's pool, idle)", "events": 0,
               "thread_ms": max(threads * wall_ms - traced, 0.0)})
  return {"wall_ms": wall_ms, "threads": threads, "rows": rows}


def trace_worker(case: str, layout: str, calls: int, dump_dir: str) -> dict:
  import glob
  import gzip
  import tempfile

  import jax

  from benchmarks.peers import ours

  call, info = ours.build(case, layout=layout)
  wall = median_seconds(call, calls=calls)
  trace_dir = tempfile.mkdtemp(prefix="bench-trace-")
  jax.profiler.start_trace(trace_dir)
  for _ in range(calls):
    call()
  jax.profiler.stop_trace()
  trace = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
  shutil.rmtree(trace_dir, ignore_errors=True)
  events = trace["traceEvents"]
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  # The traced program is the dumped module whose instruction names the events match best (the
  # dump also holds the initialiser's and other small programs).
  traced = {e["name"] for e in events if e.get("ph") == "X"}
  dumps = glob.glob(f"{dump_dir}/*after_optimizations.txt")
  ops = max((hlo_ops(Path(f).read_text()) for f in dumps), key=lambda o: len(traced & o.keys()),
            default={})
  out = summarize_trace(events, names, ops, calls, wall * 1e3)
  out.update(case=case, layout=layout, gflop=info["flops"] / 1e9)
  return out


def run_trace(args) -> None:
  import tempfile

  dump = tempfile.mkdtemp(prefix="bench-hlo-")
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.peers.profile", "_trace_worker",
                         "--case", args.case, "--layout", args.layout, "--calls", str(args.calls),
                         "--dump", dump], cwd=ROOT, env=env, capture_output=True, text=True)
  shutil.rmtree(dump, ignore_errors=True)
  if proc.returncode != 0:
    raise SystemExit(f"the trace worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  pool = r["threads"] * r["wall_ms"]
  print(f"{r['case']} ({r['layout']}): {r['wall_ms']:.0f} ms per call (median of {args.calls}), "
        f"{r['gflop']:.1f} GFLOP, {r['threads']} pool threads = {pool:.0f} thread-ms per call")
  print()
  print("| kind of op | events per call | thread-ms per call | share of the pool |")
  print("|---|---:|---:|---:|")
  for row in r["rows"]:
    print(f"| {row['kind']} | {row['events']} | {row['thread_ms']:.1f} | "
          f"{row['thread_ms'] / pool:.0%} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.profile",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  convs = sub.add_parser("convs", help="conv kernels: YNNPACK vs Eigen")
  convs.add_argument("--calls", type=int, default=10)
  ablate = sub.add_parser("ablate", help="the U-Net with parts taken out")
  ablate.add_argument("--case", choices=("forward", "train", "cfg_step"), default="forward")
  ablate.add_argument("--variants", default=",".join(VARIANTS))
  ablate.add_argument("--rounds", type=int, default=3)
  ablate.add_argument("--calls", type=int, default=8)
  trace = sub.add_parser("trace", help="jax.profiler: thread time by kind of op")
  trace.add_argument("--case", choices=("forward", "train", "cfg_step"), default="train")
  trace.add_argument("--layout", choices=("adm", "efficient"), default="adm")
  trace.add_argument("--calls", type=int, default=3)
  tw = sub.add_parser("_trace_worker")
  tw.add_argument("--case", required=True)
  tw.add_argument("--layout", default="adm")
  tw.add_argument("--calls", type=int, default=3)
  tw.add_argument("--dump", required=True)
  worker = sub.add_parser("_conv_worker")
  worker.add_argument("--calls", type=int, default=10)
  aw = sub.add_parser("_ablate_worker")
  aw.add_argument("--case", required=True)
  aw.add_argument("--variant", required=True)
  aw.add_argument("--calls", type=int, default=8)
  args = parser.parse_args(argv)
  if args.command == "convs":
    run_convs(args)
  elif args.command == "ablate":
    run_ablate(args)
  elif args.command == "trace":
    run_trace(args)
  elif args.command == "_trace_worker":
    print(json.dumps(trace_worker(args.case, args.layout, args.calls, args.dump)))
  elif args.command == "_conv_worker":
    print(json.dumps(conv_worker(args.calls)))
  else:
    print(json.dumps(ablate_worker(args.case, args.variant, args.calls)))


if __name__ == "__main__":
  main()
