"""The side-by-side run: `python -m benchmarks.peers` (from the bench environment, `make bench`).

For each group of entries (see `spec.build_groups`) the harness starts one worker process per
entry (`benchmarks.peers.worker`), lets each set up (import, build, compile, count FLOPs — not
timed) and warm up (`--warmup` calls, discarded), then runs `--reps` repetitions; in each
repetition every worker makes `--inner` timed calls, one worker after the other, the starting
worker rotating from one repetition to the next (ours, peer, ... / peer, ..., ours / ...). Idle
workers are blocked on a pipe, so the frameworks alternate on the same cores rather than compete.
A repetition's figure is the median of its calls; the table gives the median (and the minimum)
over repetitions, the ratio to the group's first entry (ours), FLOPs per call, GFLOP/s and its
share of the fp32 roof measured in the same run (the `roof` group), and each worker's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import spec, stats
from benchmarks.peers.peer_env import offline_env, offline_hub_cache

ROOT = Path(__file__).resolve().parents[2]
PEER_MODULES = {"imagen-pytorch": "imagen_pytorch", "diffusers": "diffusers"}


class WorkerError(RuntimeError):
  pass


class Worker:
  """A running `benchmarks.peers.worker` process and its line protocol."""

  def __init__(self, entry: spec.Entry, env: dict[str, str], log_path: Path,
               python: str = sys.executable):
    self.entry = entry
    self.log_path = log_path
    self._log = log_path.open("w")
    self.proc = subprocess.Popen(
        [python, "-m", "benchmarks.peers.worker", json.dumps(entry.to_json())], cwd=ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
    msg = self._read()
    self.info: dict[str, Any] = msg["info"]

  def _log_tail(self, lines: int = 30) -> str:
    self._log.flush()
    try:
      return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
      return ""

  def _read(self) -> dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait(timeout=30)
      raise WorkerError(f"{self.entry.label}: the worker exited (code {code}); the end of its log "
                        f"{self.log_path}:\n{self._log_tail()}")
    msg = json.loads(line)
    if "error" in msg:
      raise WorkerError(f"{self.entry.label}: {msg['error']}")
    return msg

  def request(self, command: str) -> dict[str, Any]:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def run(self, n: int) -> list[float]:
    return self.request(f"run {n}")["times"]

  def stats(self) -> dict[str, float]:
    return self.request("stats")

  def close(self) -> None:
    try:
      if self.proc.poll() is None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      self.proc.kill()
      self.proc.wait()
    finally:
      self._log.close()


def rotation(n: int, rep: int) -> list[int]:
  """The order of `n` workers in repetition `rep`: the start rotates by one each repetition."""
  k = rep % n if n else 0
  return list(range(k, n)) + list(range(k))


def measure_group(group: spec.Group, args: argparse.Namespace, env: dict[str, str],
                  log_dir: Path) -> list[dict[str, Any]]:
  """Set up, warm up and alternate the group's workers; the group's result dicts."""
  inner = args.inner or spec.CASES[group.case][1]
  full_sample = group.case.startswith("sample")
  reps, warmup = args.reps, args.warmup
  if full_sample:  # a 1000-step sample takes minutes: fewer of them, never more than asked
    reps = min(reps, args.sample_reps or reps)
    warmup = min(warmup, args.sample_warmup)
  workers: list[Worker] = []
  try:
    for entry in group.entries:
      slug = "".join(c if c.isalnum() else "_" for c in f"{group.case}_{entry.label}")
      w = Worker(entry, env, log_dir / f"{slug}.log")
      workers.append(w)
      flops = w.info.get("flops")
      print(f"[{group.name}] {entry.label}: ready — import {w.info['import_s']:.1f} s, setup "
            f"{w.info['setup_s']:.1f} s"
            + (f", {w.info['params'] / 1e6:.2f}M parameters" if w.info.get("params") else "")
            + (f", {flops / 1e9:.1f} GFLOP/call" if flops else ""), flush=True)
    for w in workers:
      if warmup:
        warm = w.run(warmup)
        print(f"[{group.name}] {w.entry.label}: warm-up (s): "
              + ", ".join(f"{t:.3f}" for t in warm), flush=True)
    times: list[list[list[float]]] = [[] for _ in workers]
    for rep in range(reps):
      for i in rotation(len(workers), rep):
        time.sleep(args.settle)
        times[i].append(workers[i].run(inner))
    results = []
    for w, t in zip(workers, times):
      row = {"group": group.name, "case": group.case, "label": w.entry.label,
             "entry": w.entry.to_json(), "info": w.info, "times": t, "inner": inner,
             "params": w.info.get("params"), "flops": w.info.get("flops"),
             "xla_flops": w.info.get("xla_flops"), **stats.summarise(t), **w.stats()}
      print(f"[{group.name}] {w.entry.label}: per repetition (s): "
            + ", ".join(f"{stats.median(r):.3f}" for r in t), flush=True)
      results.append(row)
    return results
  finally:
    for w in workers:
      w.close()


def available_peers(requested: list[str]) -> list[str]:
  out = []
  for p in requested:
    if p not in PEER_MODULES:
      raise SystemExit(f"unknown peer {p!r}; known: {', '.join(PEER_MODULES)}")
    if importlib.util.find_spec(PEER_MODULES[p]) is None:
      print(f"[peers] {p} is not installed in {sys.prefix}: skipped (`make bench` installs the "
            "peers into .venv-bench)", flush=True)
    else:
      out.append(p)
  return out


def machine() -> dict[str, Any]:
  model = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
          "executable": sys.executable}


def roof_gflops(results: list[dict[str, Any]], key: str = "median_s") -> float | None:
  """The best matmul rate: of the medians (the roof the shares use: medians against medians),
  or with key='min_s' of the fastest repetitions (the machine's peak in its best moment)."""
  rates = [stats.gflops_per_s(r["flops"], r[key]) for r in results if r["case"] == "roof"]
  rates = [r for r in rates if not math.isnan(r)]
  return max(rates) if rates else None


def versions(results: list[dict[str, Any]]) -> dict[str, str]:
  keys = ("jax", "torch", "diffusers", "imagen_pytorch", "numpy", "torch_threads", "torchvision",
          "attention_processor")
  out = {}
  for r in results:
    for k in keys:
      if k in r["info"]:
        out[k] = str(r["info"][k])
  return out


def targets(rows: list[dict[str, Any]]) -> list[str]:
  """The issue's targets: ≥ 1.5× faster train steps and ≥ 2× faster guided steps than
  imagen-pytorch — for each of our entries of the group (the like-for-like one first)."""
  out = []
  for case, target in (("train", 1.5), ("cfg_step", 2.0)):
    group = [r for r in rows if r["case"] == case]
    peer = [r for r in group if r["entry"]["framework"] == "imagen-pytorch"]
    if not peer:
      continue
    for r in group:
      if r["entry"]["framework"] != "ours":
        continue
      s = stats.ratio(peer[0]["median_s"], r["median_s"])
      verdict = "met" if s >= target else "NOT met"
      out.append(f"{case}: {r['label']} is {s:.2f}× as fast as imagen-pytorch (target ≥ "
                 f"{target}×: {verdict})")
  return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--cases", default=",".join(spec.DEFAULT_CASES),
                      help=f"comma-separated, among {','.join(spec.CASES)}")
  parser.add_argument("--peers", default="imagen-pytorch,diffusers",
                      help="comma-separated peers; those not installed are skipped")
  parser.add_argument("--reps", type=int, default=5, help="timed repetitions per entry")
  parser.add_argument("--warmup", type=int, default=2, help="discarded calls per entry first")
  parser.add_argument("--sample-reps", type=int, default=3,
                      help="at most this many repetitions of the full-sample cases (0: --reps); "
                           "a 1000-step sample takes minutes")
  parser.add_argument("--sample-warmup", type=int, default=1,
                      help="at most this many warm-up calls of the full-sample cases")
  parser.add_argument("--inner", type=int, default=0,
                      help="timed calls per repetition (0: the case's default)")
  parser.add_argument("--settle", type=float, default=0.3,
                      help="seconds of idle before each timed call batch (lets threads park)")
  parser.add_argument("--imagen-steps", type=int, default=spec.IMAGEN_DEFAULT_STEPS,
                      help="steps of the imagen-pytorch-default full sample (its default: 1000)")
  parser.add_argument("--diffusers-steps", type=int, default=spec.DIFFUSERS_DEFAULT_STEPS,
                      help="steps of the diffusers-default full sample (its pipelines': 50)")
  parser.add_argument("--ours-steps", type=int, default=spec.OURS_DEFAULT_STEPS,
                      help="steps of the full sample at our default (DPM-Solver++(2M))")
  parser.add_argument("--json", help="also write every measurement to this JSON file")
  parser.add_argument("--log-dir", help="worker logs (stderr) go here (default: a temporary dir)")
  args = parser.parse_args(argv)
  args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
  for c in args.case_list:
    if c not in spec.CASES:
      parser.error(f"unknown case {c!r}; known: {', '.join(spec.CASES)}")
  args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
  if args.reps < 1 or min(args.warmup, args.inner, args.sample_reps, args.sample_warmup) < 0:
    parser.error("--reps must be positive; --warmup, --inner and the --sample-* options "
                 "non-negative")
  if min(args.imagen_steps, args.diffusers_steps, args.ours_steps) < 1:
    parser.error("step counts must be positive")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  command = "python -m benchmarks.peers " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  started = datetime.datetime.now(datetime.UTC)
  peers = available_peers(args.peer_list)
  groups = spec.build_groups(args.case_list, peers, {
      "imagen-pytorch": args.imagen_steps, "diffusers": args.diffusers_steps,
      "ours": args.ours_steps})
  tmp = Path(tempfile.mkdtemp(prefix="benchmarks-peers-"))
  log_dir = Path(args.log_dir) if args.log_dir else tmp / "logs"
  log_dir.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
         **offline_env(offline_hub_cache(tmp / "hf-hub"))}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  load_before = os.getloadavg()
  print(f"[peers] {started:%Y-%m-%d %H:%M:%S} UTC; {len(groups)} groups; reps {args.reps}, "
        f"warm-up {args.warmup}; worker logs in {log_dir}", flush=True)
  wall = time.perf_counter()
  results: list[dict[str, Any]] = []
  for group in groups:
    results.extend(measure_group(group, args, env, log_dir))
  wall = time.perf_counter() - wall

  roof = roof_gflops(results)
  rows = []
  for group in groups:
    entries = [r for r in results if r["group"] == group.name]
    rows.extend(stats.group_rows(entries, roof, ratios=group.case != "roof"))
  m = machine()
  roof_line = (f"fp32 roof: {roof:.1f} GFLOP/s (the best matmul median; fastest repetition "
               f"{roof_gflops(results, 'min_s'):.1f})" if roof
               else "fp32 roof: not measured (add 'roof' to --cases)")
  print(f"\nDate: {started:%a %b %d %H:%M:%S} UTC {started:%Y}\nCommand: {command}\n"
        f"Machine: {m['cores']} cores ({m['cpu']}); Python {m['python']} ({m['executable']}); "
        + ", ".join(f"{k} {v}" for k, v in versions(results).items()) + "\n" + roof_line)
  print(f"Total wall time {wall:.0f} s; 1-min load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (other processes compete for the cores above ~1)\n")
  print(stats.format_table(rows))
  print("\nratio: the group's first entry's median time / this entry's (ours/peer: < 1 means ours "
        "is faster); speed-up: its inverse. GFLOP/call: matmul + convolution + attention FLOPs "
        "(FlopCounterMode for PyTorch, the jaxpr for ours; benchmarks/peers/flops.py). Peak RSS: "
        "the worker process's high-water mark; Δ: above its RSS after importing the framework.")
  for r in rows:
    if r.get("xla_flops"):
      print(f"  {r['group']} / {r['label']}: XLA cost analysis {r['xla_flops'] / 1e9:.1f} GFLOP "
            "(counts elementwise work, and only in-bounds taps of padded convolutions)")
  for line in targets(rows):
    print("Target — " + line)
  if load_before[0] > 1.5:
    print(f"WARNING: the 1-min load average was {load_before[0]:.2f} before this run: other "
          "processes shared the cores, so these times are contended (PyTorch's thread pool "
          "suffers more from that than XLA's) and are not results.")
  if args.json:
    Path(args.json).write_text(json.dumps({
        "date": started.isoformat(), "command": command, "machine": m, "roof_gflops": roof,
        "load_before": load_before, "load_after": os.getloadavg(), "wall_s": wall,
        "rows": rows}, indent=2, default=str) + "\n")
