"""Orbax checkpoints of one cascade stage, and a SIGTERM guard for clean preemption.

A `Checkpointer` owns `workdir/<stage>/checkpoints` and writes, per step, four Orbax items:

  state/        the train state (a pytree of possibly sharded jax.Arrays; `StandardSave`)
  data_state/   the data-iterator state (JSON)
  config/       the run config (JSON; written every save so each checkpoint describes itself)
  fingerprint/  a wrapping uint32 sum of the bits of every state leaf (JSON)

Saves are asynchronous: `save` returns once the arrays are copied to host memory (so the next
step may donate the state) and the files are written in the background. Orbax writes each step
into `<step>.orbax-checkpoint-tmp*` and renames it only when complete; interrupted temporaries
are ignored and removed when a Checkpointer opens the directory, and old steps are deleted only
after the new one is committed, so a crash mid-save never costs the previous checkpoint.

`restore` loads the newest step directly onto the shardings of an abstract state (any mesh
shape). A step that fails to load — missing, truncated or corrupted files (the fingerprint catches
bit flips that tensorstore does not) — is skipped with a WARNING, and the previous one is tried.
Once an older step loads, the damaged newer ones are moved to `checkpoints/damaged/` so that
training can save those step numbers again; nothing is ever deleted by this module.

Training-loop use::

  with Checkpointer(workdir / stage / "checkpoints") as ckpt, PreemptionGuard() as guard:
    restored = ckpt.restore(abstract_state)
    ...
    for step in range(start, total):
      state = train_step(state, batch)
      stop = guard.should_stop(step)
      ckpt.save(step, state, it.get_state(), config.to_dict(), force=stop)
      if stop:
        ckpt.wait_until_finished()
        break
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)


class _ReadOnlyNotice(logging.Filter):
  """Drops Orbax's "Given directory is read only" warning: opening a checkpoint directory read-only
  is what sampling and evaluation are meant to do, not something to warn a user about."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_ReadOnlyNotice())  # Orbax logs through absl's logger

_ITEMS = ("state", "data_state", "config", "fingerprint")
_FINGERPRINT_ALGO = "u32-bitsum-v1"
_DAMAGED_SUBDIR = "damaged"


class CheckpointError(RuntimeError):
  """No checkpoint in a directory could be restored."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `Checkpointer.restore` loaded: the step and its four items."""

  step: int
  state: Any
  data_state: Any
  config: dict[str, Any]


def _leaf_bitsum(x: jax.Array) -> jax.Array:
  """Wrapping uint32 sum of the bits of `x`: exact, so independent of sharding and order."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize >= 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 64-bit dtypes gain a trailing dim of 2
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)


_bitsums = jax.jit(lambda leaves: [_leaf_bitsum(x) for x in leaves])


def fingerprint(state: Any) -> dict[str, int]:
  """Per-leaf bit sums of a pytree of arrays, keyed by the leaf's path."""
  paths_leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  sums = jax.device_get(_bitsums([jnp.asarray(leaf) for _, leaf in paths_leaves]))
  return {jax.tree_util.keystr(p): int(s) for (p, _), s in zip(paths_leaves, sums)}


def _json_default(value: Any) -> Any:
  """JSON for config values json cannot encode: arrays as lists, dtypes by name, else str."""
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
    return np.dtype(value).name
  if isinstance(getattr(value, "dtype", None), np.dtype):  # jnp.bfloat16 and friends
    return value.dtype.name
  return str(value)


def _jsonable(config: Any) -> dict[str, Any]:
  """A config (dict or ConfigDict) as plain JSON types."""
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(config, default=_json_default))


