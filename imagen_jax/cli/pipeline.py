"""The commands that build a cascade: `data` → `encode` → `train` (and `plan`, whether a stage's
training fits a TPU slice), plus `demo`, all of them on this machine, and `toy`, the diffusion
core alone."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from imagen_jax.cli.command import (Command, ConfigError, default_config, float_in, host_port,
                                    int_in, key_value, load_run_config, mesh_shape,
                                    non_negative_int, positive_int, tpu_topology)


def _config_and_workdir(default: str, config_help: str, workdir: str, workdir_help: str):
  """An `add_arguments` for commands taking an optional --config and a --workdir."""

  def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH[:ARG]", default=None,
                        help=f"{config_help} (default: configs/{default})")
    parser.add_argument("--workdir", default=workdir, metavar="DIR",
                        help=f"{workdir_help} (default: %(default)s)")

  return add


_add_toy_arguments = _config_and_workdir(
    "toy2d.py", "config file and optional variant, e.g. configs/toy2d.py:tiny", "toy_out",
    "where config.json, toy_metrics.json and the plot go")
_add_demo_arguments = _config_and_workdir(
    "demo.py", "demo config; configs/demo.py:quick for a smoke run", "demo_out",
    "data, text cache, checkpoints, grid and metrics; re-running reuses what is there")


def _run_toy(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config or default_config("toy2d.py"), overrides)
  from imagen_jax.toy import run_toy  # JAX is imported only when the command actually runs

  run_toy(config, args.workdir)
  return 0


def _run_demo(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config or default_config("demo.py"), overrides)
  from imagen_jax.demo import check_demo_config, run_demo

  try:
    check_demo_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  run_demo(config, args.workdir)
  return 0


def _add_encode_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="config with `data` (captions, splits) and `text` groups, e.g. "
                      "configs/text.py")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds text_cache/<split>/ (and text/default_t5/ when no "
                      "text.encoder is given)")
  # several hosts: each encodes its own shards on its own devices (text.mesh); see README
  _add_distributed_arguments(parser)


def _run_encode(args: argparse.Namespace, overrides: list[str]) -> int:
  check_distributed_args(args)
  config = load_run_config(args.config, overrides)
  initialize_distributed(args)
  from imagen_jax.text.cache import CacheError
  from imagen_jax.text.encode import run_encode

  try:
    run_encode(config, args.workdir)
  except (CacheError, FileNotFoundError, KeyError, ValueError) as e:
    raise ConfigError(str(e)) from e
  return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dataset", required=True,
                      choices=("shapes", "fashion_mnist_captions", "emoji_captions",
                               "captioned_folder"),
                      help="which TFDS builder to run (see imagen_jax/data/README.md)")
  parser.add_argument("--data-dir", required=True, metavar="DIR",
                      help="TFDS data dir; the dataset lands in DIR/<name>/<config>/<version>")
  parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      type=key_value,
                      help="a builder option, e.g. resolution=64, num_train=10000, "
                      "folder=/data/photos (repeatable); sizes and counts are positive "
                      "integers, seeds non-negative")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")


# The builders' numeric options (their configs' `make` arguments) and their valid values; a
# split must not come out empty (TFDS refuses to write one). Options not named here go to `make`
# unchecked (an unknown one is its TypeError, reported as such).
_OPTION_VALUES = {
    "resolution": positive_int,
    "seed": non_negative_int,  # numpy's generators take no negative seed
    "num_train": positive_int,
    "num_test": positive_int,
    "max_per_split": positive_int,
    "p_two": float_in(0.0, 1.0, what="the share of two-object scenes"),
}
_TEST_PERCENT = {  # by dataset: emoji_captions always writes a test split, captioned_folder at > 0
    "emoji_captions": int_in(1, 99, what="both splits need images"),
    "captioned_folder": int_in(0, 99, what="0: no test split; the train split needs images"),
}


def parse_options(dataset: str, options: Sequence[tuple[str, object]]) -> dict[str, object]:
  """The `--option KEY=VALUE` pairs (`key_value`'s) as `build_dataset` keywords; a ConfigError
  names a key given twice or a value out of its range."""
  parsed: dict[str, object] = {}
  for key, value in options:
    if key in parsed:
      raise ConfigError(f"--option {key} given twice ({parsed[key]!r} and {value!r})")
    parsed[key] = value
    check = _TEST_PERCENT.get(dataset) if key == "test_percent" else _OPTION_VALUES.get(key)
    if value is None and key == "max_per_split":  # None: every example
      continue
    try:
      if check is not None:  # a number's text passes or fails as on the command line
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        check(str(value) if number else repr(value))  # a non-number's repr never parses
      elif key == "background" and (
          not isinstance(value, (tuple, list)) or len(value) != 3 or
          any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in value)):
        raise argparse.ArgumentTypeError(f"must be an RGB triple of integers in [0, 255], e.g. "
                                         f"(255, 255, 255), got {value!r}")
      elif key == "template":
        try:
          str(value).format("x")
        except (IndexError, KeyError, ValueError):
          raise argparse.ArgumentTypeError(
              f"must be a caption whose only placeholder is {{}} (the emoji's name), e.g. 'an "
              f"emoji of {{}}', got {value!r}") from None
    except argparse.ArgumentTypeError as e:
      raise ConfigError(f"--option {key} {e}") from None
  return parsed


def _run_data(args: argparse.Namespace, overrides: list[str]) -> int:
  options = parse_options(args.dataset, args.option)
  from imagen_jax.data import build_dataset

  try:
    result = build_dataset(args.dataset, args.data_dir, overwrite=args.overwrite, **options)
  except (TypeError, ValueError, FileNotFoundError) as e:
    raise ConfigError(f"{args.dataset}: {e}") from e
  print(f"{result.name}: {result.directory}")
  for split, n in sorted(result.splits.items()):
    print(f"  {split}: {n} examples")
  skipped = result.metadata.get("skipped")
  if skipped:
    print(f"  skipped: {skipped}")
  print(f"next: imagen-jax encode --config configs/text.py --workdir W "
        f"--config.data.captions=tfds:{result.directory}")
  return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="a stage config, e.g. configs/base64.py or configs/sr256.py:tiny")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds text_cache/ (from `imagen-jax encode`) and one folder per "
                      "stage with checkpoints, metrics and samples; resume is automatic")
  _add_distributed_arguments(parser)
  parser.add_argument("--init-from", metavar="IF_DIR",
                      help="fine-tune DeepFloyd IF: the stage's diffusers-format download "
                      "(IF-I-XL-v1.0/, IF-II-L-v1.0/, ...) whose weights start the run; with "
                      "configs/if_finetune.py:I or :II")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
  """The multi-process flags of `train` and `encode`."""
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (TPU pods, SLURM: auto-detected)")
  parser.add_argument("--coordinator", metavar="HOST:PORT", type=host_port,
                      help="explicit multi-process set-up: the coordinator address ...")
  parser.add_argument("--num-processes", type=positive_int,
                      help="... the number of processes (>= 1) ...")
  parser.add_argument("--process-id", type=non_negative_int,
                      help="... and this process's id, in [0, num_processes)")


def check_distributed_args(args: argparse.Namespace) -> None:
  """The multi-process flags together: --coordinator with --num-processes N and --process-id in
  [0, N), or --distributed alone (JAX detects the rest), or none of them."""
  if args.coordinator is None:
    if args.num_processes is not None or args.process_id is not None:
      raise ConfigError("--num-processes and --process-id go with --coordinator HOST:PORT (with "
                        "--distributed, jax.distributed.initialize() detects them)")
    return
  if args.distributed:
    raise ConfigError("give --distributed (set-up detected on TPU pods and SLURM) or --coordinator "
                      "HOST:PORT with --num-processes and --process-id (explicit), not both")
  if args.num_processes is None or args.process_id is None:
    raise ConfigError("--coordinator needs --num-processes and --process-id")
  if args.process_id >= args.num_processes:
    raise ConfigError(f"--process-id must be in [0, {args.num_processes - 1}] with --num-processes "
                      f"{args.num_processes}, got {args.process_id}")


def initialize_distributed(args: argparse.Namespace) -> None:
  """jax.distributed.initialize from the flags (checked by `check_distributed_args`), before any
  other JAX call."""
  import jax

  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def _run_train(args: argparse.Namespace, overrides: list[str]) -> int:
  check_distributed_args(args)
  config = load_run_config(args.config, overrides)
  if args.init_from:
    if config.get("model", {}).get("kind") != "deepfloyd_if":
      raise ConfigError("--init-from starts a DeepFloyd IF fine-tune: use it with "
                        "configs/if_finetune.py:I (stage I) or :II (stage II)")
    config.init_from = args.init_from
  initialize_distributed(args)
  from imagen_jax.text.cache import CacheError
  from imagen_jax.train.loop import train

  try:
    train(config, args.workdir, progress=not args.no_progress)
  except (CacheError, FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from e
  return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, metavar="DIR", help="the training workdir")
  parser.add_argument("--stage", required=True, help="the fine-tuned IF stage, e.g. if_I")
  parser.add_argument("--out", required=True, metavar="DIR",
                      help="the new diffusers-format IF directory to write")
  parser.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
  parser.add_argument("--step", type=non_negative_int, default=None,
                      help="a checkpoint's step (default: newest)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                      help="cast the weights (default: as trained)")


def _run_export(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.cascade import CascadeError
  from imagen_jax.train.if_finetune import export_stage

  try:
    out = export_stage(Path(args.workdir) / args.stage, args.out, use_ema=not args.raw,
                       step=args.step, dtype=args.dtype)
  except (CascadeError, ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e)) from e
  print(f"wrote {out} (diffusers format: unet/, scheduler configs; text_encoder/ and tokenizer/ "
        "linked from the IF directory the stage started from, when it has them)")
  return 0


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="a stage config, e.g. configs/base64.py")
  parser.add_argument("--topology", required=True, metavar="GEN:SHAPE", type=tpu_topology,
                      help="TPU slice: v5e:16x16, v4:4x4x4, v5p:8x8x8, v6e:16x16, ...")
  parser.add_argument("--mesh", metavar="AXIS=SIZE,...", type=mesh_shape,
                      help="mesh over the slice, e.g. data=-1,fsdp=8: axes data, fsdp, tensor "
                      "(unnamed ones 1), sizes >= 1 or -1 for one axis (default: the config's "
                      "mesh section)")
  parser.add_argument("--no-sampler", action="store_true", help="plan the train step only")
  parser.add_argument("--sample-batch", type=positive_int, default=None,
                      help="images per sampler call (default: one per data replica)")
  parser.add_argument("--json", metavar="PATH", help="also write the plan as JSON")


def _run_plan(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config, overrides)
  from imagen_jax.plan import PlanError, format_plan, plan_stage

  try:
    plan = plan_stage(config, args.topology, args.mesh, sample=not args.no_sampler,
                      sample_batch=args.sample_batch)
  except PlanError as e:
    raise ConfigError(str(e)) from e
  print(format_plan(plan))
  if args.json:
    import json

    Path(args.json).write_text(json.dumps(dataclasses.asdict(plan), indent=2) + "\n")
  return 0 if plan.fits else 1


COMMANDS: tuple[Command, ...] = (
    Command(
        name="demo",
        help="the whole cascade end to end on this machine (what `make demo` runs)",
        description=(
            "Build the shapes dataset, the embedded tiny T5 and the caption cache; train a tiny "
            "base stage (text → 32 px) and a tiny super-resolution stage (32 → 64 px); sample a "
            "grid for fixed prompts; print the evaluation (shapes alignment, SR PSNR/SSIM). "
            "About 12 minutes on 2 CPU cores; resumable."),
        add_arguments=_add_demo_arguments,
        run=_run_demo,
    ),
    Command(
        name="toy",
        help="the diffusion core on a 2-D toy problem (samplers, guidance; under a minute)",
        description=(
            "Train a small class-conditional MLP denoiser on a 2-D mixture with 10% label "
            "dropout and print class accuracy vs guidance weight for DDPM, DDIM and "
            "DPM-Solver++, plus an exact-denoiser check of the samplers."),
        add_arguments=_add_toy_arguments,
        run=_run_toy,
    ),
    Command(
        name="data",
        help="build a dataset (TFDS array_record, no TensorFlow) into a data dir",
        description=(
            "Build one of the offline datasets: 'shapes' (procedural scenes with compositional "
            "captions and stored ground truth; any size), 'fashion_mnist_captions' and "
            "'emoji_captions' (from Debian's dataset-fashion-mnist and libjs-emojify), or "
            "'captioned_folder' (your images with sidecar .txt captions or a CSV/JSONL "
            "manifest; unreadable or uncaptioned items are skipped and reported)."),
        add_arguments=_add_data_arguments,
        run=_run_data,
        takes_config=False,
    ),
    Command(
        name="encode",
        help="encode every caption of a dataset split into the text-embedding cache",
        description=(
            "Run the frozen T5 encoder (jit-compiled, fixed-shape batches) over every caption of "
            "the configured splits and write (embeddings, mask) keyed by example id to "
            "<workdir>/text_cache/<split>/. Interrupted runs resume; finished caches are not "
            "recomputed; a cache built with another encoder or max length is refused. Without "
            "config.text.encoder the embedded tiny T5 is used (built on first use)."),
        add_arguments=_add_encode_arguments,
        run=_run_encode,
    ),
    Command(
        name="train",
        help="train one cascade stage (sharded, checkpointed, resumable)",
        description=(
            "Train the stage the config names on its prepared dataset, reading text embeddings "
            "from <workdir>/text_cache/<split> (run `imagen-jax encode` first). Checkpoints, "
            "metrics (JSONL + TensorBoard) and sample grids go to <workdir>/<stage>/. An "
            "interrupted run resumes exactly; SIGTERM saves and exits."),
        add_arguments=_add_train_arguments,
        run=_run_train,
    ),
    Command(
        name="export",
        help="write a fine-tuned DeepFloyd IF stage as a diffusers-format directory",
        description=(
            "The stage's EMA weights (or --raw) as unet/ safetensors with its config, IF's "
            "scheduler configs and model_index.json, T5 and tokenizer linked from the IF "
            "download it started from: loadable by diffusers' pipelines and by --pretrained."),
        add_arguments=_add_export_arguments,
        run=_run_export,
        takes_config=False,
    ),
    Command(
        name="plan",
        help="will a stage's training fit on a TPU slice? (compiled ahead of time, no TPU)",
        description=(
            "Compile the stage's real train step and sampler for a TPU slice with libtpu's "
            "compile-only topology (pip install 'imagen-jax[plan]') and report per-device "
            "memory (parameters, EMA, optimiser state, batch, XLA's temporaries) against the "
            "chip's HBM, and FLOPs per step. Exit code 1 when the train step does not fit."),
        add_arguments=_add_plan_arguments,
        run=_run_plan,
    ),
)
