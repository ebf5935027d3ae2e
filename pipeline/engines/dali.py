"""The ``dali`` engine: the policy as an NVIDIA DALI pipeline, on the GPU or with DALI's CPU operators.

Data: the converted arrays, read once into memory (on the GPU where there is one), fed batch by batch through
``fn.external_source`` in a per-epoch seeded order (sharded by rank and world size under ``torch.distributed``);
the last batch is partial and every sample comes exactly once per epoch.

The policy: each transform's own DALI expression (``Transform.dali``), in the policy's order, on uint8 HWC images,
with the per-sample parameters of the one sampler every engine shares (``policy.sample``, seeded by (seed, epoch))
fed through a second ``external_source`` as per-sample argument inputs (``Transform.dali_params``: a flip flag,
DALI's inverse warp matrix, crop anchors, hole regions...). DALI draws no numbers of its own, so its replay is its
training path: the parity harness checks the very ops that train. ``fn.crop_mirror_normalize`` normalizes last;
the batch leaves DALI as HWC and becomes an NCHW channels-last view in PyTorch without a copy. An engine that has
no expression for a transform refuses the policy before it runs (``policy.unreproduced("dali")``).

CUDA present: GPU operators on ``device_id`` = the local rank's device; otherwise CPU operators with
``device_id=None``; the choice is logged once.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipeline.format import load_split
from pipeline.output import epoch_order, epoch_seed, whole_batches
from pipeline.policy import AugmentPolicy, PolicyParams

log = logging.getLogger("cifarflow.dali")
DEFAULT_PIPE_BATCH = 2048   # images per DALI iteration (whole training batches); train.py's batches are slices
_logged = set()


def _log_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        log.info(msg)


def _device_id(device: torch.device):
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        _log_once(f"DALI: GPU operators on cuda:{index}")
        return index
    _log_once("DALI: CPU operators (device_id=None): no CUDA device was asked for")
    return None


# ---------------------------------------------------------------------------------------------
# the policy's parameters as DALI inputs, and its expressions
# ---------------------------------------------------------------------------------------------

def _as_input(v: torch.Tensor) -> np.ndarray:
    v = v.detach().cpu()
    if v.dtype == torch.bool:
        v = v.to(torch.int32)
    elif v.is_floating_point():
        v = v.to(torch.float32)
    else:
        v = v.to(torch.int32)
    return np.ascontiguousarray(v.numpy())


class PolicyInputs:
    """The per-sample DALI inputs of every transform of a policy, from its parameters: flat arrays (n, ...) for one
    ``external_source``, and the layout that turns its outputs back into one dict per transform."""

    def __init__(self, policy: AugmentPolicy, params: PolicyParams):
        self.keys, self.arrays = [], []
        for t, size, p in zip(policy.transforms, policy.sizes(), params.items):
            d = t.dali_params(p, size)
            self.keys.append(sorted(d))
            self.arrays += [_as_input(d[k]) for k in sorted(d)]
        self.n = len(params)

    def batch(self, start: int, stop: int) -> list[np.ndarray]:
        return [a[start:stop] for a in self.arrays]

    def nest(self, nodes) -> list[dict]:
        nodes, out = list(nodes), []
        for keys in self.keys:
            out.append(dict(zip(keys, nodes[:len(keys)])))
            nodes = nodes[len(keys):]
        return out


def augment(x, policy: AugmentPolicy, inputs: list[dict]):
    """uint8 HWC in, uint8 HWC out: each transform's DALI expression, in the policy's order."""
    fills = policy.fills
    for t, p, size in zip(policy.transforms, inputs, policy.sizes()):
        x = t.dali(x, p, fills, size)
    return x


def _parameter_nodes(layout: PolicyInputs, source):
    if not layout.arrays:
        return []
    nodes = fn.external_source(source=source, num_outputs=len(layout.arrays), batch=True, batch_info=True)
    return [nodes] if len(layout.arrays) == 1 and not isinstance(nodes, (list, tuple)) else list(nodes)


def finish(x, policy: AugmentPolicy, normalize: bool):
    if not normalize:
        return x
    return fn.crop_mirror_normalize(x, mean=list(policy.mean), std=list(policy.std), dtype=types.FLOAT,
                                    output_layout="HWC")


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------

class _EpochSource:
    """external_source callback: the images of one DALI batch per call, then StopIteration. ``images`` and ``order``
    are tensors on the loader's device: with CUDA the batch is gathered on the GPU and DALI reads it there, on
    PyTorch's current stream (no host copy); on the CPU the same gather feeds DALI's CPU operators."""

    def __init__(self, images, order, batch_size):
        self.images, self.order, self.batch_size = images, order, batch_size

    def __call__(self, info):
        idx = self.order[info.iteration * self.batch_size:(info.iteration + 1) * self.batch_size]
        if len(idx) == 0:
            raise StopIteration
        batch = self.images[idx]
        return batch if batch.is_cuda else batch.numpy()    # (DALI asks CUDA for a stream for any torch tensor)


class DaliLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``.
    Each epoch builds its pipeline with a seed from (seed, epoch), so an epoch can be replayed.

    DALI runs at its own batch, ``pipe_batch`` images (whole training batches; default ``DEFAULT_PIPE_BATCH``):
    its fixed cost per iteration is paid once per ``pipe_batch`` images, and the training batches are slices of
    its output, in the epoch's order. Labels and indices never pass through DALI: they are read from the epoch's
    order, on the device. With CUDA the images live on the GPU once and each DALI batch is gathered there."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1),
                 num_threads=None, pipe_batch=None):
        self.pipe_batch = whole_batches(pipe_batch, DEFAULT_PIPE_BATCH, batch_size, "pipe_batch")
        data, _ = load_split(data_dir, split)
        self.device, self.policy, self.augment, self.seed = device, policy, augment, seed
        self.batch_size, self.drop_last, self.normalize, self.return_index = batch_size, drop_last, normalize, return_index
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.rank, self.world = shard
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        self.device_id = _device_id(device)
        # resident on the device (the GPU where there is one), read once; DALI is fed batches gathered there
        self.images = torch.from_numpy(np.array(data.images)).to(device)
        self.labels = torch.from_numpy(np.array(data.labels)).to(device)
        self._next_epoch = 0
        self.summary = (f"DALI {'GPU' if self.device_id is not None else 'CPU'} operators"
                        f"{f' on cuda:{self.device_id}, fed from GPU memory' if self.device_id is not None else ''}"
                        f", the shared sampler's parameters, DALI batches of {self.pipe_batch} images sliced into batches "
                        f"of {batch_size}")
        _log_once(self.summary)

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def _order(self, epoch: int) -> np.ndarray:
        order = epoch_order(len(self.labels), self.seed, epoch, self.shuffle, (self.rank, self.world))
        if self.drop_last:
            order = order[:len(order) // self.batch_size * self.batch_size]
        return order

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.labels), self.world))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _pipeline(self, epoch: int, order: torch.Tensor):
        on_gpu = self.device_id is not None
        source = _EpochSource(self.images, order, self.pipe_batch)
        policy = self.policy
        layout = None
        if self.augment:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
            layout = PolicyInputs(policy, policy.sample(len(order), gen))

        @pipeline_def(batch_size=self.pipe_batch, num_threads=self.num_threads, device_id=self.device_id,
                      seed=epoch_seed(self.seed, epoch) % (1 << 31), prefetch_queue_depth=2, exec_dynamic=True)
        def pipe():
            x = fn.external_source(source=source, batch=True, batch_info=True, layout="HWC", dtype=types.UINT8,
                                   device="gpu" if on_gpu else "cpu")
            if layout is not None:
                nodes = _parameter_nodes(layout, _ParameterSource(layout, self.pipe_batch))
                x = augment(x, policy, layout.nest(nodes))
            return finish(x, policy, self.normalize)

        return pipe()

    def __iter__(self):
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        order = torch.from_numpy(self._order(epoch).astype(np.int64)).to(self.device)
        pipe = self._pipeline(epoch, order)
        pipe.build()
        it = DALIGenericIterator([pipe], ["x"], size=-1, auto_reset=False)
        start = 0
        for out in it:
            x = out[0]["x"].permute(0, 3, 1, 2)           # NCHW view of the HWC batch: channels-last
            for b in range(0, len(x), self.batch_size):
                idx = order[start + b:start + b + self.batch_size]
                xb = x[b:b + self.batch_size]
                yield (xb, self.labels[idx], idx) if self.return_index else (xb, self.labels[idx])
            start += len(x)
        del it, pipe


class _ParameterSource:
    """external_source callback: the policy's per-sample inputs of one DALI batch per call."""

    def __init__(self, layout: PolicyInputs, batch_size: int):
        self.layout, self.batch_size = layout, batch_size

    def __call__(self, info):
        start = info.iteration * self.batch_size
        if start >= self.layout.n:
            raise StopIteration
        return self.layout.batch(start, start + self.batch_size)


