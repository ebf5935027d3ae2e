"""Training: the typed recipe (trainer.recipe), the loop that trains it (trainer.loop) and ``fit()``, the Python
API. train.py is the command line over the same two.

    from trainer import fit
    result = fit("my_net.py:Net", "data/cifar10", epochs=2, batch_size=256)

Modules: recipe (every option, once), loop (a recipe in, a run folder out), epoch (one epoch and the test pass),
data, network, optim (the pieces a run trains with), state (checkpoints, resume), folders (run folders and their
files), distributed (torchrun's process group).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.folders import RunError
from trainer.recipe import Recipe, RecipeError

__all__ = ["fit", "Result", "Recipe", "RecipeError", "RunError"]

OWN_ARGUMENTS = ("data_dir", "loader", "epochs", "out", "model")


@dataclass
class Result:
    """What fit() returns: the per-epoch metrics, the run folder, the final test accuracy, the trained model (on its
    device; the averaged one with ema) and the run's config (config.json)."""
    metrics: list[dict]
    out: Path
    test_acc: float
    model: torch.nn.Module
    config: dict


def fit(model=None, data_dir="data/cifar10", *, loader: str | None = None, epochs: int | None = None, out=None,
        **options) -> Result:
    """Train from Python, as ``python train.py`` does from the command line; raises exceptions, never exits.

    ``model``: None (the built-in ``arch`` option, default c1c2c3c4), a spec such as ``"my_net.py:Net"`` (as
    ``--model``), or an ``nn.Module`` to train in place. ``loader``, ``epochs`` and every option left out take
    the recipe's values (recipes/default.toml, or ``config=``). ``options`` are train.py's options with underscores
    (``batch_size=256``, ``amp="off"``, ``resume=True``...), typed as a recipe file holds them. Bad options raise
    ValueError (RecipeError); bad data DataError; a run folder that cannot be used RunError; a checkpoint that
    cannot be resumed CheckpointError; an engine that is not installed LoaderUnavailable. Each sentence says what to
    do."""
    from trainer import loop, recipe
    module = model if isinstance(model, torch.nn.Module) else None
    if model is not None and module is None and not isinstance(model, str):
        raise TypeError(f"fit(model=...) takes None, a spec such as 'my_net.py:Net' or an nn.Module, "
                        f"not {type(model).__name__}.")
    own = [name for name in options if name in OWN_ARGUMENTS]
    if own:
        raise RecipeError(f"fit() takes no option {own[0]!r} here: it is an argument of its own; its options are "
                          f"train.py's: {', '.join(sorted(n for n in recipe.FIELDS if n not in OWN_ARGUMENTS))}.")
    given = {"data_dir": str(data_dir), **{k: v for k, v in (("loader", loader), ("epochs", epochs)) if v is not None},
             **({"out": str(out)} if out is not None else {}), **({"model": model} if isinstance(model, str) else {}),
             **options}
    result = loop.run(recipe.from_options(given, module), model_object=module)
    final = result["metrics"][-1] if result["metrics"] else {}
    return Result(result["metrics"], Path(result["out"]), final.get("test_acc"), result["model"], result["config"])
