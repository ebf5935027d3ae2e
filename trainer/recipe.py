"""The training recipe: every option of a run, defined once (``Recipe``).

Each field is one option: its type (the annotation), help text, group and checks; its default is the field's, or,
for the numbers of the recipe itself (epochs, batch size, learning rate...), the project's default recipe file
``recipes/default.toml``, so that those numbers live in one named file. Everything else comes from this one
definition: train.py's grouped ``--help`` and flags (``parse_command_line``), recipe files (``load_file``: TOML, the
fields' names), ``fit(**options)`` (``from_options``) and the ``args`` a run's config.json records
(``dataclasses.asdict``). A wrong key or value, from any of them, is one sentence naming the key and where it was
written: the flag, the file and line, or ``fit()``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from model import ACTIVATIONS, ARCHS, DEFAULT_ACTIVATION, PARAMETER_BUDGET, WIDTHS, build_model, count_parameters
from model.checkpoint import CUSTOM
from model.training import AMP_CHOICES
from pipeline import MAX_SEED, known_loaders
from pipeline.albu_import import POLICY_HELP, STRICT_POLICY_HELP

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "default.toml"
FLOAT32_MAX = 3.4028234663852886e38


class RecipeError(ValueError):
    """An option that cannot be used, from a flag, a recipe file or fit(): one sentence naming it and where."""


# ---------------------------------------------------------------------------------------------
# checks of a typed value: each returns it or raises ValueError with what it must be
# ---------------------------------------------------------------------------------------------

def positive_int(v):
    if v < 1:
        raise ValueError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(v):
    if v < 0:
        raise ValueError(f"must be >= 0, got {v}")
    return v


def non_negative_float(v):
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a non-negative number, got {v}")
    return v


def positive_float(v):
    if non_negative_float(v) == 0:
        raise ValueError(f"must be positive, got {v}")
    return v


def learning_rate(v):
    positive_float(v)
    if v > FLOAT32_MAX:     # the optimizer steps in float32: it refuses such a rate mid-step, with a traceback
        raise ValueError(f"must be a rate a float32 can hold (at most {FLOAT32_MAX:.3g}), got {v}")
    return v


def fraction(v):
    if not 0 <= v < 1:
        raise ValueError(f"must lie in [0, 1), got {v}")
    return v


def seed_number(v):
    if not 0 <= v <= MAX_SEED:
        raise ValueError(f"must be a whole number from 0 to 2**63 - 1, got {v}")
    return v


# ---------------------------------------------------------------------------------------------
# the options
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    group: str
    help: str
    check: typing.Callable | None = None        # a range check of the typed value
    choices: typing.Callable | tuple | None = None   # the allowed values (a callable: computed when asked)
    switch: bool = False                        # a flag that only turns on (--compile), no --no-compile
    metavar: object = None
    in_file: bool = True                        # may be set in a recipe file (not --config, --resume)


def option(default=MISSING, **spec):
    """A field of the Recipe; MISSING: recipes/default.toml gives its value."""
    return field(default=default, metadata={"spec": Spec(**spec)})


GROUPS = {"data": None, "recipe": None, "model": None, "performance": None, "run": None,
          "experiments": "options kept for studies; the default recipe does not use them"}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    # data
    data_dir: str = option("data/cifar10", group="data", help="converted data (python -m pipeline.convert)")
    source: str | None = option(None, group="data",
                                help="if --data-dir holds no converted data, convert this source into it first "
                                     "('download', a cifar-10-batches-py folder, the official tar.gz or an "
                                     "image-folder archive)")
    loader: str = option(group="data", choices=lambda: tuple(known_loaders()),
                         help="data engine: gpu (batched torch ops on a device-resident dataset), torch "
                              "(albumentations on DataLoader workers, the reference), dali, ffcv; "
                              "pipeline.available_loaders() lists those installed")
    policy: str | None = option(None, group="data", metavar="FILE", help=POLICY_HELP)
    strict_policy: bool = option(False, group="data", switch=True, help=STRICT_POLICY_HELP)
    workers: int | None = option(None, group="data", check=non_negative_int,
                                 help="loader workers: torch DataLoader processes, FFCV threads, DALI threads "
                                      "(default: all cores; gpu has none)")
    # recipe
    config: str | None = option(None, group="recipe", metavar="FILE.toml", in_file=False,
                                help="a recipe file (TOML, train.py's option names with underscores) on top of "
                                     "recipes/default.toml, which holds every default below; flags override both")
    epochs: int = option(group="recipe", check=positive_int, help="training epochs")
    batch_size: int = option(group="recipe", check=positive_int, help="images per step (per process)")
    lr: float = option(group="recipe", check=learning_rate, help="peak learning rate (onecycle) or initial (step)")
    momentum: float = option(group="recipe", check=fraction, help="SGD momentum")
    nesterov: bool = option(group="recipe", help="Nesterov momentum")
    weight_decay: float = option(group="recipe", check=non_negative_float,
                                 help="on convolution and linear weights (not on BatchNorm or biases)")
    schedule: str = option(group="recipe", choices=("onecycle", "step"),
                           help="learning-rate schedule: OneCycle (linear warm-up and decay) or StepLR")
    warmup: float = option(group="recipe", check=fraction, help="OneCycle: share of steps spent warming up")
    label_smoothing: float = option(group="recipe", check=fraction, help="of the cross-entropy targets")
    seed: int = option(group="recipe", check=seed_number,
                       help="seeds the weights, the epoch order and the augmentation (0 to 2**63 - 1)")
    # model
    arch: str = option(group="model", choices=ARCHS, help="the built-in net (see --model for your own)")
    model: str | None = option(None, group="model", metavar="FILE.py:NAME",
                               help="train your own model instead of --arch: a Python file (or an importable module) "
                                    "and the nn.Module class or factory in it, e.g. my_net.py:Net; called with "
                                    "num_classes=10 where it takes it; checkpoints record the spec and the file's "
                                    "sha256")
    max_params: int | None = option(None, group="model", check=positive_int, metavar="N",
                                    help="refuse a model with N parameters or more (default: 200,000 for the "
                                         "built-in archs, no limit for --model); every run prints and records its "
                                         "count and receptive field")
    whiten: bool | None = option(None, group="model",       # None: per arch, decided in finish()
                                 help="set the first 3x3 convolution to a whitening of the training images' 3x3 "
                                      "patches (their principal directions and the negatives) and freeze it, as "
                                      "airbench does; its parameters still count (default: on for c1c2c3c4, off "
                                      "for dilated and --model)")
    # performance
    device: str = option("auto", group="performance", choices=("auto", "cpu", "cuda"),
                         help="auto: CUDA where there is a GPU")
    amp: str = option("auto", group="performance", choices=AMP_CHOICES,
                      help="mixed precision: auto = bf16 on CUDA where supported (else fp16 with a GradScaler), "
                           "bf16 on CPUs with native bf16 (avx512_bf16/AMX), fp32 on other CPUs; on = autocast "
                           "even where slow; off = fp32; bf16 / fp16 = autocast to that type on any device")
    channels_last: bool = option(True, group="performance",
                                 help="channels-last memory format for the model and its batches")
    compile: bool = option(False, group="performance", switch=True, help="torch.compile the model")
    cuda_graph: bool = option(False, group="performance",
                              help="record the training step once per batch size as a CUDA graph and replay it: one "
                                   "launch per step instead of hundreds (CUDA, one process, bf16 or fp32, not with "
                                   "--compile; SGD then runs fused with the learning rate as a GPU tensor: the same "
                                   "update)")
    # run
    out: str | None = option(None, group="run", help="run folder (default: runs/<loader>-<arch or model name>)")
    resume: bool = option(False, group="run", switch=True, in_file=False,
                          help="continue the run in --out from its last checkpoint")
    # experiments
    widths: list[int] | None = option(None, group="experiments", check=positive_int, metavar=("C1", "C2", "C3", "C4"),
                                      help="channels of C1's output and of C2, C3, C4 of a built-in arch (default: "
                                           f"c1c2c3c4 {' '.join(map(str, WIDTHS['c1c2c3c4']))}, dilated "
                                           f"{' '.join(map(str, WIDTHS['dilated']))})")
    activation: str = option(group="experiments", choices=tuple(ACTIVATIONS),
                             help="the nonlinearity of every layer of a built-in arch (stored in the checkpoint)")
    ema: float = option(group="experiments", check=fraction, metavar="DECAY",
                        help="keep an exponential moving average of the weights (and BatchNorm statistics) with this "
                             "decay per step, e.g. 0.999, and test and save it instead of the last weights; 0 = off")
    step_size: int = option(group="experiments", check=positive_int, help="StepLR: epochs between decays")
    gamma: float = option(group="experiments", check=positive_float, help="StepLR: decay factor")
    log_samples: bool = option(False, group="experiments", switch=True,
                               help="write the sample indices each process trained on, per epoch (an audit of "
                                    "sharding)")


WIDTHS_COUNT = 4
FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
HINTS = typing.get_type_hints(Recipe)
IN_FILE = tuple(name for name, f in FIELDS.items() if f.metadata["spec"].in_file)

# what a run trains with: two runs that differ in one of these trained two recipes (--resume and bench.seeds
# compare these values, recorded in config.json)
KEYS = ("arch", "model", "epochs", "seed", "loader", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
        "schedule", "step_size", "gamma", "warmup", "label_smoothing", "ema", "widths", "activation", "whiten", "amp",
        "channels_last")


def _spec(name: str) -> Spec:
    return FIELDS[name].metadata["spec"]


def _kind(name: str) -> tuple[type, bool]:
    """(the value's type: int, float, bool, str or list, whether None is allowed)."""
    hint = HINTS[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    base = next(a for a in args if a is not type(None))
    return (list if typing.get_origin(base) is list else base), type(None) in args


def _choices(name: str) -> tuple | None:
    choices = _spec(name).choices
    return tuple(choices()) if callable(choices) else choices


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# typed values: recipe files and fit()
# ---------------------------------------------------------------------------------------------

def check_value(name: str, value, where: str):
    """``value`` for option ``name`` from a recipe file or fit(), checked as its flag would be; RecipeError
    naming ``where`` (e.g. "recipe r.toml line 3: lr = '0.1'") otherwise."""
    kind, optional = _kind(name)
    if value is None and optional:
        return None
    if isinstance(value, dict):
        raise RecipeError(f"{where}: a recipe holds plain values, not tables.")
    if kind is list:
        if not isinstance(value, list) or len(value) != WIDTHS_COUNT:
            raise RecipeError(f"{where} must be a list of {WIDTHS_COUNT} values.")
        return [_one(name, int, v, where) for v in value]
    if isinstance(value, list):
        raise RecipeError(f"{where} must be one value, not a list.")
    return _one(name, kind, value, where)


def _one(name: str, kind: type, value, where: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false.")
        return value
    if kind in (int, float):
        if isinstance(value, bool):     # TOML's true is no number (int(True) would pass for 1)
            raise RecipeError(f"{where} must be a number, not true or false.")
        if isinstance(value, str):      # the command line reads text; a recipe holds the number itself
            raise RecipeError(f"{where} must be a number, not text: write it without quotes.")
        if kind is int and not isinstance(value, int):
            raise RecipeError(f"{where} must be a whole number.")
        if not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number.")
        value = kind(value)
    elif not isinstance(value, str):
        raise RecipeError(f"{where} must be text (in quotes).")
    choices = _choices(name)
    if choices is not None and value not in choices:
        raise RecipeError(f"{where} must be one of {', '.join(map(str, choices))}.")
    check = _spec(name).check
    if check is not None:
        try:
            check(value)
        except ValueError as e:
            raise RecipeError(f"{where}: {e}.") from None
    return value


def load_file(path) -> dict:
    """The options a recipe file sets, each checked as its flag would be (one sentence naming the file, line and key
    otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist: pass the path of a .toml file "
                          f"(recipes/ holds the project's).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read: {getattr(e, 'strerror', None) or e}.") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}.") from None
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        line = _line_of(text, key)
        if name not in IN_FILE:
            raise RecipeError(f"recipe {path}{line}: {key!r} is not an option of train.py; a recipe's keys are its "
                              f"options with underscores: {', '.join(sorted(IN_FILE))}.")
        values[name] = check_value(name, value, f"recipe {path}{line}: {key} = {value!r}")
    return values


def _line_of(text: str, key: str) -> str:
    m = re.search(rf"^\s*(\[\s*)?{re.escape(key)}\s*[=\]]", text, re.MULTILINE)
    return f" line {text.count(chr(10), 0, m.start()) + 1}" if m else ""


def defaults(config=None) -> dict:
    """Every option's value before flags or fit()'s options: the fields' defaults, recipes/default.toml, then the
    recipe file ``config``."""
    values = {name: f.default for name, f in FIELDS.items() if f.default is not MISSING}
    values.update(load_file(DEFAULT))
    if config is not None:
        values.update(load_file(config))
        values["config"] = str(config)
    missing = sorted(set(FIELDS) - set(values))
    if missing:
        raise RecipeError(f"recipe {DEFAULT} gives no {missing[0]!r}: every number of the recipe needs a value "
                          f"there.")
    return values


def finish(values: dict, model_object=None) -> Recipe:
    """The Recipe of ``values``, after the rules that tie options together: --model sets its own widths and
    activation (and the arch is "custom"), --widths stay under the parameter budget, --whiten's per-arch default,
    --out's default. RecipeError with a sentence otherwise."""
    v = dict(values)
    if v["model"] is not None or model_object is not None:
        if v["widths"] is not None or v["activation"] != DEFAULT_ACTIVATION:
            raise RecipeError("--widths and --activation shape the built-in nets; a model brought with --model "
                              "sets its own")
        v["arch"] = CUSTOM
    elif v["widths"] is not None:
        n = count_parameters(build_model(v["arch"], widths=v["widths"]))
        budget = v["max_params"] or PARAMETER_BUDGET
        if n >= budget:
            raise RecipeError(f"--widths {' '.join(map(str, v['widths']))} gives the {v['arch']} model {n:,} "
                              f"parameters; it must stay under {budget:,}: narrow a stage")
    if v["whiten"] is None:
        v["whiten"] = v["arch"] == "c1c2c3c4"
    if v["out"] is None:
        name = (type(model_object).__name__ if model_object is not None else
                v["model"].rsplit(":", 1)[-1] if v["model"] is not None else v["arch"])
        v["out"] = f"runs/{v['loader']}-{name}"
    return Recipe(**v)


# ---------------------------------------------------------------------------------------------
# the command line and fit()
# ---------------------------------------------------------------------------------------------

def build_parser(parser_class=argparse.ArgumentParser, formatter_class=argparse.HelpFormatter, values=None,
                 **parser_args) -> argparse.ArgumentParser:
    """train.py's parser: a flag per option, in its group, with ``values`` (default: ``defaults()``) as the
    defaults its --help shows."""
    values = defaults() if values is None else values
    ap = parser_class(formatter_class=formatter_class, **parser_args)
    groups = {name: ap.add_argument_group(name, description) for name, description in GROUPS.items()}
    for name in FIELDS:
        spec, (kind, _) = _spec(name), _kind(name)
        kw = {"help": spec.help, "dest": name, "default": values[name]}
        if spec.metavar is not None:
            kw["metavar"] = spec.metavar
        if kind is bool:
            kw["action"] = "store_true" if spec.switch else argparse.BooleanOptionalAction
        else:
            kw["type"] = _parse_text(name, int if kind is list else kind)
            if kind is list:
                kw["nargs"] = WIDTHS_COUNT
            if _choices(name) is not None:
                kw["choices"] = _choices(name)
        groups[spec.group].add_argument(flag(name), **kw)
    return ap


def _parse_text(name: str, kind: type):
    """argparse's type for the flag: the text read as ``kind``, then the option's check."""
    check = _spec(name).check

    def parse(text):
        value = kind(text)          # ValueError: argparse says "invalid <check> value"
        if check is not None:
            try:
                check(value)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value
    parse.__name__ = check.__name__ if check is not None else kind.__name__
    return parse


def parse_command_line(argv=None, parser_class=argparse.ArgumentParser, **parser_args) -> Recipe:
    """The Recipe of train.py's command line: recipes/default.toml, then --config's file, then the flags. A bad
    option exits 2 with argparse's one line (``parser_class`` may raise instead)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=None)
    config = first.parse_known_args(argv)[0].config
    try:
        values = defaults(config)
    except RecipeError as e:        # said by the parser, as a bad flag is
        build_parser(parser_class, **parser_args).error(str(e)) if config else parser_class(**parser_args).error(str(e))
    ap = build_parser(parser_class, values=values, **parser_args)
    args = vars(ap.parse_args(argv))
    try:
        return finish(args)
    except RecipeError as e:
        ap.error(str(e))


def from_options(options: dict, model_object=None) -> Recipe:
    """The Recipe of fit()'s keyword options (``config=`` a recipe file among them): typed values, checked as their
    flags would be; RecipeError with a sentence naming the option otherwise. No command line is built."""
    unknown = [name for name in options if name not in FIELDS]
    if unknown:
        raise RecipeError(f"fit() takes no option {unknown[0]!r}; its options are train.py's: "
                          f"{', '.join(sorted(FIELDS))}.")
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    values = defaults(options.get("config"))
    for name, value in options.items():
        values[name] = check_value(name, value, f"fit({name}={value!r}): {flag(name)}")
    if model_object is not None and "whiten" not in options:
        values["whiten"] = False
    return finish(values, model_object)


# ---------------------------------------------------------------------------------------------
# what a run records
# ---------------------------------------------------------------------------------------------

def files(recipe: Recipe) -> list[str]:
    """The recipe files a run's values came from, as config.json records them."""
    return [str(DEFAULT.relative_to(ROOT)), *([recipe.config] if recipe.config else [])]


def resolved(args: dict) -> dict:
    """The recipe a run trains with (what its config.json records as recipe.values)."""
    return {key: args.get(key) for key in KEYS}


def recorded(config: dict) -> dict | None:
    """The recipe a run's config.json records, or None for a run written before runs recorded it."""
    entry = config.get("recipe")
    return entry.get("values") if isinstance(entry, dict) else None


def differences(before: dict, now: dict, keys=KEYS) -> list[str]:
    """'--lr 0.05, not 0.1' for each of ``keys`` whose recorded value ``before`` differs from ``now``."""
    return [f"{flag(key)} {before.get(key)}, not {now.get(key)}" for key in keys if before.get(key) != now.get(key)]


def code_version(root: Path = ROOT) -> dict | None:
    """{"commit": the git commit of the code, "dirty": whether tracked files differ from it}, or None outside a
    git checkout (an installed copy, or no git)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}
