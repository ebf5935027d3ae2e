"""Train the CIFAR-10 CNN with any registered loader engine: the command line.

    python train.py --loader torch --data-dir data/cifar10 --epochs 30 --out runs/NAME

Per epoch: a progress bar (loss, img/s), test accuracy, ``metrics.json``, TensorBoard scalars,
``history.png``, and an atomic checkpoint that ``--resume`` continues from. ``config.json`` holds
the recipe, the augmentation policy and the data's meta. Channels-last and mixed precision are on by
default; what ran is logged. The options are trainer.recipe's ``Recipe`` (each defined once there); the
training loop is trainer.loop's. ``from train import fit`` is the Python API (trainer.fit).
"""
from __future__ import annotations

import argparse
import sys

from model.checkpoint import CheckpointError
from pipeline.cli import HelpFormatter, run_main
from trainer import Result, RunError, fit  # noqa: F401  (the Python API, importable from train as it always was)
from trainer import loop
from trainer.recipe import Recipe, parse_command_line

EXAMPLES = """examples:
  python train.py --data-dir data/cifar10                              the default recipe, 30 epochs
  python train.py --source download --data-dir data/cifar10            convert first (needs network)
  python train.py --model my_net.py:Net --data-dir data/cifar10        your own model
  python train.py --policy my_policy.py --data-dir data/cifar10       your albumentations Compose
  python train.py --loader torch --epochs 2 --out runs/quick           the albumentations reference loader
  python train.py --out runs/quick --resume                            continue a stopped run
  torchrun --standalone --nproc_per_node 8 train.py --loader dali       eight GPUs

A run writes config.json (arguments, policy, data, model facts), metrics.json, history.png, TensorBoard
scalars (tb/) and checkpoint.pt into --out after every epoch; python -m model.evaluate --checkpoint
OUT/checkpoint.pt scores it. Measured results: README.md and bench/results/."""

PARSER = dict(prog="python train.py", epilog=EXAMPLES, formatter_class=HelpFormatter,
              description="Train a CNN on converted CIFAR-10 with one of cifarflow's loader engines (all share one\n"
                          "augmentation policy): the built-in C1-C2-C3-C4 net, or your own with --model.")


def parse_args(argv=None, parser_class=argparse.ArgumentParser) -> Recipe:
    """The recipe of a train.py command line (recipes/default.toml, then --config's file, then the flags)."""
    return parse_command_line(argv, parser_class, **PARSER)


def build_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """train.py's parser, every default from the default recipe (what --help shows)."""
    from trainer.recipe import build_parser as recipe_parser
    return recipe_parser(parser_class, **PARSER)


def main(argv=None) -> int:
    recipe = parse_args(argv)
    interrupted = ["interrupted before training began: run the same command again."]

    def body():
        try:
            loop.run(recipe)
        except KeyboardInterrupt as e:
            if e.args:
                interrupted[0] = e.args[0]
            raise
    return run_main(body, expected=(CheckpointError, RunError), interrupted=lambda: interrupted[0])


if __name__ == "__main__":
    sys.exit(main())
