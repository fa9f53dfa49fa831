"""The commands that use a trained cascade (a workdir with one folder per stage): `sample`
(text → images), `upscale` (your image through the SR stages), `inpaint` and `img2img` (your image
repaired from a prompt through every stage) and `eval` (scores on a dataset split). They share the
sampling flags and write images the same way. All but `eval` also run DeepFloyd IF's released
stages instead of a workdir: `--pretrained IF-I-XL-v1.0 [--pretrained IF-II-L-v1.0]`
(`imagen_jax.pretrained.load_if_cascade`), or both: IF's stages followed by the workdir's
super-resolution stages (`--pretrained IF-I --pretrained IF-II --workdir W`, W's 256 → 1024
stage trained on captions encoded by IF's T5). Sampling flags left out take each stage's
defaults (IF's for IF stages)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagen_jax.cli.command import SEED, Command, ConfigError, float_in, int_in, positive_int

GUIDANCE = float_in(0.0, what="1: no guidance, 0: unconditional")
AUG_LEVEL = float_in(0.0, 1.0)
STRENGTH = float_in(0.0, 1.0, lo_open=True, what="1: from pure noise")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
  source = parser.add_argument_group("stages (--workdir, --pretrained, or both)")
  source.add_argument("--workdir", metavar="DIR",
                      help="a training workdir with one folder per trained stage; with "
                      "--pretrained, its super-resolution stages follow IF's (e.g. a 256 → 1024 "
                      "stage trained on captions encoded by the IF directory)")
  source.add_argument("--pretrained", action="append", metavar="DIR",
                      help="DeepFloyd IF's stage I directory (diffusers format, e.g. "
                      "IF-I-XL-v1.0/), then optionally its stage II (--pretrained "
                      "IF-II-L-v1.0): stages if_I, if_II")
  parser.add_argument("--out", default="samples.png", metavar="PNG",
                      help="the grid (rows: prompts; the last stage's images); individual images "
                      "go next to it, in <out stem>/ (default: %(default)s)")
  parser.add_argument("--seed", type=SEED, default=0, help="in [0, 2^32)")
  parser.add_argument("--guidance", type=GUIDANCE, nargs="+", default=None, metavar="W",
                      help="classifier-free guidance weight >= 0 (1: none), one for all stages or "
                      "one per stage (default: 5 for trained stages; IF's 7 and 4)")
  parser.add_argument("--steps", type=positive_int, default=None,
                      help="sampler steps per stage (default: 25; IF's 100 and 50)")
  parser.add_argument("--sampler", default=None,
                      choices=("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"),
                      help="default: dpmpp_2m; IF's scheduler config's (ddpm)")
  parser.add_argument("--thresholding", default=None, choices=("none", "static", "dynamic"),
                      help="default: dynamic; IF's scheduler config's")
  parser.add_argument("--aug-level", type=AUG_LEVEL, default=None,
                      help="trained SR stages: noise-augmentation level of their inputs, in "
                      "[0, 1] (default: each stage's config)")
  parser.add_argument("--noise-level", type=int_in(0, 999, what="a timestep of IF's image-noising "
                                                     "schedule"), default=None,
                      help="--pretrained: IF stage II's noise level of its upscaled input, a "
                      "timestep 0-999 (default: IF's 250)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="--pretrained: parameter dtype of the U-Nets and T5 (default float32; "
                      "bfloat16 halves their memory)")
  parser.add_argument("--stages", nargs="+", default=None,
                      help="only these stages of --workdir")


def _add_sample_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="text prompts")
  parser.add_argument("--num-per-prompt", type=positive_int, default=1)
  _add_sampling_arguments(parser)


def _add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("image", metavar="IMAGE", help="an image file to upscale")
  parser.add_argument("--prompt", required=True, help="what the image shows")
  _add_sampling_arguments(parser)


def _check_guidance_count(weights: list[float] | None, names: list[str], sr_only: bool) -> None:
  """--guidance: one weight for every stage that runs, or one per stage."""
  if weights and names and len(weights) not in (1, len(names)):
    which = "super-resolution stage" if sr_only else "stage"
    allowed = "1" if len(names) == 1 else f"1 or {len(names)}"
    raise ConfigError(f"--guidance takes one weight or one per {which}: {allowed} "
                      f"({', '.join(names)}), got {len(weights)}")


def _planned_stages(args: argparse.Namespace) -> list[tuple[str, bool, bool]] | None:
  """(name, is super-resolution, is DeepFloyd IF) of every stage the command will load, in
  cascade order, from the --pretrained directories given or the --workdir's stage folders'
  config.json (folders with config.json and checkpoints/, `imagen_jax.cascade.stage_dirs`):
  nothing is loaded. None when it cannot be told that way (the loader then says why)."""
  pretrained = [("if_I", False, True), ("if_II", True, True)][:len(args.pretrained or ())]
  if not args.workdir:
    return pretrained
  workdir = Path(args.workdir)
  if not workdir.is_dir():
    return None
  found = []
  for folder in sorted(workdir.iterdir()):
    if not ((folder / "config.json").is_file() and (folder / "checkpoints").is_dir()) or \
        (args.stages and folder.name not in args.stages):
      continue
    try:
      config = json.loads((folder / "config.json").read_text())
      found.append((int(config["resolution"]), str(config.get("stage") or folder.name),
                    bool(config.get("lowres_resolution")),
                    (config.get("model") or {}).get("kind") == "deepfloyd_if"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
      return None
  if not found or (args.stages and len(found) != len(set(args.stages))):
    return None
  return pretrained + [stage[1:] for stage in sorted(found)]


def _check_sampling_args(args: argparse.Namespace, sr_only: bool = False) -> None:
  """The sampling flags against each other and against the stages that will run (`sr_only`:
  upscale, the super-resolution ones), before anything is loaded."""
  if not args.pretrained and not args.workdir:
    raise ConfigError("no stages: give --workdir DIR (stages trained here), --pretrained DIR "
                      "(DeepFloyd IF's released stages), or both")
  if args.pretrained:
    if len(args.pretrained) > 2:
      raise ConfigError(f"--pretrained takes IF's stage I directory and optionally its stage II, "
                        f"got {len(args.pretrained)} directories")
    if args.stages and not args.workdir:
      raise ConfigError("--stages selects stages of a --workdir; with --pretrained, give only the "
                        "stage directories you want")
  elif args.dtype is not None:
    raise ConfigError("--dtype applies to --pretrained stages (trained stages keep theirs)")
  stages = _planned_stages(args)
  if stages is None:
    return
  if args.aug_level is not None and not any(sr and not is_if for _, sr, is_if in stages):
    raise ConfigError("--aug-level sets the noise augmentation of trained super-resolution "
                      "stages, and none runs here (DeepFloyd IF's stage II takes --noise-level)")
  if args.noise_level is not None and not any(sr and is_if for _, sr, is_if in stages):
    raise ConfigError("--noise-level sets DeepFloyd IF stage II's input noise, and no IF stage II "
                      "runs here (--pretrained IF-I-... --pretrained IF-II-...; trained "
                      "super-resolution stages take --aug-level)")
  _check_guidance_count(args.guidance, [name for name, sr, _ in stages if sr or not sr_only],
                        sr_only)


def _sampling_options(args: argparse.Namespace, stages: list, sr_only: bool = False) -> dict:
  """Each stage's `SamplingOptions` from the flags: --aug-level goes to the trained
  super-resolution stages and --noise-level to DeepFloyd IF's stage II (each kind refuses the
  other's, base stages both)."""
  from imagen_jax.cascade import SamplingOptions, Stage

  _check_guidance_count(args.guidance, [s.name for s in stages], sr_only)
  weights = args.guidance or [None]
  weights = weights * len(stages) if len(weights) == 1 else weights
  options = {}
  for stage, w in zip(stages, weights):
    sr, trained = bool(stage.lowres_resolution), isinstance(stage, Stage)
    options[stage.name] = SamplingOptions(w, args.sampler, args.steps, args.thresholding,
                                          args.aug_level if sr and trained else None,
                                          args.noise_level if sr and not trained else None)
  return options