def _all_processes_ok(ok: bool) -> bool:
  """True only if `ok` on every process (so all hosts fall back to the same step)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
  """Orbax `CheckpointManager` for one stage directory: save, keep N, resume, survive damage."""

  def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 3,
               save_interval_steps: int = 1000, async_save: bool = True,
               read_only: bool = False):
    """Opens (creating unless `read_only`) `directory`; removes temporaries of interrupted saves.

    `read_only` (e.g. for sampling while training runs) never writes, deletes or moves anything.
    """
    if max_to_keep < 1 or save_interval_steps < 1:
      raise ValueError(f"need max_to_keep >= 1 and save_interval_steps >= 1, got {max_to_keep} "
                       f"and {save_interval_steps}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.read_only = read_only
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        # Not Orbax's default policy, which also saves the first step of a fresh run whatever it is.
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_interval_steps),
            policies.PreemptionCheckpointingPolicy()]),
        preservation_policy=policies.LatestN(max_to_keep),
        save_interval_steps=0 if read_only else save_interval_steps,  # else Orbax warns
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  # -- saving ---------------------------------------------------------------------------------

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None,
           config: Mapping[str, Any] | Any, *, force: bool = False) -> bool:
    """Saves `step` if it is on the save interval (or `force`); returns whether it saved.

    Never overwrites: a step that is already saved (e.g. a forced save right after an interval
    save) returns False. Returns as soon as the arrays are on the host; files finish in the
    background (`wait_until_finished`). Collective: call on every process.
    """
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only")
    step = int(step)
    if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_state=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(_jsonable(config)),
        fingerprint=ocp.args.JsonSave({"algorithm": _FINGERPRINT_ALGO,
                                       "leaves": fingerprint(state)}))
    return bool(self._manager.save(step, args=args, force=True))

  def wait_until_finished(self) -> None:
    """Blocks until background writes are committed; re-raises an error of a failed save."""
    try:
      self._manager.wait_until_finished()
    except Exception:
      self._manager.reload()  # Orbax already forgot the old steps it meant to delete
      raise

  # -- inspecting -----------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The newest step (one still being written asynchronously counts)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All steps, ascending."""
    return sorted(self._manager.all_steps())

  # -- restoring ------------------------------------------------------------------------------

  def restore(self, abstract_state: Any, step: int | None = None) -> Restored | None:
    """Restores `step` (default: the newest that loads) onto `abstract_state`'s shardings.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding` set; the mesh may
    differ from the one that saved. Returns None if there is no checkpoint. Without `step`, a
    damaged step logs a WARNING and the previous one is tried; if all fail, `CheckpointError`
    lists them. With `step`, its error is raised as is.
    """
    missing = [jax.tree_util.keystr(p) for p, leaf
               in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
               if getattr(leaf, "sharding", None) is None]
    if missing:
      raise ValueError(f"abstract_state leaves need a .sharding; missing on {missing[:5]}")
    self.wait_until_finished()
    if step is not None:
      return self._restore_step(int(step), abstract_state)
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failed: list[tuple[int, BaseException]] = []
    for candidate in steps:
      error: Exception | None = None
      try:
        restored = self._restore_step(candidate, abstract_state)
      except Exception as e:  # noqa: BLE001  (any failure to load = a damaged step)
        error = e
      if _all_processes_ok(error is None):
        if failed:
          self._quarantine([s for s, _ in failed])
        return restored
      error = error or CheckpointError("failed on another process")
      logger.warning("Checkpoint step %d in %s is damaged or incomplete (%s: %s); falling back "
                     "to the previous step.", candidate, self.directory, type(error).__name__,
                     _short(error))
      failed.append((candidate, error))
    listing = "\n".join(f"  step {s}: {type(e).__name__}: {_short(e)}" for s, e in failed)
    raise CheckpointError(f"No checkpoint in {self.directory} could be restored (if all fail the "
                          f"same way, abstract_state may not match the saved state):\n{listing}")

  def _restore_step(self, step: int, abstract_state: Any) -> Restored:
    """Restores one step and checks its fingerprint."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_state=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(),
        fingerprint=ocp.args.JsonRestore()))
    expected = out.fingerprint
    if not expected or expected.get("algorithm") != _FINGERPRINT_ALGO:
      raise CheckpointError(f"step {step} has no usable fingerprint: {expected!r}")
    actual = fingerprint(out.state)
    bad = sorted(k for k in expected["leaves"].keys() | actual.keys()
                 if expected["leaves"].get(k) != actual.get(k))
    if bad:
      raise CheckpointError(f"step {step}: restored values do not match the saved fingerprint "
                            f"(corrupted data or a different state structure) at {bad[:5]}")
    return Restored(step=step, state=out.state, data_state=out.data_state, config=out.config)

  def restore_subtree(self, name: str, abstract: Any, step: int | None = None
                      ) -> tuple[int, Any]:
    """(step, `state.<name>`) — e.g. only the EMA parameters, for sampling — without reading the
    optimiser state or anything else of the step. Checked against the saved fingerprint; without
    `step`, the newest step that loads. `abstract` leaves need a `.sharding`. Never writes."""
    steps = [int(step)] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    reader = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "fingerprint": ocp.JsonCheckpointHandler()})
    item = {name: abstract}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), item)
    failed = []
    with reader:
      for candidate in steps:
        try:
          out = reader.restore(candidate, args=ocp.args.Composite(
              state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                           partial_restore=True),
              fingerprint=ocp.args.JsonRestore()))
          saved = (out.fingerprint or {}).get("leaves", {})
          prefix = f"['{name}']"  # keys of the {name: subtree} dict → keys in the full state
          actual = {f".{name}{k[len(prefix):]}": v for k, v in fingerprint(out.state).items()}
          bad = sorted(k for k in actual if saved.get(k) != actual[k])
          if bad:
            raise CheckpointError(f"step {candidate}: restored {name} does not match the saved "
                                  f"fingerprint at {bad[:5]}")
          return candidate, out.state[name]
        except Exception as e:
          if step is not None:
            raise
          logger.warning("Checkpoint step %d in %s: %s; trying the previous step.", candidate,
                         self.directory, _short(e))
          failed.append((candidate, e))
    listing = "\n".join(f"  step {s}: {type(e).__name__}: {_short(e)}" for s, e in failed)
    raise CheckpointError(f"no step in {self.directory} has a loadable {name}:\n{listing}")

  def _quarantine(self, steps: Iterable[int]) -> None:
    """Moves damaged step directories to `damaged/`, so their step numbers can be saved again."""
    if self.read_only:
      return
    if jax.process_index() == 0:
      damaged = os.path.join(self.directory, _DAMAGED_SUBDIR)
      os.makedirs(damaged, exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, str(step))
        target = os.path.join(damaged, str(step))
        if os.path.exists(target):
          target += f"-{time.time_ns()}"
        if os.path.isdir(source):
          os.rename(source, target)
          logger.warning("Moved damaged checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"imagen_jax checkpoint quarantine {self.directory}")
    self._manager.reload()

  # -- lifetime -------------------------------------------------------------------------------

  def close(self) -> None:
    """Waits for background writes and releases Orbax's threads."""
    self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


