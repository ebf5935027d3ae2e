"""The ``torch`` engine: the albumentations 2.x reference in a torch DataLoader.

The policy's albumentations ``Compose`` (``policy.to_albumentations``) runs on uint8 HWC images in DataLoader worker processes
(all cores by default), one whole batch per task; batches come back as uint8 NHWC tensors
(pinned when the device is a GPU), and are normalized and made channels-last on the device.

Determinism: the epoch's order comes from (seed, epoch), and each batch re-seeds the ``Compose``
from (seed, epoch, batch number), each transform with a seed of its own (``seed_albumentations``:
albumentations' own seeding gives every transform the same one, and their draws move together), so
the same seed gives the same epoch whatever the number of workers. This engine is the reference of
every parity test and the baseline of every benchmark.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.format import load_split
from pipeline.output import Normalizer, epoch_order, epoch_seed
from pipeline.policy import AugmentPolicy, seed_albumentations


class _BatchTasks(Sampler):
    """Yields one task per batch: (epoch, batch number, indices). ``epoch`` is set by the loader."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 shard: tuple[int, int]):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world = shard
        self.epoch = 0

    def indices(self) -> np.ndarray:
        return epoch_order(self.n, self.seed, self.epoch, self.shuffle, (self.rank, self.world))

    def __len__(self) -> int:
        n = len(range(self.rank, self.n, self.world))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self.indices()
        for b in range(len(self)):
            yield self.epoch, b, order[b * self.batch_size:(b + 1) * self.batch_size]


class _AugmentedBatches(Dataset):
    """Task -> (uint8 NHWC images, int64 labels, int64 indices). Opens the memory maps lazily,
    so each worker process maps the files itself."""

    def __init__(self, data_dir, split: str, policy: AugmentPolicy, augment: bool, seed: int):
        self.data_dir, self.split, self.seed = data_dir, split, seed
        self.compose = policy.to_albumentations(with_normalize=False) if augment else None
        self._split = None

    def __getitem__(self, task):
        epoch, batch, idx = task
        if self._split is None:
            self._split, _ = load_split(self.data_dir, self.split, verify=False)
        images = self._split.images[idx]
        labels = self._split.labels[idx]
        if self.compose is not None:
            seed_albumentations(self.compose, epoch_seed(self.seed, epoch, batch) % (1 << 32))
            images = np.stack([self.compose(image=img)["image"] for img in images])
        return (torch.from_numpy(np.ascontiguousarray(images)),
                torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                torch.from_numpy(np.asarray(idx, dtype=np.int64)))


class ReferenceLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, num_workers=None, shuffle=None, drop_last=False,
                 shard=(0, 1)):
        split_data, _ = load_split(data_dir, split)  # validates the folder and its checksums
        self.num_samples = len(split_data.labels)
        self.return_index = return_index
        self.device = device
        self.output = Normalizer(policy, device, normalize)
        self.tasks = _BatchTasks(self.num_samples, batch_size, split == "train" if shuffle is None else shuffle,
                                 seed, drop_last, shard)
        workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        self.num_workers = workers
        self.loader = DataLoader(
            _AugmentedBatches(data_dir, split, policy, augment, seed),
            sampler=self.tasks, batch_size=None, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        self.tasks.epoch = self._next_epoch
        self._next_epoch += 1
        for images, labels, idx in self.loader:
            x = self.output(images)
            y = labels.to(self.device, non_blocking=True)
            yield (x, y, idx.to(self.device, non_blocking=True)) if self.return_index else (x, y)


LOADER = ReferenceLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return ReferenceLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment,
                           seed=seed, normalize=normalize, return_index=return_index, **options)