def _load_cascade(args: argparse.Namespace):
  """The cascade of --workdir (its --stages), or DeepFloyd IF's stages of --pretrained, followed
  by --workdir's super-resolution stages when both are given (flags checked by
  `_check_sampling_args`)."""
  from imagen_jax.cascade import load_cascade

  if not args.pretrained:
    return load_cascade(args.workdir, args.stages)
  from imagen_jax.pretrained import load_if_cascade

  return load_if_cascade(*args.pretrained, dtype=args.dtype, workdir=args.workdir,
                         workdir_stages=args.stages)


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
  prompts = [p for p in args.prompts for _ in range(args.num_per_prompt)]
  if not prompts or any(not p.strip() for p in prompts):
    raise ConfigError("empty prompt: give at least one non-empty prompt")
  _check_sampling_args(args)
  from imagen_jax.cascade import CascadeError

  try:
    cascade = _load_cascade(args)
    images = cascade.sample(prompts, seed=args.seed,
                            options=_sampling_options(args, cascade.stages))
  except CascadeError as e:
    raise ConfigError(str(e)) from e
  _save_outputs(images, prompts, args.out)
  return 0


def _run_upscale(args: argparse.Namespace, overrides: list[str]) -> int:
  if not args.prompt.strip():
    raise ConfigError("empty prompt: describe the image with --prompt")
  _check_sampling_args(args, sr_only=True)
  import numpy as np
  from PIL import Image

  from imagen_jax.cascade import CascadeError

  try:
    picture = Image.open(args.image).convert("RGB")
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read image {args.image}: {e}") from e
  try:
    cascade = _load_cascade(args)
    sr = [s for s in cascade.stages if s.lowres_resolution]
    if not sr:
      source = " and ".join(([f"--pretrained {args.pretrained}"] if args.pretrained else []) +
                            ([f"workdir {args.workdir}"] if args.workdir else []))
      raise CascadeError(f"{source} has no super-resolution stage")
    size = sr[0].lowres_resolution
    low = np.asarray(picture.resize((size, size), Image.BICUBIC), np.float32) / 127.5 - 1.0
    images = cascade.sample([args.prompt], seed=args.seed, lowres=low[None],
                            options=_sampling_options(args, sr, sr_only=True))
  except CascadeError as e:
    raise ConfigError(str(e)) from e
  _save_outputs(images, [args.prompt], args.out)
  return 0


