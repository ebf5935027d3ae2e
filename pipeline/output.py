"""The registry's output contract, shared by every engine.

``normalize=True``: float32 (N, 3, 32, 32), ``(x - mean) / std`` with the meta mean/std, in
channels-last memory format, on the device. ``normalize=False``: uint8 pixels (N, 3, 32, 32).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.policy import AugmentPolicy


def resolve_device(device="auto") -> torch.device:
    """The one device resolver of the project: "auto" (CUDA where there is a GPU, else the CPU), "cpu",
    "cuda", "cuda:N" or a torch.device; ValueError with a sentence for a GPU this machine lacks or a name
    torch does not know."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for, but this machine has no CUDA GPU: "
                             f"use --device cpu (or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r}: cifarflow runs on cpu or cuda.")
    return dev


OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Normalizer:
    """uint8 NHWC (or NCHW) batch on any device -> the output contract on ``device``. ``dtype`` "bfloat16" gives the
    normalized batch in the dtype a bf16-autocast step casts it to anyway (the same rounding), at half the bytes."""

    def __init__(self, policy: AugmentPolicy, device: torch.device, normalize: bool, dtype: str = "float32"):
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, not {dtype!r}.")
        self.dtype = OUTPUT_DTYPES[dtype]
        self.device = device
        self.normalize = normalize
        self.mean = torch.tensor(policy.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.inv_std = (1.0 / torch.tensor(policy.std, dtype=torch.float32, device=device)).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, nhwc: bool = True) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if nhwc:
            images = images.permute(0, 3, 1, 2)  # a channels-last view of the NHWC buffer, no copy
        if not self.normalize:
            return images
        x = images.to(dtype=torch.float32, memory_format=torch.channels_last)
        return x.sub_(self.mean).mul_(self.inv_std).to(self.dtype)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, 3, H, W) holding whole pixel values (what ``policy.apply`` returns) -> the contract."""
        if not self.normalize:
            return x.to(torch.uint8)
        return (x - self.mean).mul_(self.inv_std).to(self.dtype)


def whole_batches(given, default: int, batch_size: int, name: str) -> int:
    """An engine's option of a number of images (``given``, or ``default`` when None; text from a command line's
    k=v options is read as a number), rounded down to whole batches of ``batch_size``, at least one batch;
    ValueError with a sentence for anything but a positive whole number."""
    value = default if given is None else given
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError(f"{name} must be a positive number of images, not {value!r}.")
    return max(1, number // batch_size) * batch_size


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A 63-bit seed for (seed, epoch, ...), independent of how work is spread over workers."""
    return int(np.random.SeedSequence([seed, epoch, *more]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1, 1 << 32], dtype=np.uint64)) >> np.uint64(1))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, shard: tuple[int, int] = (0, 1)) -> np.ndarray:
    """The sample order of one epoch on the CPU: a permutation seeded by (seed, epoch) (or 0..n-1), then
    this rank's shard of it."""
    if shuffle:
        import torch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).numpy()
    else:
        order = np.arange(n)
    rank, world = shard
    return order[rank::world]
