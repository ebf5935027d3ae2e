"""Recipe files: the numbers of a training recipe in one named TOML file (recipes/default.toml holds train.py's
defaults; ``--config FILE`` lays another over it), checked against train.py's options where they enter, and the
code version a run records beside them.

A recipe's keys are train.py's option names with underscores (``batch_size = 128``); a flag on the command line
overrides the files. ``load`` refuses an unknown key, a wrong type or a value the option would refuse, with one
sentence naming the file and the key.
"""
from __future__ import annotations

import argparse
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "default.toml"
NOT_IN_A_RECIPE = {"help", "config", "resume"}     # what a run does, not what it trains with


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message is one sentence naming the file."""


def load(path, parser: argparse.ArgumentParser) -> dict:
    """The options of the recipe file at ``path``, each converted and checked as ``parser`` would its flag."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist: pass the path of a .toml file "
                          f"(recipes/ holds the project's).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read: {getattr(e, 'strerror', None) or e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}.") from None
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_IN_A_RECIPE}
    values = {}
    for key, value in table.items():
        action = actions.get(key) or actions.get(key.replace("-", "_"))
        if action is None:
            raise RecipeError(f"recipe {path}: {key!r} is not an option of train.py; a recipe's keys are its "
                              f"options with underscores: {', '.join(sorted(actions))}.")
        values[action.dest] = _value(path, key, action, value)
    return values


def _value(path: Path, key: str, action: argparse.Action, value):
    where = f"recipe {path}: {key} = {value!r}"
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false.")
        return value
    if isinstance(value, dict):
        raise RecipeError(f"{where}: a recipe holds plain values, not tables.")
    if action.nargs not in (None, "?"):
        if not isinstance(value, list) or (isinstance(action.nargs, int) and len(value) != action.nargs):
            raise RecipeError(f"{where} must be a list of {action.nargs} values.")
        return [_one(where, action, v) for v in value]
    if isinstance(value, list):
        raise RecipeError(f"{where} must be one value, not a list.")
    return _one(where, action, value)


def _one(where: str, action: argparse.Action, value):
    if isinstance(value, bool):     # TOML's true is no number (int(True) would pass for 1)
        raise RecipeError(f"{where} must be {'a number' if action.type else 'text'}, not true or false.")
    if action.type is not None:
        if isinstance(value, str):      # the command line reads text; a recipe holds the number itself
            raise RecipeError(f"{where} must be a number, not text: write it without quotes.")
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as e:
            raise RecipeError(f"{where}: {e}.") from None
        except (ValueError, TypeError):
            raise RecipeError(f"{where} must be " + ("a whole number." if isinstance(value, float) else
                                                     "a number, not text." if isinstance(value, str) else
                                                     "a number.")) from None
    elif not isinstance(value, str):
        raise RecipeError(f"{where} must be text (in quotes).")
    if action.choices is not None and value not in action.choices:
        raise RecipeError(f"{where} must be one of {', '.join(map(str, action.choices))}.")
    return value




# what a run trains with: two runs that differ in one of these trained two recipes (a run's folder, seed aside,
# is not enough to tell: --resume and bench.seeds compare these values, recorded in config.json)
KEYS = ("arch", "model", "epochs", "seed", "loader", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
        "schedule", "step_size", "gamma", "warmup", "label_smoothing", "ema", "widths", "activation", "whiten", "amp",
        "channels_last")


def resolved(args: dict) -> dict:
    """The recipe a run trains with, from train.py's parsed options (what its config.json records)."""
    return {key: args.get(key) for key in KEYS}


def recorded(config: dict) -> dict | None:
    """The recipe a run's config.json records, or None for a run written before runs recorded it."""
    entry = config.get("recipe")
    return entry.get("values") if isinstance(entry, dict) else None


def differences(before: dict, now: dict, keys=KEYS) -> list[str]:
    """'--lr 0.05, not 0.1' for each of ``keys`` whose recorded value ``before`` differs from ``now``."""
    return [f"--{key.replace('_', '-')} {before.get(key)}, not {now.get(key)}" for key in keys
            if before.get(key) != now.get(key)]


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
