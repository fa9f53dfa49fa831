"""`imagen-jax demo` (what `make demo` runs): the whole cascade, end to end, on this CPU.

  1. build the `shapes` dataset (procedural scenes, compositional captions; no download);
  2. build the embedded tiny T5 + tokenizer and encode every caption into the cache;
  3. train a tiny base stage (text → 32 px; first on scenes of two large objects, then on all:
     `config.curriculum`) and a tiny super-resolution stage (32 → 64 px);
  4. sample a grid for a fixed list of prompts through both stages and write it as PNG;
  5. score the samples: exact shapes alignment (colour, shape, size, position recovered from the
     pixels and compared with the prompt) on held-out prompts, and PSNR/SSIM of the SR stage
     against the real 64 px images.

Each step is resumable: re-running the demo reuses the dataset, the cache and the checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from imagen_jax.configlib import CONFIGS_DIR, apply_overrides, config_with, load_config


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts as one level of dotted keys ({'a': {'b': 1}} → {'a.b': 1}), as overrides are."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def tiny_stage_config(name: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """`configs/<name>.py:tiny` with (nested or dotted) overrides on top (the Colab notebook's
  stages, which set their own mesh and dataset)."""
  return config_with(f"{name}.py:tiny", flatten(overrides))


def demo_stage_config(name: str, overrides: dict[str, Any], *, dataset: str | Path,
                      max_length: int) -> ml_collections.ConfigDict:
  """`tiny_stage_config` as the demo trains it on this machine — on `dataset`, captions cached at
  `max_length` tokens, one device, one input thread — with `overrides` (the demo's recipe for the
  stage, an ablation's changes) on top."""
  machine = {"data.dataset": str(dataset), "text.max_length": max_length,
             "mesh.num_devices": 1, "data.num_threads": 1}
  return tiny_stage_config(name, {**machine, **flatten(overrides)})


def _section(title: str) -> None:
  print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def prepare_inputs(config: ml_collections.ConfigDict, workdir: Path):
  """Steps 1–2: the shapes dataset under `workdir/data` and its caption cache (embedded tiny T5);
  returns the built dataset (`.directory`, `.splits`). Reused when already there."""
  _section("1/5 dataset: shapes")
  data = build_shapes(config, workdir)
  print(f"{data.directory}: {data.splits}")

  pretrain = pretrain_spec(config)
  _section("2/5 text: embedded tiny T5" + (", pretrained on the captions' language" if pretrain
                                           else "") + ", caption cache")
  encode_dataset(data.directory, workdir, config.text_max_length, progress=config.progress,
                 pretrain=pretrain)
  return data


def build_shapes(config: ml_collections.ConfigDict, workdir: Path, **changes):
  """The shapes dataset of `config.data` (with `changes` to its scenes) under `workdir/data`."""
  from imagen_jax.data import build_dataset

  d = config.data
  kwargs = dict(resolution=d.resolution, num_train=d.num_train, num_test=d.num_test,
                seed=d.seed, p_two=d.p_two, shapes=tuple(d.shapes), sizes=tuple(d.sizes),
                relations=tuple(d.relations), relation_weights=tuple(d.relation_weights))
  return build_dataset("shapes", workdir / "data", **{**kwargs, **changes})


def pretrain_spec(config: ml_collections.ConfigDict):
  """(task, settings) of the embedded T5's text pretraining (the scenes of `config.data`), or
  None (`text_pretrain.steps` 0)."""
  if not config.text_pretrain.steps:
    return None
  from imagen_jax.text.pretrain import shapes_reading_task

  d, settings = config.data, config.text_pretrain.to_dict()
  task = shapes_reading_task(d.p_two, tuple(d.shapes), tuple(d.sizes), tuple(d.relations),
                             tuple(d.relation_weights), paired=settings.pop("paired"))
  if settings["data_seed"] < 0:  # -1: `seed` (pretrain_t5's None)
    settings["data_seed"] = None
  return task, {**settings, "max_length": config.text_max_length}


def encode_dataset(dataset_dir: Path, workdir: Path, max_length: int, progress: bool = True,
                   pretrain=None, cache_dir: str | None = None) -> None:
  """The train and test captions of a prepared dataset into `workdir`'s caption cache (or
  `cache_dir`), with the embedded tiny T5 (built in `workdir/text` from the train captions on
  first use; `pretrain`: see `imagen_jax.text.default.build_default_t5`)."""
  from imagen_jax.text.encode import run_encode

  text = load_config(str(CONFIGS_DIR / "text.py"))
  apply_overrides(text, [f"data.captions=tfds:{dataset_dir}", "data.splits=train,test",
                         f"text.max_length={max_length}"]
                  + ([f"text.cache_dir={cache_dir}"] if cache_dir else []))
  run_encode(text, workdir, progress=progress, pretrain=pretrain)


CURRICULUM_CACHE = "{workdir}/curriculum_cache"


def curriculum_stage(config: ml_collections.ConfigDict, workdir: Path,
                     base: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The first phase of the base stage `base` (`config.curriculum`), or None (`fraction` 0):
  `base` itself for the first `fraction` of its steps, on easier scenes — by default two large
  objects in every scene — with `curriculum.base`'s overrides (the high-noise band, where a
  layout is decided), their captions encoded by the same T5 into their own cache; `base` then
  continues from its checkpoint on the demo's scenes. Small objects are what keep the full
  task from learning where each object goes (RESULTS, issue 17 §16–17): two large objects sit
  in their own halves, there the relation is learnt in 2000 steps, and it carries over to small
  ones."""
  cur = config.curriculum
  _check_curriculum(cur)
  steps = int(round(cur.fraction * base.train.num_steps))
  if not steps:
    return None
  data = build_shapes(config, workdir, p_two=cur.p_two, shapes=tuple(cur.shapes),
                      sizes=tuple(cur.sizes), num_test=cur.num_test)
  encode_dataset(data.directory, workdir, config.text_max_length, progress=config.progress,
                 pretrain=pretrain_spec(config), cache_dir=CURRICULUM_CACHE)
  first = ml_collections.ConfigDict(base.to_dict())  # the same stage: model, optimizer, ...
  changes = {**flatten(cur.base.to_dict()), "data.dataset": str(data.directory),
             "text.cache_dir": CURRICULUM_CACHE,
             "train.num_steps": steps}  # its own learning-rate schedule; `base` resumes on its own
  return apply_overrides(first, [f"{k}={v}" for k, v in changes.items()])


def _check_curriculum(cur: ml_collections.ConfigDict) -> None:
  if not 0 <= cur.fraction < 1:
    raise ValueError(f"curriculum.fraction {cur.fraction}: the share of the base steps spent on "
                     "the easier scenes, in [0, 1) (0: no curriculum)")


def check_demo_config(config: ml_collections.ConfigDict) -> None:
  """What the demo would otherwise reject only after minutes of training — its sampling settings
  and its curriculum — checked before anything runs: a ValueError naming the field."""
  from imagen_jax.cascade import SamplingOptions

  s = config.sample
  try:
    for weight in (s.guidance_weight, s.sr_guidance_weight):
      SamplingOptions(weight, s.sampler, s.num_steps, s.thresholding).sampler_config()
  except ValueError as e:
    raise ValueError(f"config.sample: {e}") from None
  _check_curriculum(config.curriculum)


def train_base(config: ml_collections.ConfigDict, workdir: Path,
               base: ml_collections.ConfigDict) -> dict[str, Any]:
  """The base stage `base` trained in `workdir`, after the curriculum's first phase
  (`curriculum_stage`; skipped when a checkpoint is already past it). Its step count is recorded
  (`BUDGET_RECORD`) so that a re-run leaving the count to the budget resumes this run. Returns
  `train`'s summary of the last phase trained."""
  from imagen_jax.train.checkpoint import stage_checkpoint_steps
  from imagen_jax.train.loop import train

  from imagen_jax.text.cache import write_json_atomic

  workdir.mkdir(parents=True, exist_ok=True)  # a re-run resumes this count, whoever chose it
  write_json_atomic(workdir / BUDGET_RECORD, {"train": {"num_steps": base.train.num_steps}})
  first = curriculum_stage(config, workdir, base)
  done = max(stage_checkpoint_steps(workdir / base.stage), default=0)
  if first is not None and done < first.train.num_steps:
    cur = config.curriculum
    print(f"[curriculum] base steps 1–{first.train.num_steps} of {base.train.num_steps} on "
          f"scenes of {' and '.join(cur.sizes)} objects ({cur.p_two:.0%} with two), with "
          f"{flatten(cur.base.to_dict())}; then the demo's scenes", flush=True)
    summary = train(first, workdir, progress=config.progress)
    if summary["stopped"]:
      return summary
  return train(base, workdir, progress=config.progress)


def run_demo(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Run the demo described in the module docstring; returns (and writes) its metrics."""
  from imagen_jax.cascade import load_cascade
  from imagen_jax.train.loop import train
  from imagen_jax.train.metrics import make_grid

  check_demo_config(config)
  workdir = Path(workdir)
  t0 = time.time()
  data = prepare_inputs(config, workdir)
  machine = {"dataset": data.directory, "max_length": config.text_max_length}
  _section(f"3/5 train the base stage (text → {config.base.resolution} px)")
  base = demo_stage_config("base64", config.base.to_dict(), **machine)
  if not base.train.num_steps:
    base.train.num_steps = size_base_training(config.budget, base, workdir, time.time() - t0)
  if train_base(config, workdir, base)["stopped"]:
    raise SystemExit("demo interrupted (SIGTERM) during base training; re-run to resume")
  _section(f"3/5 train the super-resolution stage ({config.sr.lowres_resolution} → {config.sr.resolution} px)")
  sr = demo_stage_config("sr256", config.sr.to_dict(), **machine)
  if train(sr, workdir, progress=config.progress)["stopped"]:
    raise SystemExit("demo interrupted (SIGTERM) during SR training; re-run to resume")

  _section("4/5 sample the cascade")
  cascade = load_cascade(workdir, ["base64", "sr256"])
  opts = sampling_options(config.sample, cascade.stages)
  prompts = list(config.sample.prompts)
  images = cascade.sample(prompts, seed=config.sample.seed, options=opts)
  grid_path = workdir / "demo_grid.png"
  _write_grid(grid_path, [images["base64"], images["sr256"]], make_grid)
  print(f"grid ({len(prompts)} prompts; top: base {config.base.resolution} px upsampled, bottom: "
        f"SR {config.sr.resolution} px): {grid_path}")

  _section("5/5 evaluate")
  metrics = {"prompts": prompts, "minutes": None, "base_steps": base.train.num_steps,
             "sr_steps": sr.train.num_steps,
             "sampling": {k: config.sample[k] for k in ("sampler", "num_steps",
                                                         "guidance_weight", "sr_guidance_weight",
                                                         "thresholding")}}
  metrics.update(_evaluate(cascade, data.directory, config))
  metrics["minutes"] = round((time.time() - t0) / 60, 2)
  (workdir / "demo_metrics.json").write_text(json.dumps(metrics, indent=2))
  print(json.dumps({k: v for k, v in metrics.items() if k != "prompts"}, indent=2))
  print(f"\ngrid: {grid_path}\nmetrics: {workdir / 'demo_metrics.json'} "
        f"(total {metrics['minutes']} min)")
  return metrics


def sampling_options(sample: ml_collections.ConfigDict, stages) -> dict[str, Any]:
  """The demo's `sample` settings as each stage's `SamplingOptions`: the base stage at
  `guidance_weight`, SR stages at `sr_guidance_weight`."""
  from imagen_jax.cascade import SamplingOptions

  return {s.name: SamplingOptions(sample.sr_guidance_weight if s.lowres_resolution else
                                  sample.guidance_weight, sample.sampler, sample.num_steps,
                                  sample.thresholding) for s in stages}


BUDGET_RECORD = "base_budget.json"  # the base step count the budget chose (all phases)


def budget_base_steps(budget: ml_collections.ConfigDict, *, elapsed_s: float,
                      step_s: float) -> int:
  """How many base steps fit the demo's time budget: the minutes left after `elapsed_s` divided
  by a training-loop step (the step alone, `step_s`, times `budget.loop_overhead` for the input
  pipeline, logging and checkpoints), less what the rest of the demo costs (SR training, the
  grid, the evaluation: about `budget.rest_in_base_steps` base steps on any machine, as
  measured); within [`min_base_steps`, `max_base_steps`]."""
  loop_step_s = step_s * budget.loop_overhead
  fit = int((budget.minutes * 60 - elapsed_s) / loop_step_s) - budget.rest_in_base_steps
  return min(max(fit, budget.min_base_steps), budget.max_base_steps)


def size_base_training(budget: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
                       workdir: Path, elapsed_s: float) -> int:
  """The base stage's step count when the demo config leaves it to the budget
  (`base.train.num_steps=0`): the count this workdir's base stage was started with (so a
  re-run resumes the same run), else the count that fits `budget.minutes` on this machine, from
  the base train step timed here (`measure_step_seconds`). Shape and size are learnt late
  (RESULTS, issue 17 §7: shape 0.51 at 3000 steps, 0.91 at 6000), so a faster machine spends
  its spare minutes on base steps."""
  from imagen_jax.text.cache import write_json_atomic
  from imagen_jax.train.loop import measure_step_seconds

  recorded = workdir / BUDGET_RECORD
  if not recorded.exists():  # a workdir from before the record (its run had one phase)
    recorded = workdir / base.stage / "config.json"
  if recorded.exists():
    started = json.loads(recorded.read_text())
    steps = started.get("train", {}).get("num_steps")
    if started.get("text", {}).get("cache_dir") == CURRICULUM_CACHE:
      steps = None  # the curriculum's first phase, stopped there: its count is not the run's
    if steps:
      print(f"[budget] base stage: {steps} steps, as this workdir's run was started "
            "(--config.base.train.num_steps=N sets another count)")
      return int(steps)
  probe = ml_collections.ConfigDict(base.to_dict())
  probe.train.num_steps = budget.max_base_steps  # the step train() reuses if it trains that many
  timed = measure_step_seconds(probe)
  elapsed_s += timed["compile_s"] + 25 * timed["step_s"]
  steps = budget_base_steps(budget, elapsed_s=elapsed_s, step_s=timed["step_s"])
  workdir.mkdir(parents=True, exist_ok=True)
  write_json_atomic(workdir / BUDGET_RECORD, {"train": {"num_steps": steps}})
  capped = (" (the most it takes)" if steps == budget.max_base_steps else
            " (the least it takes: this machine may need more than the budget)"
            if steps == budget.min_base_steps else "")
  print(f"[budget] base train step {1e3 * timed['step_s']:.0f} ms on this machine (compiled in "
        f"{timed['compile_s']:.0f} s); {elapsed_s / 60:.1f} of the {budget.minutes:g} min "
        f"budget spent → {steps} base steps{capped} "
        "(--config.base.train.num_steps=N sets the count)", flush=True)
  return steps


def _write_grid(path: Path, rows: list[np.ndarray], make_grid) -> None:
  from PIL import Image

  size = rows[-1].shape[1]
  resized = []
  for row in rows:
    if row.shape[1] != size:
      reps = size // row.shape[1]
      row = row.repeat(reps, axis=1).repeat(reps, axis=2)
    resized.append(row)
  stacked = np.concatenate(resized)
  Image.fromarray(make_grid(stacked, ncols=len(rows[0]))).save(path)


def _evaluate(cascade, dataset_dir: Path, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`imagen-jax eval` at the demo's sampling settings: the cascade's final images for held-out
  test prompts scored by the exact shapes scorer (one-object prompts: colour, shape, size;
  two-object prompts: the relation), the base stage's own images, the SR stage on the real
  low-res test images (PSNR/SSIM and the scorer, bicubic as the baseline), and the scorer on the
  real images themselves (its ceiling)."""
  from imagen_jax.data import images as image_ops
  from imagen_jax.eval.run import evaluate_cascade, read_split, shapes_alignment

  sample = config.sample
  rows = evaluate_cascade(cascade, str(dataset_dir), split="test", num=config.eval.num_prompts,
                          guidance=[sample.guidance_weight], thresholding=[sample.thresholding],
                          sr_guidance_cascade=sample.sr_guidance_weight,
                          steps=sample.num_steps, seed=sample.seed + 1,
                          sampler=sample.sampler)
  captions, real = read_split(str(dataset_dir), "test", config.eval.num_prompts)
  real_hi = image_ops.signed_batch(real, cascade.stages[-1].resolution)
  cascade_row, sr = rows[0], rows[-1]
  pick = lambda row, prefix: {k.removeprefix(prefix): v for k, v in row.items()
                              if k.startswith(prefix)}
  return {"final_alignment": pick(cascade_row, "final_"),
          "base_alignment": pick(cascade_row, "align_"),
          "real_images_alignment": pick(shapes_alignment(real_hi, captions, ""), ""),
          "sr_psnr": sr["psnr"], "sr_ssim": sr["ssim"], "sr_align_all": sr["align_all"],
          "bicubic_psnr": sr["bicubic_psnr"], "bicubic_ssim": sr["bicubic_ssim"],
          "bicubic_align_all": sr["bicubic_align_all"]}