def _add_repair_arguments(parser: argparse.ArgumentParser, inpaint: bool) -> None:
  parser.add_argument("prompt", metavar="PROMPT", help="what the repaired image should show")
  parser.add_argument("--image", required=True, metavar="PNG",
                      help="your image: square, any size (resized to each stage's resolution); "
                      "grayscale, RGBA and 16-bit PNGs are converted")
  if inpaint:
    parser.add_argument("--mask", required=True, metavar="PNG",
                        help="same size as the image: white (> 50%% grey) = fill from the "
                        "prompt, black = keep")
    parser.add_argument("--repaint", type=positive_int, nargs=2, metavar=("JUMP", "RESAMPLINGS"),
                        help="RePaint's resampling (e.g. 10 10; needs --sampler ddpm or ddim): "
                        "fewer seams between kept and filled pixels, at ~2×RESAMPLINGS the "
                        "network calls")
    parser.add_argument("--strength", type=STRENGTH, default=1.0,
                        help="(0, 1]: 1 fills from pure noise; lower keeps more of the "
                        "original under the mask")
  else:
    parser.add_argument("--strength", type=STRENGTH, default=0.6,
                        help="(0, 1]: how far the image is noised before denoising with the "
                        "prompt (1 = text-to-image; 0.2 = close to the input; default "
                        "%(default)s)")
  _add_sampling_arguments(parser)
  parser.set_defaults(out="inpaint.png" if inpaint else "img2img.png")


