"""The ``gpu`` engine: the policy as batched PyTorch ops on a dataset resident on the device.

The converted arrays are copied to the device once, as one uint8 tensor (the CPU when there is no GPU).
Each epoch is a permutation drawn from a seeded ``torch.Generator`` on that device, and the per-sample
parameters of the whole epoch are drawn with it in one call (``policy.sample``). The epoch is augmented in chunks
of ``chunk`` images (``policy.apply``: each transform of the policy as a few batched torch ops, in the policy's
order; float conversion, normalization and channels-last in the same pass), and batches are slices of a chunk: a
fixed number of kernel launches per chunk instead of per batch. On CUDA the next chunk is made on a side
stream while the step consumes the current one (the streams wait on events, the host never waits). A sample's
pixels depend only on its parameters, so the chunk size never changes the epoch: ``chunk=batch_size`` is the
per-batch path, with the same batches.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.format import load_split
from pipeline.output import Normalizer, epoch_seed, whole_batches
from pipeline.policy import AugmentPolicy, PolicyParams


# images augmented in one pass on a GPU (about 100 MB of float32 output per chunk), where the per-batch path is bound
# by a dozen kernel launches per batch. On a CPU there are no launches to save and the large temporaries cost memory
# traffic: chunks of 8,192 ran at 0.35x the per-batch path on a 2-core CPU at batches of 128 and 512
# (bench/results/2026-12-06-cpu-2core.md), so there a chunk is one batch.
CUDA_CHUNK = 8192


def default_chunk(device: torch.device, batch_size: int) -> int:
    return CUDA_CHUNK if device.type == "cuda" else batch_size


class GpuLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1), compile=False,
                 chunk: int | None = None, dtype: str = "float32"):
        data, _ = load_split(data_dir, split)
        self.images = torch.from_numpy(np.array(data.images)).to(device)   # read once, resident
        self.labels = torch.from_numpy(np.array(data.labels)).to(device)
        self.device, self.policy, self.augment, self.seed = device, policy, augment, seed
        self.batch_size, self.drop_last, self.return_index = batch_size, drop_last, return_index
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.rank, self.world = shard
        self.output = Normalizer(policy, device, normalize, dtype)
        self.apply = torch.compile(policy.apply, dynamic=False) if compile else policy.apply
        self._next_epoch = 0
        self.chunk = whole_batches(chunk, default_chunk(device, batch_size), batch_size, "chunk")
        self.summary = (f"augmented on {device} in chunks of {self.chunk} images sliced into batches of {batch_size}"
                        + (", the next chunk made on a side stream" if device.type == "cuda" else ""))

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def _num_local(self) -> int:
        return len(range(self.rank, len(self.labels), self.world))

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def chunk_bytes(self) -> int:
        """Device memory of one augmented chunk; at most two are alive (the one served, the next being made)."""
        return self.chunk * 3 * self.policy.image_size ** 2 * (self.output.dtype.itemsize if self.output.normalize
                                                                else 1)

    def epoch_params(self, n: int, gen: torch.Generator, epoch: int) -> PolicyParams:
        """The per-sample parameters of the epoch's ``n`` samples, in one draw."""
        return self.policy.sample(n, gen)

    def augment_chunk(self, images: torch.Tensor, params: PolicyParams, start: int) -> torch.Tensor:
        """The chunk of the epoch at ``start``: uint8 (B, H, W, 3) -> float32 (B, 3, H, W) of pixel values."""
        return self.apply(images, params.select(slice(start, start + len(images))))

    def __iter__(self):
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else \
            torch.arange(n, device=self.device)
        order = order[self.rank::self.world]
        used = len(self) * self.batch_size if self.drop_last else len(order)
        order = order[:used]
        if not self.augment:
            for b in range(len(self)):
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                x = self.output(self.images[idx])
                yield (x, self.labels[idx], idx) if self.return_index else (x, self.labels[idx])
            return
        params = self.epoch_params(len(order), gen, epoch)
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None

        def augmented(start):
            return self.output.pixels(self.augment_chunk(self.images[order[start:start + self.chunk]], params, start))

        def make(start):
            """The chunk at ``start``, augmented (on the side stream on CUDA, after what the main stream queued)."""
            if not cuda:
                return augmented(start), None
            main = torch.cuda.current_stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                x = augmented(start)
                ready = torch.cuda.Event()
                ready.record(side)
            x.record_stream(main)       # the allocator keeps it until the main stream's use of it is done
            return x, ready

        starts = range(0, used, self.chunk)
        pending = make(0) if used else None
        for k, start in enumerate(starts):
            x, ready = pending
            if ready is not None:
                torch.cuda.current_stream(self.device).wait_event(ready)
            pending = make(starts[k + 1]) if k + 1 < len(starts) else None     # overlaps the steps below on CUDA
            for b in range(start, min(start + self.chunk, used), self.batch_size):
                idx = order[b:b + self.batch_size]
                xb = x[b - start:b - start + len(idx)]
                yield (xb, self.labels[idx], idx) if self.return_index else (xb, self.labels[idx])


LOADER = GpuLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return GpuLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                     normalize=normalize, return_index=return_index, **options)


def replay(images: torch.Tensor, params: PolicyParams, policy: AugmentPolicy) -> torch.Tensor:
    """For the parity harness: the engine's ops with the given parameters, uint8 (B, H, W, 3) in and out."""
    return policy.replay(images, params)