def stage_checkpoint_steps(stage_dir: str | os.PathLike) -> list[int]:
  """The checkpointed steps of a stage's workdir (`<stage_dir>/checkpoints`), ascending; [] when
  it has none yet. Read only: nothing is created."""
  directory = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  with Checkpointer(directory, read_only=True) as ckpt:
    return sorted(int(s) for s in ckpt.all_steps())


def _short(error: BaseException, limit: int = 300) -> str:
  """One line of an exception message (tensorstore's are long)."""
  text = " ".join(str(error).split())
  return text if len(text) <= limit else text[:limit] + " …"


class PreemptionGuard:
  """Turns SIGTERM (and optionally SIGINT) into a flag that the training loop polls.

  The handler only sets `stop_requested`; the loop then saves (force=True), waits, and exits.
  A second SIGINT raises KeyboardInterrupt, so Ctrl-C twice still stops a stuck run. On several
  processes, use `should_stop(step)`: it agrees on one step across hosts, through JAX's
  preemption sync point when `jax.distributed` runs the preemption service (which then owns
  SIGTERM, so no Python handler is installed for it), otherwise through an all-gather of the flags.
  """

  def __init__(self, *, sigint: bool = False):
    """Installs the handlers; call from the main thread."""
    self._stop = False
    self.signal_received: int | None = None
    self._previous: dict[int, Any] = {}
    wanted = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
    if jax.process_count() > 1 and _jax_preemption_service_active():
      wanted.remove(signal.SIGTERM)
      logger.info("JAX's preemption service handles SIGTERM; using its sync point.")
    for signum in wanted:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    """Signal handler: records the request; nothing else is safe to do here."""
    del frame
    if signum == signal.SIGINT and self._stop:
      raise KeyboardInterrupt
    self._stop = True
    self.signal_received = signum

  @property
  def stop_requested(self) -> bool:
    """Whether a handled signal arrived on this process."""
    return self._stop

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop at `step`; the same answer on every process."""
    if jax.process_count() == 1:
      return self._stop
    try:
      if _jax_preemption_service_active():
        if multihost_utils.reached_preemption_sync_point(int(step)):
          self._stop = True
          return True
        return False
    except RuntimeError as e:  # preemption service disabled after all
      logger.debug("no preemption sync point: %s", e)
    return not _all_processes_ok(not self._stop)

  def close(self) -> None:
    """Restores the handlers that were installed before."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous.clear()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


def _jax_preemption_service_active() -> bool:
  """Whether `jax.distributed` started a preemption sync manager (private JAX state)."""
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False
