"""Stages from disk: a training workdir's stage folders (config.json + Orbax checkpoints) as
`Stage`s (or fine-tuned DeepFloyd IF stages), the text encoder they were trained with (checked
against the caption cache), and the `Cascade` of a workdir — alone (`load_cascade`) or continuing
another cascade, e.g. IF's released stages (`continue_cascade`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from imagen_jax import sharding as shd
from imagen_jax.cascade.sampling import (Cascade, CascadeError, CascadeStage, Stage,
                                         chain_stages)
from imagen_jax.text.cache import CacheSpec
from imagen_jax.text.encoder import TextEncoder


def read_stage_config(stage_dir: Path) -> ml_collections.ConfigDict:
  path = stage_dir / "config.json"
  if not path.is_file():
    raise CascadeError(f"{stage_dir} has no config.json: is it a stage trained with "
                       "`imagen-jax train`?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_stage(stage_dir: str | Path, *, use_ema: bool = True, step: int | None = None
               ) -> CascadeStage:
  """Restore a stage's parameters (EMA by default) from its newest (or given) checkpoint: a
  `Stage`, or for a fine-tuned DeepFloyd IF stage an `IFStage` (its `negative_text` is set by
  `load_cascade`, from the text encoder)."""
  from imagen_jax.train import if_finetune
  from imagen_jax.train.checkpoint import Checkpointer
  from imagen_jax.train.loop import build_program
  from imagen_jax.train.state import abstract_sharded_state

  stage_dir = Path(stage_dir)
  config = read_stage_config(stage_dir)
  is_if = if_finetune.is_if_stage(config)
  if is_if and not (if_finetune.config_dir(stage_dir) / "unet" / "config.json").is_file():
    raise CascadeError(f"{stage_dir} is a DeepFloyd IF stage without its configs "
                       f"({if_finetune.CONFIG_DIR}/unet/config.json, written by its first "
                       "training run)")
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  program = build_program(config, config.text.max_length, stage_dir)
  target, _ = abstract_sharded_state(program.init_params, program.optimizer, mesh,
                                     shd.DEFAULT_RULES)
  name = "ema_params" if use_ema else "params"
  with Checkpointer(stage_dir / "checkpoints", read_only=True) as ckpt:
    if not ckpt.all_steps():
      raise CascadeError(f"stage {config.stage}: no checkpoint in {stage_dir / 'checkpoints'}; "
                         "train it first (imagen-jax train --config ... --workdir ...)")
    # only the parameters are read: not the optimiser state, not the other copy of the weights
    restored_step, params = ckpt.restore_subtree(name, getattr(target, name), step=step)
  if is_if:
    from imagen_jax.pretrained.deepfloyd_if import inspect_if_stage

    stage = inspect_if_stage(if_finetune.config_dir(stage_dir), config.lowres_resolution or None)
    unet = dataclasses.replace(program.step_config.unet, sample_size=config.resolution,
                               remat=False)
    return dataclasses.replace(stage, name=config.stage, unet=unet, params=params,
                               step=restored_step)
  return Stage(config.stage, config, program.step_config.model, params, restored_step)


def encoder_for(workdir: Path, config: ml_collections.ConfigDict) -> TextEncoder:
  """The text encoder the stages were trained with (a T5 or DeepFloyd IF directory, as
  `imagen-jax encode` loaded it); checked against the training cache."""
  from imagen_jax.text.encode import load_encoder, resolve_encoder_dir

  directory = (resolve_encoder_dir(config, workdir) if config.text.encoder else
               workdir / "text" / "default_t5")
  if not directory.is_dir():
    raise CascadeError(f"text encoder {directory} not found (config.text.encoder, or the "
                       "embedded default built by `imagen-jax encode`)")
  try:
    encoder = load_encoder(config, workdir, batch_size=8)
  except (FileNotFoundError, ValueError) as e:
    raise CascadeError(f"cannot load the text encoder {directory}: {e}") from e
  check_trained_encoder(workdir, config, encoder.fingerprint, f"the text encoder in {directory}")
  return encoder


def check_trained_encoder(workdir: Path, config: ml_collections.ConfigDict, fingerprint: str,
                          what: str) -> None:
  """Refuse an encoder (`what`, its `fingerprint`) that is not the one that encoded the captions
  the stage of `config` was trained on, as its caption cache's manifest records it (a stage
  whose cache is gone is not checked)."""
  from imagen_jax.text.encode import cache_dir_for

  manifest = cache_dir_for(config, workdir, config.data.split) / "manifest.json"
  if manifest.is_file():
    spec = CacheSpec(**json.loads(manifest.read_text())["spec"])
    if spec.encoder_fingerprint != fingerprint:
      raise CascadeError(f"{what} is not the one stage {config.stage} was trained with (its "
                         f"cache {manifest.parent} has fingerprint {spec.encoder_fingerprint}, "
                         f"the encoder {fingerprint})")


def stage_dirs(workdir: Path) -> list[Path]:
  """Folders of `workdir` that hold a trained stage (config.json + checkpoints/)."""
  return sorted(d for d in workdir.iterdir()
                if (d / "config.json").is_file() and (d / "checkpoints").is_dir())


def workdir_stage_dirs(workdir: str | Path, stages: Sequence[str] | None = None
                       ) -> dict[str, Path]:
  """The folders of `workdir`'s trained stages (or of the named ones), by stage folder name."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise CascadeError(f"workdir {workdir} does not exist")
  found = {d.name: d for d in stage_dirs(workdir)}
  if stages:
    missing = [s for s in stages if s not in found]
    if missing:
      raise CascadeError(f"workdir {workdir} has no trained stage(s) {missing}; it has "
                         f"{sorted(found) or 'none'}")
    found = {s: found[s] for s in stages}
  if not found:
    raise CascadeError(f"workdir {workdir} has no trained stages (folders with config.json and "
                       "checkpoints/); train one with `imagen-jax train`")
  return found


