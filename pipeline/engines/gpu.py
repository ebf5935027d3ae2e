"""The ``gpu`` engine: the policy as batched PyTorch ops on a dataset resident on the device.

The converted arrays are copied to the device once, as one uint8 tensor (the CPU when there is no GPU).
Each epoch is a permutation drawn from a seeded ``torch.Generator`` on that device; each batch draws
its per-sample parameters (``pipeline.params.sample_params``) and runs ``pipeline.ops.apply`` (flip,
affine_grid + grid_sample with the mean border, hole mask; float conversion, normalization and
channels-last in the same pass): no DataLoader, no per-sample Python loop.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.format import load_split
from pipeline.output import Normalizer, epoch_seed
from pipeline.ops import apply, replay  # noqa: F401  (replay: this engine's entry for the parity harness)
from pipeline.params import Params, sample_params
from pipeline.policy import AugmentPolicy


class GpuLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1), compile=False):
        data, _ = load_split(data_dir, split)
        self.images = torch.from_numpy(np.array(data.images)).to(device)   # read once, resident
        self.labels = torch.from_numpy(np.array(data.labels)).to(device)
        self.device, self.policy, self.augment, self.seed = device, policy, augment, seed
        self.batch_size, self.drop_last, self.return_index = batch_size, drop_last, return_index
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.rank, self.world = shard
        self.output = Normalizer(policy, device, normalize)
        self.apply = torch.compile(apply, dynamic=False) if compile else apply
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def _num_local(self) -> int:
        return len(range(self.rank, len(self.labels), self.world))

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else \
            torch.arange(n, device=self.device)
        order = order[self.rank::self.world]
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            images = self.images[idx]
            if self.augment:
                x = self.output.pixels(self.apply(images, sample_params(len(idx), self.policy, gen), self.policy))
            else:
                x = self.output(images)
            yield (x, self.labels[idx], idx) if self.return_index else (x, self.labels[idx])


LOADER = GpuLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return GpuLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                     normalize=normalize, return_index=return_index, **options)


def sampled_params(n: int, policy: AugmentPolicy, seed: int, device="cpu") -> Params:
    """For the parity harness: ``n`` samples' parameters as this engine draws them."""
    return sample_params(n, policy, torch.Generator(device=device).manual_seed(seed), device=device)
