"""Encoding captions over a mesh and over several processes (issue 20): the cache is the one a
single device writes, and each process resumes its own unfinished shards."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from imagen_jax.text.cache import EmbeddingCache
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encode import encode_captions
from imagen_jax.text.encoder import TextEncoder, local_mesh
from imagen_jax.text.sources import CaptionFile

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = [f"a {size} {colour} {shape} number {i}" for i, (size, colour, shape) in enumerate(
    (s, c, h) for s in ("small", "large") for c in ("red", "green", "blue", "yellow")
    for h in ("circle", "square", "triangle"))]  # 24 captions
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  return build_default_t5(tmp_path_factory.mktemp("t5") / "default_t5", CAPTIONS)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
  path = tmp_path_factory.mktemp("caps") / "caps.jsonl"
  path.write_text("".join(json.dumps({"id": f"ex{i}", "caption": c}) + "\n"
                          for i, c in enumerate(CAPTIONS)))
  return path


def _encode(t5_dir, captions, cache, batch_size, mesh=None, shard_size=5):
  encoder = TextEncoder.from_directory(t5_dir, max_length=MAX_LENGTH, batch_size=batch_size,
                                       mesh=mesh)
  encode_captions(CaptionFile(str(captions)), encoder, cache, storage_dtype="float32",
                  shard_size=shard_size, progress=False)
  return EmbeddingCache(cache)


def _all(cache):
  rows = list(cache)
  return [r["id"] for r in rows], np.stack([r["embeddings"] for r in rows])


def test_mesh_placement_and_cache_match_one_device(t5_dir, captions, tmp_path):
  assert len(jax.local_devices()) == 8
  # one device, one caption per call: what each of 8 data-parallel devices computes
  ids, ref = _all(_encode(t5_dir, captions, tmp_path / "one", batch_size=1))
  data = _encode(t5_dir, captions, tmp_path / "data", batch_size=8, mesh=local_mesh("data=-1"))
  got_ids, got = _all(data)
  assert got_ids == ids
  np.testing.assert_array_equal(got, ref)  # the same program per device: bit for bit
  # weights split over fsdp and tensor: every weight is read straight onto its shards
  mesh = local_mesh("data=2,fsdp=2,tensor=2")
  encoder = TextEncoder.from_directory(t5_dir, max_length=MAX_LENGTH, batch_size=6, mesh=mesh)
  assert encoder.batch_size == 8, "the batch is rounded up to a multiple of data × fsdp"
  q = encoder.params["block_0"]["layer_0"]["SelfAttention"]["q"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2)
  split_ids, split = _all(_encode(t5_dir, captions, tmp_path / "split", batch_size=8, mesh=mesh))
  assert split_ids == ids
  # partial sums over split weights are added in another order: float32 rounding through the
  # layers, ~15 ulps of the largest value (|x| ≈ 4; within 1e-6 × max on the CPUs of earlier runs,
  # 1.04e-6 on an AMD EPYC); a weight on the wrong shard errs by O(1)
  assert np.abs(split - ref).max() <= 1e-5 * np.abs(ref).max()


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _encode_cli(workdir, captions, t5_dir, devices, *extra):
  # the suite's XLA flags (tests/conftest.py), with this process's own device count
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}
  args = ["encode", "--config", str(ROOT / "configs" / "text.py"), "--workdir", str(workdir),
          f"--config.data.captions=file:{captions}", f"--config.text.encoder={t5_dir}",
          f"--config.text.max_length={MAX_LENGTH}", "--config.text.batch_size=4",
          "--config.text.shard_size=5", "--config.text.cache_dtype=float32",
          "--config.text.mesh=data=-1", *extra]
  return subprocess.Popen([sys.executable, "-m", "imagen_jax.cli", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_write_one_cache_and_resume_their_own_shards(t5_dir, captions, tmp_path):
  """Two localhost processes (2 devices each, `jax.distributed`) encode the 5 shards of 24
  captions into one cache: shards 0, 2, 4 by process 0 and 1, 3 by process 1. The cache equals a
  one-device run's; shards already finished by an interrupted run are not encoded again."""
  ids, ref = _all(_encode(t5_dir, captions, tmp_path / "one", batch_size=2))
  # an interrupted run left shards 0 and 1
  work = tmp_path / "multi"
  partial = work / "text_cache" / "train"
  _encode(t5_dir, captions, partial, batch_size=2)
  manifest = json.loads((partial / "manifest.json").read_text())
  (partial / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
  for shard in (2, 3, 4):
    (partial / f"shard-{shard:05d}.array_record").unlink()
  finished = {s: (partial / f"shard-{s:05d}.array_record").stat().st_mtime_ns for s in (0, 1)}

  port = _free_port()
  procs = [_encode_cli(work, captions, t5_dir, 2, "--coordinator", f"localhost:{port}",
                       "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
  # the manifest is written by process 0 alone and counts everyone's shards
  assert "24 captions" in outs[0] and "14 encoded, 2 shards resumed" in outs[0], outs[0]
  # shard s by process s mod 2, the finished ones skipped
  assert "process 0 of 2: encoded 9 captions (shards [2, 4])" in outs[0], outs[0]
  assert "process 1 of 2: encoded 5 captions (shards [3])" in outs[1], outs[1]
  for s, mtime in finished.items():
    assert (partial / f"shard-{s:05d}.array_record").stat().st_mtime_ns == mtime, \
        f"finished shard {s} was written again"
  got_ids, got = _all(EmbeddingCache(partial))
  assert got_ids == ids
  # 2 devices × 2 captions per call against 1 device × 2: the same per-device program
  np.testing.assert_array_equal(got, ref)
