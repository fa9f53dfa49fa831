"""The `imagen-jax` command: a thin layer of subcommands over plain functions.

    imagen-jax demo [--config configs/toy2d.py[:arg]] [--workdir DIR] [--config.a.b=value ...]

Each subcommand is a `Command`: a function adding its arguments to its parser and a function
running it from the parsed arguments and the `--config.a.b=value` overrides. To add one (`encode`,
`train`, `sample`, ...), write those two functions and append a `Command` to `COMMANDS`.
Heavy imports (JAX, Flax) happen inside the run functions, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from imagen_jax.configlib import (
  CONFIGS_DIR,
  ConfigError,
  apply_overrides,
  load_config,
  parse_config_args,
)

PROG = "imagen-jax"
OVERRIDES_HELP = ("Any config field can be overridden with --config.<group>.<field>=<value>, "
                  "e.g. --config.train.steps=500 or --config.sample.guidance_weights=1,3.")


@dataclasses.dataclass(frozen=True)
class Command:
  """One subcommand: `add_arguments(parser)` declares its flags; `run(args, overrides)` is its
  exit code. `takes_config` says whether `--config.a.b=value` overrides make sense for it."""

  name: str
  help: str
  description: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace, list[str]], int]
  takes_config: bool = True


def default_config(name: str) -> str:
  """Path of `configs/<name>` at the repository root; a ConfigError if it is not there."""
  path = CONFIGS_DIR / name
  if not path.is_file():
    raise ConfigError(f"default config {path} not found (configs/ lives at the repository root, "
                      "next to imagen_jax/; is this an installed copy without it?); pass "
                      "--config PATH[:ARG] explicitly.")
  return str(path)


def load_run_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """`load_config(spec)` with the command-line overrides applied; errors are ConfigErrors."""
  try:
    config = load_config(spec)
  except ConfigError:
    raise
  except ValueError as e:  # e.g. an unknown variant rejected by get_config(arg)
    raise ConfigError(f"config {spec!r}: {e}") from e
  return apply_overrides(config, overrides)


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
  from imagen_jax.demo import run_demo

  run_demo(config, args.workdir)
  return 0


def _add_encode_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="config with `data` (captions, splits) and `text` groups, e.g. "
                      "configs/text.py")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds text_cache/<split>/ (and text/default_t5/ when no "
                      "text.encoder is given)")


def _run_encode(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config, overrides)
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
                      help="a builder option, e.g. resolution=64, num_train=10000, "
                      "folder=/data/photos (repeatable)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")


def parse_options(options: Sequence[str]) -> dict[str, object]:
  """`key=value` strings → dict; values through ast.literal_eval, else kept as strings."""
  import ast

  parsed = {}
  for option in options:
    key, sep, value = option.partition("=")
    if not sep or not key:
      raise ConfigError(f"--option {option!r} must look like key=value")
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value
  return parsed


def _run_data(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.data import build_dataset

  options = parse_options(args.option)
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
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (TPU pods, SLURM: auto-detected)")
  parser.add_argument("--coordinator", metavar="HOST:PORT",
                      help="explicit multi-process set-up: the coordinator address ...")
  parser.add_argument("--num-processes", type=int, help="... the number of processes ...")
  parser.add_argument("--process-id", type=int, help="... and this process's id")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def initialize_distributed(args: argparse.Namespace) -> None:
  """jax.distributed.initialize from the flags (before any other JAX call)."""
  import jax

  if args.coordinator:
    if args.num_processes is None or args.process_id is None:
      raise ConfigError("--coordinator needs --num-processes and --process-id")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def _run_train(args: argparse.Namespace, overrides: list[str]) -> int:
  config = load_run_config(args.config, overrides)
  initialize_distributed(args)
  from imagen_jax.text.cache import CacheError
  from imagen_jax.train.loop import train

  try:
    train(config, args.workdir, progress=not args.no_progress)
  except (CacheError, FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from e
  return 0


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="a training workdir with one folder per trained stage")
  parser.add_argument("--out", default="samples.png", metavar="PNG",
                      help="the grid (rows: prompts; the last stage's images); individual images "
                      "go next to it, in <out stem>/ (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--guidance", type=float, nargs="+", default=[5.0], metavar="W",
                      help="classifier-free guidance weight, one for all stages or one per stage")
  parser.add_argument("--steps", type=int, default=25, help="sampler steps per stage")
  parser.add_argument("--sampler", default="dpmpp_2m", choices=("ddpm", "ddim", "dpmpp_2m"))
  parser.add_argument("--thresholding", default="dynamic", choices=("none", "static", "dynamic"))
  parser.add_argument("--aug-level", type=float, default=None,
                      help="noise-augmentation level of SR inputs (default: each stage's config)")
  parser.add_argument("--stages", nargs="+", default=None, help="only these stages")


def _add_sample_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="text prompts")
  parser.add_argument("--num-per-prompt", type=int, default=1)
  _add_sampling_arguments(parser)


def _add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("image", metavar="IMAGE", help="an image file to upscale")
  parser.add_argument("--prompt", required=True, help="what the image shows")
  _add_sampling_arguments(parser)


def _sampling_options(args: argparse.Namespace, stage_names: list[str]) -> dict:
  from imagen_jax.cascade import SamplingOptions

  weights = args.guidance
  if len(weights) not in (1, len(stage_names)):
    raise ConfigError(f"--guidance takes one weight or one per stage ({len(stage_names)}: "
                      f"{stage_names}), got {len(weights)}")
  weights = weights * len(stage_names) if len(weights) == 1 else weights
  return {name: SamplingOptions(w, args.sampler, args.steps, args.thresholding, args.aug_level)
          for name, w in zip(stage_names, weights)}


def _save_outputs(images: dict, prompts: list[str], out: str) -> None:
  from PIL import Image

  from imagen_jax.train.metrics import make_grid, to_uint8

  out_path = Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  folder = out_path.with_suffix("")
  folder.mkdir(exist_ok=True)
  for stage, batch in images.items():
    for i, image in enumerate(to_uint8(batch)):
      Image.fromarray(image).save(folder / f"{i:03d}_{stage}.png")
  last = list(images.values())[-1]
  Image.fromarray(make_grid(last)).save(out_path)
  (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
  print(f"grid: {out_path} ({len(last)} images of {last.shape[1]} px); individual images and "
        f"prompts in {folder}/")


def _run_sample(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.cascade import CascadeError, load_cascade

  prompts = [p for p in args.prompts for _ in range(args.num_per_prompt)]
  if not prompts or any(not p.strip() for p in prompts):
    raise ConfigError("empty prompt: give at least one non-empty prompt")
  try:
    cascade = load_cascade(args.workdir, args.stages)
    names = [s.name for s in cascade.stages]
    images = cascade.sample(prompts, seed=args.seed, options=_sampling_options(args, names))
  except CascadeError as e:
    raise ConfigError(str(e)) from e
  _save_outputs(images, prompts, args.out)
  return 0


def _run_upscale(args: argparse.Namespace, overrides: list[str]) -> int:
  import numpy as np
  from PIL import Image

  from imagen_jax.cascade import CascadeError, load_cascade

  if not args.prompt.strip():
    raise ConfigError("empty prompt: describe the image with --prompt")
  try:
    picture = Image.open(args.image).convert("RGB")
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read image {args.image}: {e}") from e
  try:
    cascade = load_cascade(args.workdir, args.stages)
    sr = [s for s in cascade.stages if s.lowres_resolution]
    if not sr:
      raise CascadeError(f"workdir {args.workdir} has no super-resolution stage")
    size = sr[0].lowres_resolution
    low = np.asarray(picture.resize((size, size), Image.BICUBIC), np.float32) / 127.5 - 1.0
    names = [s.name for s in sr]
    images = cascade.sample([args.prompt], seed=args.seed, lowres=low[None],
                            options=_sampling_options(args, names))
  except CascadeError as e:
    raise ConfigError(str(e)) from e
  _save_outputs(images, [args.prompt], args.out)
  return 0


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, metavar="DIR", help="a trained workdir")
  parser.add_argument("--dataset", required=True,
                      help="prepared TFDS dataset ('tfds:<dir>' or a dir) whose captions are the "
                      "prompts and whose images are the references")
  parser.add_argument("--split", default="test")
  parser.add_argument("--num", type=int, default=64, help="prompts to evaluate")
  parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 8.0])
  parser.add_argument("--thresholding", nargs="+", default=["static", "dynamic"],
                      choices=("none", "static", "dynamic"))
  parser.add_argument("--steps", type=int, default=25)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sr-guidance", type=float, default=1.0,
                      help="guidance weight of the SR stages for PSNR/SSIM (default 1: unguided)")
  parser.add_argument("--sr-guidance-cascade", type=float, default=None,
                      help="guidance weight of the SR stages when the whole cascade samples the "
                      "prompts (default: each row's --guidance weight)")
  parser.add_argument("--aug-level", type=float, default=None,
                      help="SR stages' noise-augmentation level at sampling (default: each "
                      "stage's config.diffusion.aug_sample_level)")
  parser.add_argument("--fashion-classifier", metavar="DIR",
                      help="for fashion_mnist_captions: where the Fashion-MNIST classifier is "
                      "cached (trained there on first use, ~1 min; default: "
                      "<workdir>/fashion_classifier)")
  parser.add_argument("--out", metavar="JSON", help="also write the rows as JSON")


def _run_eval(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.cascade import CascadeError, load_cascade
  from imagen_jax.eval.run import evaluate_cascade, format_rows, write_rows

  classifier = args.fashion_classifier
  if classifier is None and "fashion" in args.dataset:
    classifier = str(Path(args.workdir) / "fashion_classifier")
  try:
    cascade = load_cascade(args.workdir)
    rows = evaluate_cascade(cascade, args.dataset, split=args.split, num=args.num,
                            guidance=args.guidance, thresholding=args.thresholding,
                            steps=args.steps, seed=args.seed,
                            fashion_classifier=classifier, sr_guidance=args.sr_guidance,
                            sr_guidance_cascade=args.sr_guidance_cascade,
                            aug_level=args.aug_level)
  except (CascadeError, FileNotFoundError) as e:
    raise ConfigError(str(e)) from e
  print(format_rows(rows))
  if args.out:
    write_rows(rows, Path(args.out))
  return 0


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", metavar="PATH[:ARG]", required=True,
                      help="a stage config, e.g. configs/base64.py")
  parser.add_argument("--topology", required=True, metavar="GEN:SHAPE",
                      help="TPU slice: v5e:16x16, v4:4x4x4, v5p:8x8x8, v6e:16x16, ...")
  parser.add_argument("--mesh", metavar="AXIS=SIZE,...",
                      help="mesh over the slice, e.g. data=-1,fsdp=8 (default: the config's "
                      "mesh section)")
  parser.add_argument("--no-sampler", action="store_true", help="plan the train step only")
  parser.add_argument("--sample-batch", type=int, default=None,
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
        name="sample",
        help="text → images through every trained stage of a workdir",
        description=(
            "Encode the prompts with the stages' text encoder, sample the base stage, then each "
            "super-resolution stage conditioned on the previous output (EMA weights; classifier-"
            "free guidance; dynamic thresholding by default). Writes a PNG grid and the "
            "individual images of every stage."),
        add_arguments=_add_sample_arguments,
        run=_run_sample,
        takes_config=False,
    ),
    Command(
        name="upscale",
        help="run the super-resolution stages on your own image",
        description=(
            "Resize IMAGE to the first super-resolution stage's input size and run the SR "
            "stages on it, conditioned on --prompt."),
        add_arguments=_add_upscale_arguments,
        run=_run_upscale,
        takes_config=False,
    ),
    Command(
        name="eval",
        help="score a trained cascade on a dataset split (alignment, accuracy, PSNR/SSIM)",
        description=(
            "Sample the base stage for the split's captions at every guidance weight and "
            "thresholding given and score the samples: exact attribute alignment for the shapes "
            "dataset, classifier accuracy and Fréchet distance for Fashion-MNIST; with an SR "
            "stage, PSNR/SSIM of SR outputs against the real images (bicubic as baseline)."),
        add_arguments=_add_eval_arguments,
        run=_run_eval,
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
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
  """The top-level parser with one subparser per command."""
  parser = argparse.ArgumentParser(
      prog=PROG, description="Imagen in JAX/Flax: a cascade of pixel diffusion models "
      "conditioned on a frozen T5 encoder.", epilog=OVERRIDES_HELP)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for command in commands:
    sub_parser = sub.add_parser(command.name, help=command.help, description=command.description,
                                epilog=OVERRIDES_HELP if command.takes_config else None)
    command.add_arguments(sub_parser)
    sub_parser.set_defaults(_command=command)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `imagen-jax`; returns the exit code (2 for usage and config errors)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  try:
    overrides, rest = parse_config_args(argv)
    try:
      args = parser.parse_args(rest)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
      return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    command: Command = args._command
    if overrides and not command.takes_config:
      raise ConfigError(f"'{command.name}' takes no --config.* overrides (got {overrides})")
    return command.run(args, overrides)
  except ConfigError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