def _run_repair(args: argparse.Namespace, inpaint: bool) -> int:
  if not args.prompt.strip():
    raise ConfigError("empty prompt: say what the repaired image should show")
  if inpaint and args.repaint and args.strength != 1.0:
    raise ConfigError("--repaint fills from pure noise: leave --strength at 1")
  _check_sampling_args(args)
  import numpy as np
  from PIL import Image

  from imagen_jax.cascade import TRAINED_STAGE_DEFAULTS, CascadeError, resize_images
  from imagen_jax.data import images as image_ops
  from imagen_jax.diffusion import RePaint
  from imagen_jax.diffusion.samplers import MULTISTEP
  from imagen_jax.train.metrics import make_grid, to_uint8

  inputs = [Path(args.image)] + ([Path(args.mask)] if inpaint else [])
  out = Path(args.out)
  folder = out.with_suffix("")
  outputs = [out, folder]
  for given in inputs:
    if not given.is_file():
      raise ConfigError(f"no such file: {given}")
    if any(given.resolve() == o.resolve() or folder.resolve() in given.resolve().parents
           for o in outputs):
      raise ConfigError(f"--out {out} would overwrite or write next to your input {given} "
                        f"(outputs go to {out} and {folder}/): choose another --out")
  try:
    image, notes = image_ops.read_user_image(args.image)
    mask = None
    if inpaint:
      mask, mask_notes = image_ops.read_user_mask(args.mask, image.shape[:2])
      notes += mask_notes
  except ValueError as e:
    raise ConfigError(str(e)) from e
  repaint = None
  if inpaint:
    filled = float(mask.mean())
    if filled == 0.0:
      notes.append("the mask is empty (no white pixels): nothing to fill, so every stage's "
                   "output is your image at its resolution")
    elif filled == 1.0:
      notes.append("the mask covers the whole image: nothing is kept, this is text-to-image")
    else:
      notes.append(f"filling {filled:.1%} of the image")
    if args.repaint:
      repaint = RePaint(*args.repaint)
      # a trained stage's default sampler is DPM-Solver++; IF's is its scheduler's (DDPM)
      sampler = args.sampler or (TRAINED_STAGE_DEFAULTS["sampler"] if args.workdir else "")
      if sampler in MULTISTEP:
        raise ConfigError("--repaint needs an ancestral sampler: add --sampler ddpm (or ddim)")
  try:
    cascade = _load_cascade(args)
    sizes = [s.resolution for s in cascade.stages]
    if image.shape[0] not in sizes:
      notes.append(f"{args.image}: {image.shape[0]} px, resized to each stage's resolution "
                   f"({', '.join(f'{r} px' for r in sizes)})")
    for note in notes:
      print(f"note: {note}")
    if inpaint and float(mask.mean()) == 0.0:
      images = {s.name: resize_images(image[None], s.resolution) for s in cascade.stages}
    else:
      images = cascade.repair([args.prompt], image[None],
                              mask=None if mask is None else mask[None],
                              strength=args.strength, repaint=repaint, seed=args.seed,
                              options=_sampling_options(args, cascade.stages))
  except CascadeError as e:
    raise ConfigError(str(e)) from e
  final = list(images.values())[-1]
  size = final.shape[1]
  cells = [resize_images(image[None], size)]
  if inpaint:
    cells.append(np.repeat(resize_images(mask[None, ..., None], size), 3, axis=-1) * 2.0 - 1.0)
  cells += [np.asarray(Image.fromarray(to_uint8(x[0])).resize((size, size), Image.NEAREST),
                       np.float32)[None] / 127.5 - 1.0 for x in images.values()]
  out.parent.mkdir(parents=True, exist_ok=True)
  folder.mkdir(exist_ok=True)
  for name, batch in images.items():
    Image.fromarray(to_uint8(batch[0])).save(folder / f"stage_{name}.png")
  Image.fromarray(to_uint8(final[0])).save(folder / "result.png")
  Image.fromarray(make_grid(np.concatenate(cells), ncols=len(cells))).save(out)
  (folder / "prompt.txt").write_text(args.prompt + "\n")
  columns = ["input"] + (["mask"] if inpaint else []) + [f"{n} output" for n in images]
  print(f"result: {folder / 'result.png'} ({size} px); per-stage images in {folder}/; grid "
        f"({', '.join(columns)}): {out}")
  return 0


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, metavar="DIR", help="a trained workdir")
  parser.add_argument("--dataset",
                      help="prepared TFDS dataset ('tfds:<dir>' or a dir) whose captions are the "
                      "prompts and whose images are the references (default: the dataset the "
                      "workdir's first stage was trained on, as its config.json records it)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--num", type=positive_int, default=64, help="prompts to evaluate")
  parser.add_argument("--guidance", type=GUIDANCE, nargs="+", default=[1.0, 3.0, 5.0, 8.0],
                      metavar="W", help="guidance weights >= 0 (1: none), one row of scores "
                      "each")
  parser.add_argument("--thresholding", nargs="+", default=["static", "dynamic"],
                      choices=("none", "static", "dynamic"))
  parser.add_argument("--steps", type=positive_int, default=25)
  parser.add_argument("--seed", type=SEED, default=0, help="in [0, 2^32)")
  parser.add_argument("--sr-guidance", type=GUIDANCE, default=1.0,
                      help="guidance weight of the SR stages for PSNR/SSIM (default 1: unguided)")
  parser.add_argument("--sr-guidance-cascade", type=GUIDANCE, default=None,
                      help="guidance weight of the SR stages when the whole cascade samples the "
                      "prompts (default: each row's --guidance weight)")
  parser.add_argument("--aug-level", type=AUG_LEVEL, default=None,
                      help="SR stages' noise-augmentation level at sampling, in [0, 1] (default: "
                      "each stage's config.diffusion.aug_sample_level)")
  parser.add_argument("--fashion-classifier", metavar="DIR",
                      help="for fashion_mnist_captions: where the Fashion-MNIST classifier is "
                      "cached (trained there on first use, ~1 min; default: "
                      "<workdir>/fashion_classifier)")
  parser.add_argument("--out", metavar="JSON", help="also write the rows as JSON")


