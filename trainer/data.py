"""The data of a run: the converted folder (converting --source first where it holds none), the policy it augments
with, the train and test loaders, and --whiten's sample of training images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import build_loader
from pipeline.albu_import import policy_for
from pipeline.format import load_split, read_meta
from pipeline.output import Normalizer
from pipeline.policy import AugmentPolicy
from trainer.recipe import Recipe

WHITEN_IMAGES = 5000        # --whiten's sample of the training images (airbench takes 5,000 too)
TEST_BATCH = 500
# the option through which each engine takes --workers
WORKER_OPTION = {"torch": "num_workers", "ffcv": "num_workers", "dali": "num_threads"}


def ensure_data(recipe: Recipe) -> dict:
    """meta.json of --data-dir, converting --source into it first where it holds no converted data."""
    data_dir = Path(recipe.data_dir)
    if not (data_dir / "meta.json").is_file() and recipe.source:
        from pipeline.convert import convert
        convert(recipe.source, data_dir)
    return read_meta(data_dir)


def policy_of(recipe: Recipe, meta: dict, say) -> AugmentPolicy:
    """The policy the run augments with (--policy's, or the project's with the data's mean and std); the notes of
    mapped albumentations 1.x arguments are said with ``say``."""
    policy, notes = policy_for(meta, recipe.policy, strict=recipe.strict_policy)
    for note in notes:
        say(f"note: {note}")
    return policy


def loaders(recipe: Recipe, policy: AugmentPolicy, device: torch.device, say) -> tuple:
    """(train loader, test loader) of --loader, with --workers where the engine takes them."""
    options = {}
    if recipe.workers is not None:
        key = WORKER_OPTION.get(recipe.loader)
        if key is None:
            say(f"note: --workers does not apply to --loader {recipe.loader} (it has no worker processes)")
        else:
            options[key] = recipe.workers
    train = build_loader(recipe.loader, recipe.data_dir, "train", recipe.batch_size, device=device,
                         seed=recipe.seed, policy=policy, return_index=recipe.log_samples, **options)
    test = build_loader(recipe.loader, recipe.data_dir, "test", TEST_BATCH, device=device, augment=False,
                        seed=recipe.seed, policy=policy, **options)
    return train, test


def whitening_images(data_dir, policy: AugmentPolicy, n: int = None) -> torch.Tensor:
    """--whiten's sample: ``n`` training images taken at an even stride over the whole split (a converted
    image-folder tree is stored class by class, so its first images are one class), normalised by the
    loaders' own Normalizer; float32 N x 3 x 32 x 32 on the CPU."""
    split, _ = load_split(data_dir, "train", verify=False)
    images = split.images
    n = min(n or WHITEN_IMAGES, len(images))
    picked = np.asarray(images[np.linspace(0, len(images) - 1, n).round().astype(np.int64)])
    return Normalizer(policy, torch.device("cpu"), normalize=True)(torch.from_numpy(picked))