def set_negative_text(stages: Sequence[CascadeStage], encoder: Any) -> None:
  """DeepFloyd IF stages (released or fine-tuned) guide against the empty prompt's encoding."""
  for stage in stages:
    if hasattr(stage, "negative_text"):
      stage.negative_text = encoder.null_embedding()[None]


def load_cascade(workdir: str | Path, stages: Sequence[str] | None = None,
                 use_ema: bool = True) -> Cascade:
  """Load every trained stage of `workdir` (or the named ones) and the text encoder."""
  found = workdir_stage_dirs(workdir, stages)
  loaded = chain_stages([load_stage(d, use_ema=use_ema) for d in found.values()])
  config = read_stage_config(found[loaded[0].name])
  encoder = encoder_for(Path(workdir), config)
  set_negative_text(loaded, encoder)
  return Cascade(loaded, encoder)


def continuation_stage_dirs(workdir: Path, stages: Sequence[str] | None,
                            taken: Sequence[str]) -> dict[str, Path]:
  """`workdir_stage_dirs`, checked (from their configs alone) to be super-resolution stages
  whose names are not `taken` by the stages they follow."""
  found = workdir_stage_dirs(workdir, stages)
  for name, folder in found.items():
    config = read_stage_config(folder)
    if not config.get("lowres_resolution"):
      raise CascadeError(f"stage {name} of {workdir} is a base stage (text → "
                         f"{config.get('resolution')} px); after the pretrained stages only "
                         "super-resolution stages can follow: choose them with --stages")
    if config.get("stage") in taken:
      raise CascadeError(f"stage {config.stage} is both a pretrained stage and one of "
                         f"{workdir}'s: give one of them")
  return found


def continue_cascade(cascade: Cascade, workdir: str | Path, stages: Sequence[str] | None = None,
                     use_ema: bool = True) -> Cascade:
  """`cascade` (e.g. DeepFloyd IF's released stages, `load_if_cascade`) continued by super-
  resolution stages trained in `workdir` (all of its stages, or the named ones) — e.g. IF-I →
  IF-II → a 256 → 1024 stage of ours. Those stages must have been trained on captions encoded
  by `cascade`'s text encoder (`imagen-jax encode --config.text.encoder=IF_I_DIR`), and must
  each take the previous stage's images."""
  workdir = Path(workdir)
  found = continuation_stage_dirs(workdir, stages, [s.name for s in cascade.stages])
  for folder in found.values():
    check_trained_encoder(workdir, read_stage_config(folder), cascade.encoder.fingerprint,
                          "the pretrained stages' text encoder")
  loaded = [load_stage(d, use_ema=use_ema) for d in found.values()]
  set_negative_text(loaded, cascade.encoder)
  return Cascade(chain_stages([*cascade.stages, *loaded]), cascade.encoder)

