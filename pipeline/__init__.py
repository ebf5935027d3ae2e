"""cifarflow's data pipeline: the loader registry.

    build_loader(name, data_dir, split, batch_size, *, device="cpu", augment=True, seed=0,
                 normalize=True, return_index=False, **options)
    available_loaders()

Each engine lives in pipeline/engines/ and is imported only when asked for, so a missing optional
dependency (DALI, FFCV) never breaks the others.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

__all__ = ["build_loader", "available_loaders", "known_loaders", "engine_module", "unavailable_reason",
           "LoaderUnavailable", "check_seed"]


class LoaderUnavailable(Exception):
    """An unknown engine name, or one whose dependencies are not installed. One sentence."""


@dataclass(frozen=True)
class _Engine:
    module: str
    requires: tuple[str, ...]   # importable top-level modules it needs
    install: str                # what to run when they are missing
    summary: str


_ENGINES: dict[str, _Engine] = {
    "torch": _Engine("pipeline.engines.reference", ("albumentations", "cv2"),
                     "pip install 'albumentations==2.0.8' 'opencv-python-headless>=5,<6'",
                     "albumentations on CPU DataLoader workers (the reference and the baseline)"),
    "gpu": _Engine("pipeline.engines.gpu", (), "pip install torch",
                   "batched PyTorch ops on a device-resident dataset, per-sample random parameters"),
    "dali": _Engine("pipeline.engines.dali", ("nvidia.dali",), "pip install -e '.[dali]' (nvidia-dali-cuda120)",
                    "NVIDIA DALI ops (GPU, or DALI's CPU operators without one)"),
    "ffcv": _Engine("pipeline.engines.ffcv", ("ffcv", "numba"),
                    "apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev && pip install -e '.[ffcv]'",
                    "FFCV .beton + Loader; the policy as torch ops after ToDevice"),
    "kornia": _Engine("pipeline.engines.kornia", ("kornia",), "pip install -e '.[peers]' (kornia)",
                      "a peer for comparison: kornia.augmentation on the gpu engine's device-resident data, per "
                      "batch (not the albumentations policy pixel for pixel: see its module)"),
}


def known_loaders() -> dict[str, str]:
    """Every registered engine name with a one-line summary, available here or not."""
    return {name: e.summary for name, e in _ENGINES.items()}


def _missing(engine: _Engine) -> list[str]:
    out = []
    for mod in engine.requires:
        try:
            if importlib.util.find_spec(mod) is None:
                out.append(mod)
        except (ImportError, ValueError):
            out.append(mod)
    return out


def _distributed_shard() -> tuple[int, int]:
    """(rank, world size) under an initialized torch.distributed, else (0, 1): each rank then sees a
    disjoint shard of every epoch."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unavailable_reason(name: str) -> str | None:
    """None if engine ``name`` can run here, else one sentence saying why and what to install."""
    engine = _ENGINES.get(name)
    if engine is None:
        return f"unknown loader {name!r}: choose one of {', '.join(_ENGINES)}."
    missing = _missing(engine)
    if missing:
        return f"the {name!r} loader needs {', '.join(missing)}, which is not installed here: {engine.install}"
    return None


def engine_module(name: str):
    """The engine's module (imported now), or LoaderUnavailable with the sentence of ``unavailable_reason``."""
    reason = unavailable_reason(name)
    if reason:
        raise LoaderUnavailable(reason)
    return importlib.import_module(_ENGINES[name].module)


def available_loaders() -> list[str]:
    """The engines whose dependencies import on this machine."""
    return [name for name, e in _ENGINES.items() if not _missing(e)]


def build_loader(name: str, data_dir, split: str, batch_size: int, *, device="cpu", augment: bool = True,
                 seed: int = 0, normalize: bool = True, return_index: bool = False, policy=None, **options):
    """An iterable over one epoch of ``(images, labels)`` (or ``(images, labels, indices)``), with
    ``len()`` in batches; each ``iter()`` is the next epoch, or the one given to ``set_epoch``.

    ``normalize=True``: float32 (N, 3, 32, 32) normalized with the meta mean/std, channels-last, on
    ``device``; ``normalize=False``: uint8 pixels. ``policy`` defaults to the project's policy with the
    data's mean/std. The same seed gives the same epoch."""
    from pipeline.format import IMAGE_SHAPE, read_meta
    from pipeline.output import resolve_device
    from pipeline.policy import AugmentPolicy

    module = engine_module(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
    seed = check_seed(seed)
    meta = read_meta(data_dir)
    if policy is None:
        policy = AugmentPolicy.from_meta(meta)
    elif not isinstance(policy, AugmentPolicy):
        raise TypeError("policy must be a pipeline.policy.AugmentPolicy.")
    policy = policy.for_data(meta)      # a Compose without Normalize: the converted data's mean and std
    policy.check_fits(IMAGE_SHAPE[0], data_dir)     # sizes in pixels of the data the loader runs on
    refusal = policy.unreproduced(name)
    if refusal:
        raise ValueError(refusal)
    if "shard" not in options:
        options["shard"] = _distributed_shard()
    accepted = _options_of(module)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"the {name!r} loader takes no option {unknown[0]!r}: its options are "
                         f"{', '.join(sorted(accepted)) or 'none'}.")
    return module.build(data_dir, split, batch_size, device=resolve_device(device), policy=policy,
                        augment=augment, seed=seed, normalize=normalize, return_index=return_index,
                        **options)


MAX_SEED = (1 << 63) - 1


def check_seed(seed) -> int:
    """A seed every generator takes (torch's, numpy's SeedSequence, DALI's and FFCV's are derived from it): a whole
    number from 0 to 2**63 - 1; ValueError with a sentence otherwise."""
    import numbers
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED} (2**63 - 1), not {seed!r}.")
    return int(seed)


_CONTRACT = {"self", "data_dir", "split", "batch_size", "device", "policy", "augment", "seed", "normalize",
             "return_index"}


def _options_of(module) -> set[str]:
    """The engine-specific keyword options of an engine module's loader class (``module.LOADER``)."""
    import inspect
    return set(inspect.signature(module.LOADER.__init__).parameters) - _CONTRACT