# ---------------------------------------------------------------------------------------------
# for the parity harness
# ---------------------------------------------------------------------------------------------

def replay(images: torch.Tensor, params: PolicyParams, policy: AugmentPolicy) -> torch.Tensor:
    """uint8 (B, H, W, 3) through the policy's DALI expressions with the given parameters -> uint8 (B, H', W', 3)."""
    device_id = _device_id(images.device)
    batch = images.cpu().numpy()
    layout = PolicyInputs(policy, params)

    @pipeline_def(batch_size=len(batch), num_threads=os.cpu_count() or 1, device_id=device_id, seed=0,
                  exec_dynamic=True)
    def pipe():
        x = fn.external_source(source=lambda: batch, batch=True, layout="HWC", dtype=types.UINT8)
        if device_id is not None:
            x = x.gpu()
        nodes = []
        if layout.arrays:
            nodes = fn.external_source(source=lambda: layout.batch(0, len(batch)), num_outputs=len(layout.arrays),
                                       batch=True)
        return augment(x, policy, layout.nest(nodes))

    p = pipe()
    p.build()
    (out,) = p.run()
    out = out.as_cpu() if device_id is not None else out
    return torch.from_numpy(np.stack([np.array(t) for t in out])).to(images.device)


LOADER = DaliLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return DaliLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                      normalize=normalize, return_index=return_index, **options)