def trained_dataset(cascade, workdir: str | Path) -> str:
  """The dataset the cascade's first stage was trained on, from its config.json (paths inside the
  workdir are recorded relative to it, so a moved workdir still finds its data)."""
  from imagen_jax.cascade import CascadeError
  from imagen_jax.paths import resolve_path

  config = getattr(cascade.stages[0], "config", None)
  recorded = config.data.dataset if config is not None else ""
  if not recorded:
    raise CascadeError(f"the workdir {workdir} does not record a dataset: pass --dataset DIR")
  return resolve_path(recorded, workdir)


def _run_eval(args: argparse.Namespace, overrides: list[str]) -> int:
  from imagen_jax.cascade import CascadeError, load_cascade
  from imagen_jax.eval.run import evaluate_cascade, format_rows, write_rows

  try:
    cascade = load_cascade(args.workdir)
    dataset = args.dataset or trained_dataset(cascade, args.workdir)
    classifier = args.fashion_classifier
    if classifier is None and "fashion" in dataset:
      classifier = str(Path(args.workdir) / "fashion_classifier")
    rows = evaluate_cascade(cascade, dataset, split=args.split, num=args.num,
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


COMMANDS: tuple[Command, ...] = (
    Command(
        name="sample",
        help="text → images through every trained stage of a workdir",
        description=(
            "Encode the prompts with the stages' text encoder, sample the base stage, then each "
            "super-resolution stage conditioned on the previous output (EMA weights; classifier-"
            "free guidance; dynamic thresholding by default). Writes a PNG grid and the "
            "individual images of every stage. With --pretrained, DeepFloyd IF's stage I (and "
            "II) as diffusers' IFPipeline (and IFSuperResolutionPipeline) sample them."),
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
        name="inpaint",
        help="fill the white region of --mask in your --image from a prompt, through every stage",
        description=(
            "Inpaint: at every step the kept pixels are replaced by your image noised to the "
            "current level, the rest is denoised with the prompt (classifier-free guidance); "
            "each super-resolution stage inpaints its own resolution with the image and mask "
            "resized to it, so kept pixels stay kept. --repaint adds RePaint's resampling. "
            "Writes the result, every stage's image and a grid (input, mask, outputs)."),
        add_arguments=lambda p: _add_repair_arguments(p, inpaint=True),
        run=lambda args, overrides: _run_repair(args, inpaint=True),
        takes_config=False,
    ),
    Command(
        name="img2img",
        help="re-render your --image from a prompt at a --strength, through every stage",
        description=(
            "Image-to-image (SDEdit): your image is noised to the level where --strength of the "
            "sampler's steps remain and denoised from there with the prompt, at every stage "
            "(SR stages conditioned on the previous stage's output). Writes the result, every "
            "stage's image and a grid (input, outputs)."),
        add_arguments=lambda p: _add_repair_arguments(p, inpaint=False),
        run=lambda args, overrides: _run_repair(args, inpaint=False),
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
)
