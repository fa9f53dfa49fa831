"""Bad flag values of every `imagen-jax` subcommand are one-line usage errors (exit code 2), never a
traceback, and fail before anything runs: no JAX, no model, no dataset, no file written.

Out-of-range values fail while argparse parses the command line (the `type=` helpers of
imagen_jax.cli.command); flags that contradict each other, or the stages a workdir holds, fail at
the start of the command (a ConfigError). Each case takes milliseconds.
"""

import ast
import json
import re
import sys
import time
from pathlib import Path

import pytest

from imagen_jax import cli
from imagen_jax.cli import command

ROOT = Path(__file__).resolve().parents[1]
# Modules that would mean a command started working (they are imported only inside run functions).
HEAVY = ("jax", "flax", "tensorflow_datasets", "torch", "imagen_jax.cascade", "imagen_jax.plan",
         "imagen_jax.data")
ERROR_LINE = re.compile(r"^imagen-jax( [a-z0-9]+)?: error: ")

SAMPLING = {  # the sampling subcommands, with their required arguments
    "sample": ["sample", "a red circle", "--workdir", "w"],
    "upscale": ["upscale", "in.png", "--prompt", "a red circle", "--workdir", "w"],
    "inpaint": ["inpaint", "a red circle", "--image", "in.png", "--mask", "m.png",
                "--workdir", "w"],
    "img2img": ["img2img", "a red circle", "--image", "in.png", "--workdir", "w"],
}
SAMPLING_CASES = [  # (flags, message) for each of SAMPLING
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-3"], "--steps must be a positive integer, got -3"),
    (["--steps", "2.5"], "--steps must be a positive integer, got '2.5'"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
    (["--seed", str(2 ** 32)], "--seed must be an integer in [0, 4294967295], got 4294967296"),
    (["--guidance", "-1"], "--guidance must be a number >= 0"),
    (["--guidance", "3", "nan"], "--guidance must be a number >= 0 (1: no guidance, 0: "
     "unconditional), got nan"),
    (["--guidance", "inf"], "--guidance must be a number >= 0"),
    (["--aug-level", "1.5"], "--aug-level must be in [0, 1], got 1.5"),
    (["--aug-level", "-0.1"], "--aug-level must be in [0, 1], got -0.1"),
    (["--noise-level", "1000"], "--noise-level must be an integer in [0, 999]"),
    (["--noise-level", "-1"], "--noise-level must be an integer in [0, 999]"),
    (["--dtype", "bfloat16"], "--dtype applies to --pretrained stages"),
]
PRETRAINED_CASES = [  # (flags replacing --workdir, message) for each of SAMPLING
    (["--pretrained", "a", "--pretrained", "b", "--pretrained", "c"],
     "--pretrained takes IF's stage I directory and optionally its stage II, got 3"),
    (["--pretrained", "a", "--stages", "if_I"], "--stages selects stages of a --workdir"),
    (["--pretrained", "a", "--pretrained", "b", "--aug-level", "0.2"],
     "--aug-level sets the noise augmentation of trained super-resolution stages"),
]

CASES = [(SAMPLING[name] + flags, message) for name in SAMPLING
         for flags, message in SAMPLING_CASES]
CASES += [(SAMPLING[name][:-2] + flags, message) for name in SAMPLING
          for flags, message in PRETRAINED_CASES]
CASES += [
    (["sample", "p", "--pretrained", "a", "--noise-level", "100"],
     "--noise-level sets DeepFloyd IF stage II's input noise, and no IF stage II runs here"),
    (["sample", "p", "--pretrained", "a", "--pretrained", "b", "--guidance", "7", "4", "2"],
     "--guidance takes one weight or one per stage: 1 or 2 (if_I, if_II), got 3"),
    (["upscale", "in.png", "--prompt", "p", "--pretrained", "a", "--pretrained", "b",
      "--guidance", "7", "4"],
     "--guidance takes one weight or one per super-resolution stage: 1 (if_II), got 2"),
    (SAMPLING["sample"] + ["--num-per-prompt", "0"], "--num-per-prompt must be a positive integer"),
    (SAMPLING["inpaint"] + ["--strength", "0"], "--strength must be in (0, 1] (1: from pure "
     "noise), got 0"),
    (SAMPLING["inpaint"] + ["--strength", "1.01"], "--strength must be in (0, 1]"),
    (SAMPLING["inpaint"] + ["--repaint", "0", "10"], "--repaint must be a positive integer, got 0"),
    (SAMPLING["inpaint"] + ["--repaint", "10", "-2"], "--repaint must be a positive integer"),
    (SAMPLING["inpaint"] + ["--repaint", "10", "10", "--strength", "0.5"],
     "--repaint fills from pure noise: leave --strength at 1"),
    (SAMPLING["img2img"] + ["--strength", "0"], "--strength must be in (0, 1]"),
    (SAMPLING["img2img"] + ["--strength", "-0.5"], "--strength must be in (0, 1]"),
    (SAMPLING["img2img"] + ["--strength", "2"], "--strength must be in (0, 1]"),
    (SAMPLING["img2img"] + ["--strength", "nan"], "--strength must be in (0, 1]"),
]
EVAL = ["eval", "--workdir", "w"]
CASES += [
    (EVAL + ["--num", "0"], "--num must be a positive integer, got 0"),
    (EVAL + ["--steps", "0"], "--steps must be a positive integer"),
    (EVAL + ["--seed", "-5"], "--seed must be an integer in [0, 4294967295]"),
    (EVAL + ["--guidance", "1", "-2"], "--guidance must be a number >= 0"),
    (EVAL + ["--sr-guidance", "-1"], "--sr-guidance must be a number >= 0"),
    (EVAL + ["--sr-guidance-cascade", "-1"], "--sr-guidance-cascade must be a number >= 0"),
    (EVAL + ["--aug-level", "2"], "--aug-level must be in [0, 1]"),
]
TRAIN = ["train", "--config", "configs/base64.py:tiny", "--workdir", "w"]
CASES += [
    (TRAIN + ["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes must be a positive integer, got 0"),
    (TRAIN + ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"],
     "--process-id must be a non-negative integer, got -1"),
    (TRAIN + ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 1] with --num-processes 2, got 2"),
    (TRAIN + ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT with PORT in [1, 65535]"),
    (TRAIN + ["--coordinator", "h:70000"], "--coordinator must be HOST:PORT"),
    (TRAIN + ["--coordinator", "h:1"], "--coordinator needs --num-processes and --process-id"),
    (TRAIN + ["--num-processes", "2", "--process-id", "0"],
     "--num-processes and --process-id go with --coordinator"),
    (TRAIN + ["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id",
              "0"], "give --distributed"),
]
EXPORT = ["export", "--workdir", "w", "--stage", "if_I", "--out", "o"]
CASES += [
    (EXPORT + ["--step", "-1"], "--step must be a non-negative integer, got -1"),
    (EXPORT + ["--step", "last"], "--step must be a non-negative integer, got 'last'"),
]
PLAN = ["plan", "--config", "configs/base64.py:tiny"]
CASES += [
    (PLAN + ["--topology", "tpu"], "--topology must be GENERATION:CHIPS with GENERATION one of "
     "v3, v4, v5e, v5p, v6e"),
    (PLAN + ["--topology", "v9:2x2"], "--topology must be GENERATION:CHIPS"),
    (PLAN + ["--topology", "v5e:0x4"], "--topology must be GENERATION:CHIPS"),
    (PLAN + ["--topology", "v5e:2x2", "--mesh", "data:8"], "--mesh must be AXIS=SIZE,..."),
    (PLAN + ["--topology", "v5e:2x2", "--mesh", "data=0"], "--mesh must be AXIS=SIZE,..."),
    (PLAN + ["--topology", "v5e:2x2", "--mesh", "data=-1,fsdp=-1"], "got 'data=-1,fsdp=-1'"),
    (PLAN + ["--topology", "v5e:2x2", "--mesh", "data=2,data=2"], "--mesh must be AXIS=SIZE"),
    (PLAN + ["--topology", "v5e:2x2", "--mesh", "model=2"], "with each AXIS one of data, fsdp, "
     "tensor"),
    (PLAN + ["--topology", "v5e:2x2", "--sample-batch", "0"],
     "--sample-batch must be a positive integer, got 0"),
]


def _data(dataset, *options):
  return ["data", "--dataset", dataset, "--data-dir", "d"] + [
      x for o in options for x in ("--option", o)]


CASES += [
    (_data("shapes", "resolution"), "--option must look like KEY=VALUE, e.g. resolution=64, got "
     "'resolution'"),
    (_data("shapes", "=64"), "--option must look like KEY=VALUE"),
    (_data("shapes", "resolution=0"), "--option resolution must be a positive integer, got 0"),
    (_data("shapes", "resolution=64.0"), "--option resolution must be a positive integer"),
    (_data("shapes", "num_train=0"), "--option num_train must be a positive integer, got 0"),
    (_data("shapes", "num_test=-1"), "--option num_test must be a positive integer, got -1"),
    (_data("shapes", "seed=-1"), "--option seed must be a non-negative integer, got -1"),
    (_data("shapes", "seed=abc"), "--option seed must be a non-negative integer"),
    (_data("shapes", "p_two=1.5"), "--option p_two must be in [0, 1]"),
    (_data("shapes", "resolution=32", "resolution=64"), "--option resolution given twice"),
    (_data("fashion_mnist_captions", "max_per_split=0"), "--option max_per_split must be a "
     "positive integer"),
    (_data("emoji_captions", "test_percent=0"), "--option test_percent must be an integer in "
     "[1, 99]"),
    (_data("emoji_captions", "test_percent=100"), "--option test_percent must be an integer in "
     "[1, 99]"),
    (_data("emoji_captions", "background=(1,2)"), "--option background must be an RGB triple"),
    (_data("emoji_captions", "background=(0,0,256)"), "--option background must be an RGB triple"),
    (_data("emoji_captions", "template={name}"), "--option template must be a caption whose only "
     "placeholder is {}"),
    (_data("captioned_folder", "folder=x", "test_percent=100"), "--option test_percent must be an "
     "integer in [0, 99]"),
    (_data("captioned_folder", "folder=x", "resolution=-8"), "--option resolution must be a "
     "positive integer"),
]


@pytest.fixture(scope="module", autouse=True)
def _whole_file_is_fast():
  start = time.perf_counter()
  yield
  assert time.perf_counter() - start < 10.0, "argument checks must not start any work"


def _run(argv, capsys):
  """cli.main(argv) → (exit code, stderr lines, seconds, heavy modules it imported)."""
  before = set(sys.modules)
  start = time.perf_counter()
  code = cli.main(argv)
  elapsed = time.perf_counter() - start
  imported = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in HEAVY or
                    m.startswith(HEAVY))
  captured = capsys.readouterr()
  assert captured.out == ""
  return code, captured.err.strip().splitlines(), elapsed, imported


def _assert_usage_error(code, lines, elapsed, imported, message):
  assert code == 2
  assert lines and not any("Traceback" in line for line in lines), lines
  assert [line for line in lines if "error:" in line] == [lines[-1]], lines
  assert ERROR_LINE.match(lines[-1]), lines[-1]
  assert message in lines[-1], lines[-1]
  assert imported == [], f"started working: imported {imported}"
  assert elapsed < 1.0, f"{elapsed:.2f} s"


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_is_a_one_line_usage_error(argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # every path in argv is relative: nothing may appear here
  _assert_usage_error(*_run(argv, capsys), message)
  assert list(tmp_path.iterdir()) == []


def _fake_workdir(root: Path) -> Path:
  """A workdir as `imagen-jax sample` finds its stages: folders with config.json and
  checkpoints/ (empty: nothing is loaded before the flags are checked against the stages)."""
  for stage, resolution, lowres in (("base64", 64, 0), ("sr256", 256, 64)):
    (root / "w" / stage / "checkpoints").mkdir(parents=True)
    (root / "w" / stage / "config.json").write_text(json.dumps(
        {"stage": stage, "resolution": resolution, "lowres_resolution": lowres,
         "model": {"kind": "imagen"}}))
  (root / "w" / "text_cache").mkdir()  # not a stage
  return root / "w"


WORKDIR_CASES = [
    (["sample", "p", "--guidance", "5", "3", "1"],
     "--guidance takes one weight or one per stage: 1 or 2 (base64, sr256), got 3"),
    (["sample", "p", "--stages", "base64", "--guidance", "5", "3"],
     "--guidance takes one weight or one per stage: 1 (base64), got 2"),
    (["img2img", "p", "--image", "in.png", "--guidance", "5", "3", "1"], "1 or 2 (base64, sr256)"),
    (["inpaint", "p", "--image", "in.png", "--mask", "m.png", "--guidance", "1", "2", "3"],
     "1 or 2 (base64, sr256), got 3"),
    (["upscale", "in.png", "--prompt", "p", "--guidance", "5", "3"],
     "--guidance takes one weight or one per super-resolution stage: 1 (sr256), got 2"),
    (["sample", "p", "--noise-level", "100"], "--noise-level sets DeepFloyd IF stage II's"),
    (["sample", "p", "--stages", "base64", "--aug-level", "0.1"],
     "--aug-level sets the noise augmentation of trained super-resolution stages, and none runs "
     "here"),
]


@pytest.mark.parametrize("argv, message", WORKDIR_CASES,
                         ids=[" ".join(a) for a, _ in WORKDIR_CASES])
def test_flags_against_the_workdirs_stages(argv, message, capsys, tmp_path, monkeypatch):
  """Checked against the stages' config.json before any stage is loaded."""
  monkeypatch.chdir(tmp_path)
  workdir = _fake_workdir(tmp_path)
  files = sorted(tmp_path.rglob("*"))
  _assert_usage_error(*_run(argv + ["--workdir", str(workdir)], capsys), message)
  assert sorted(tmp_path.rglob("*")) == files


def _module_constant(path: Path, name: str):
  """The literal value assigned to `name` at the top of a module (read, not imported: JAX)."""
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign) and [t.id for t in node.targets
                                         if isinstance(t, ast.Name)] == [name]:
      return ast.literal_eval(node.value)
  raise AssertionError(f"{name} not found in {path}")


def test_plan_flags_match_the_planner():
  """`--topology`'s generations are those imagen_jax.plan takes (`--mesh` is parsed by the very
  function the planner uses, `imagen_jax.mesh_spec.parse_mesh_shape`)."""
  assert command.TPU_GENERATIONS == _module_constant(ROOT / "imagen_jax" / "plan.py",
                                                     "GENERATIONS")


@pytest.mark.parametrize("argv", [
    SAMPLING["sample"] + ["--steps", "1", "--seed", str(2 ** 32 - 1), "--guidance", "0", "1.5",
                          "--aug-level", "0", "--num-per-prompt", "1"],
    SAMPLING["img2img"] + ["--strength", "1"],
    SAMPLING["inpaint"] + ["--repaint", "1", "1", "--strength", "1.0"],
    SAMPLING["sample"][:-2] + ["--pretrained", "a", "--pretrained", "b", "--noise-level", "0"],
    EVAL + ["--num", "1", "--guidance", "0", "--sr-guidance", "1", "--aug-level", "1"],
    TRAIN + ["--coordinator", "[::1]:1234", "--num-processes", "2", "--process-id", "1"],
    EXPORT + ["--step", "0"],
    PLAN + ["--topology", "v4:4x4x4", "--mesh", "data=-1,fsdp=8", "--sample-batch", "1"],
    _data("shapes", "resolution=8", "num_train=1", "num_test=1", "seed=0", "p_two=1"),
    _data("emoji_captions", "test_percent=1", "background=(0, 0, 255)", "template=a {} emoji"),
    _data("captioned_folder", "folder=x", "test_percent=0"),
    _data("fashion_mnist_captions", "max_per_split=None"),
])
def test_edge_values_are_accepted(argv):
  """The ends of each range parse and pass the checks at the start of the command."""
  from imagen_jax.cli import cascade, pipeline

  args = cli.build_parser().parse_args(argv)
  if args.command in SAMPLING:
    cascade._check_sampling_args(args)
  elif args.command == "train":
    pipeline.check_distributed_args(args)
  elif args.command == "data":
    assert pipeline.parse_options(args.dataset, args.option)
