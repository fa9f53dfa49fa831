"""One measured entry in a process of its own: `python -m benchmarks.peers.worker '<entry json>'`.

The worker imports its framework (then records the baseline RSS), builds the case — model,
inputs, compilation, FLOP count: nothing of this is timed — and answers the harness on its
original stdout, one JSON line per command read from stdin:

    (on start)  {"ready": true, "info": {...}}      or {"error": "..."}
    run N       {"times": [seconds × N]}             N calls, each run to completion
    stats       {"peak_rss_mb": ..., "baseline_rss_mb": ..., "rss_mb": ...}
    quit        (exits)

Everything libraries print goes to stderr (file descriptor 1 is pointed at 2), so the protocol
cannot be interleaved with it. Between commands the worker is blocked on stdin and uses no CPU,
so the harness can alternate workers of different frameworks on the same cores.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

from benchmarks.peers.spec import Entry


def rss_mb() -> float:
  """Current resident set size of this process in MB (Linux /proc)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
  """Peak RSS of this process in MB (`ru_maxrss` is in KB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preload(framework: str) -> None:
  """Import the framework, so that the baseline RSS taken next includes it."""
  if framework in ("ours", "jax"):
    import flax.linen  # noqa: F401
    import jax

    import imagen_jax.diffusion
    import imagen_jax.models.unet
    import imagen_jax.train.step  # noqa: F401

    jax.devices()
  elif framework == "imagen-pytorch":
    from benchmarks.peers.peer_env import import_imagen_pytorch

    import_imagen_pytorch()
  elif framework == "diffusers":
    import diffusers  # noqa: F401
    from diffusers import UNet2DConditionModel  # noqa: F401
  elif framework == "torch":
    import torch  # noqa: F401


def build(entry: Entry):
  if entry.case == "roof":
    from benchmarks.peers import roof

    return roof.build(entry.framework, **entry.kwargs)
  if entry.framework == "ours":
    from benchmarks.peers import ours as module
  elif entry.framework == "imagen-pytorch":
    from benchmarks.peers import imagen_pt as module
  elif entry.framework == "diffusers":
    from benchmarks.peers import diffusers_pt as module
  else:
    raise ValueError(f"unknown framework {entry.framework!r}")
  return module.build(entry.case, **entry.kwargs)


def serve(entry: Entry, out) -> None:
  def send(obj) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()

  try:
    start = time.perf_counter()
    preload(entry.framework)
    baseline = rss_mb()
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    call, info = build(entry)
    info.update(import_s=import_s, setup_s=time.perf_counter() - start, pid=os.getpid())
  except Exception:  # noqa: BLE001  (reported to the harness, which raises it)
    send({"error": traceback.format_exc()})
    return
  send({"ready": True, "info": info})
  for line in sys.stdin:
    command = line.split()
    if not command:
      continue
    try:
      if command[0] == "run":
        times = []
        for _ in range(int(command[1])):
          t = time.perf_counter()
          call()
          times.append(time.perf_counter() - t)
        send({"times": times})
      elif command[0] == "stats":
        send({"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline, "rss_mb": rss_mb()})
      elif command[0] == "quit":
        return
      else:
        send({"error": f"unknown command {line.strip()!r}"})
    except Exception:  # noqa: BLE001  (reported to the harness, which raises it)
      send({"error": traceback.format_exc()})


def main() -> None:
  entry = Entry.from_json(json.loads(sys.argv[1]))
  out = os.fdopen(os.dup(1), "w")  # the protocol keeps the original stdout ...
  os.dup2(2, 1)  # ... and whatever libraries print goes to stderr
  sys.stdout = os.fdopen(1, "w", buffering=1)
  serve(entry, out)


if __name__ == "__main__":
  main()
