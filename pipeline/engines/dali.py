"""The ``dali`` engine: the policy as an NVIDIA DALI pipeline, on the GPU or with DALI's CPU operators.

Data: the converted arrays, read once into memory, fed batch by batch through ``fn.external_source``
in a per-epoch seeded order (sharded by rank and world size under ``torch.distributed``); the last
batch is partial and every sample comes exactly once per epoch.

The policy, as DALI ops on uint8 HWC images:
- ``fn.flip(horizontal=coin)`` (``horizontal`` defaults to 1 when not given: it is always given);
- ``fn.warp_affine`` with one 2x3 matrix per sample. DALI maps output to input (``inverse_map``) and
  samples at pixel centres, so the matrix is albumentations' inverse with its translation moved by
  ``0.5 - 0.5 * row sum``. DALI takes one scalar fill, so the per-channel border is made by
  subtracting the (rounded) fill, warping with fill 0 and adding it back; a sample that is not
  transformed gets the exact identity matrix, which returns its pixels unchanged;
- ``fn.erase(anchor=(y, x, ...), shape=(h, w, ...))`` for the holes (shape 0 for a hole beyond the drawn
  number, or where dropout is not applied), filled with the truncated fill;
- ``fn.crop_mirror_normalize`` for the normalization; the batch leaves DALI as HWC and becomes an
  NCHW channels-last view in PyTorch without a copy.

Two sources of randomness: DALI's own random ops (``mode="native"``, the fast default) and
``mode="replay"``, which takes the shared sampler's parameters (``pipeline.params``) through
``external_source``, so the parity harness can check pixels. CUDA present: GPU operators on
``device_id`` = the local rank's device; otherwise CPU operators with ``device_id=None``; the choice
is logged once.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipeline.format import load_split
from pipeline.output import epoch_order, epoch_seed, whole_batches
from pipeline.params import Params, dropout_fill, forward_matrix, sample_params, ssr_fill
from pipeline.policy import AugmentPolicy

log = logging.getLogger("cifarflow.dali")
DEFAULT_PIPE_BATCH = 2048   # images per DALI iteration (whole training batches); train.py's batches are slices
_logged = set()


def _log_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        log.info(msg)


def dali_matrix(forward: np.ndarray) -> np.ndarray:
    """(n, 3, 3) albumentations forward matrices -> (n, 2, 3) DALI warp_affine matrices
    (inverse map, pixel-centre convention)."""
    inv = np.linalg.inv(forward)[:, :2].astype(np.float64)
    inv[:, :, 2] += 0.5 - 0.5 * inv[:, :, :2].sum(-1)
    return inv.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# graph pieces
# ---------------------------------------------------------------------------------------------

def _as_float(flag):
    return fn.cast(flag, dtype=types.FLOAT)


def _trunc(v):
    """Round toward zero (a DALI cast rounds to nearest)."""
    positive = _as_float(v >= 0.0)
    return dmath.floor(dmath.abs(v)) * (2.0 * positive - 1.0)


def native_params(policy: AugmentPolicy) -> dict:
    """DALI random ops drawing albumentations 2.x's distributions, and the per-sample graph inputs
    they make: flip flag, warp matrix, holes' anchors and shapes (y, x pairs, one per possible hole)."""
    s, d, size = policy.ssr, policy.dropout, policy.image_size
    flip = fn.random.coin_flip(probability=policy.flip.p, dtype=types.INT32)
    ssr = _as_float(fn.random.coin_flip(probability=s.p, dtype=types.INT32))
    angle = fn.random.uniform(range=s.rotate)
    sx = fn.random.uniform(range=s.scale_x)
    sy = fn.random.uniform(range=s.scale_y)
    tx = _trunc(fn.random.uniform(range=s.shift_x) * float(size))
    ty = _trunc(fn.random.uniform(range=s.shift_y) * float(size))
    drop = _as_float(fn.random.coin_flip(probability=d.p, dtype=types.INT32))
    count = _whole_draw(*d.num_holes)
    anchors, shapes, raw_holes = [], [], []
    for k in range(d.max_holes):
        if d.in_pixels:
            hh, hw = _whole_draw(*d.hole_height), _whole_draw(*d.hole_width)
        else:
            hh = dmath.floor(fn.random.uniform(range=d.hole_height) * float(size))
            hw = dmath.floor(fn.random.uniform(range=d.hole_width) * float(size))
        on = drop * _as_float(count > float(k))
        hh, hw = hh * on, hw * on       # 0: a hole beyond the drawn number, or no dropout
        # top-left uniform on 0..size - h
        hy = dmath.min(dmath.floor(fn.random.uniform(range=(0.0, 1.0)) * (float(size + 1) - hh)), float(size) - hh)
        hx = dmath.min(dmath.floor(fn.random.uniform(range=(0.0, 1.0)) * (float(size + 1) - hw)), float(size) - hw)
        anchors += [hy, hx]
        shapes += [hh, hw]
        raw_holes.append((hy, hx, hh, hw))

    # not applied -> exactly the identity: angle 0, scales 1, shifts 0
    rad = angle * ssr * (math.pi / 180.0)
    sx_, sy_ = sx * ssr + (1.0 - ssr), sy * ssr + (1.0 - ssr)
    tx_, ty_ = tx * ssr, ty * ssr
    cos, sin = dmath.cos(rad), dmath.sin(rad)
    # inverse of A = R S = [[cos sx, sin sy], [-sin sx, cos sy]]
    a00, a01, a10, a11 = cos / sx_, -sin / sx_, sin / sy_, cos / sy_
    c = size / 2 - 0.5
    b0 = c - (a00 * (c + tx_) + a01 * (c + ty_)) + 0.5 - 0.5 * (a00 + a01)
    b1 = c - (a10 * (c + tx_) + a11 * (c + ty_)) + 0.5 - 0.5 * (a10 + a11)
    matrix = fn.stack(fn.stack(a00, a01, b0), fn.stack(a10, a11, b1))
    none = fn.cast(flip * 0, dtype=types.FLOAT)       # a sample's empty hole list, where no hole can be drawn
    return {"flip": flip, "matrix": matrix,
            "anchor": fn.stack(*anchors) if anchors else fn.stack(none, none),
            "shape": fn.stack(*shapes) if shapes else fn.stack(none, none),
            # the raw draws, for the parity harness's KS tests
            "raw": (fn.cast(flip, dtype=types.INT32), ssr, angle, sx, sy, tx, ty, drop,
                    *(v for hole in raw_holes for v in hole))}


def _whole_draw(lo: int, hi: int):
    """A whole number uniform on lo..hi, as a float."""
    return fn.random.uniform(values=[float(v) for v in range(int(lo), int(hi) + 1)])


def augment(x, flip, matrix, anchor, shape, policy: AugmentPolicy):
    """uint8 HWC in, uint8 HWC out: flip, warp with the mean border, hole."""
    fill = list(ssr_fill(policy))
    x = fn.flip(x, horizontal=flip, vertical=0)
    xf = fn.crop_mirror_normalize(x, mean=fill, std=[1.0] * 3, dtype=types.FLOAT, output_layout="HWC")
    xf = fn.warp_affine(xf, matrix=matrix, fill_value=0.0, interp_type=types.INTERP_LINEAR, inverse_map=True)
    xf = fn.crop_mirror_normalize(xf, mean=[-v for v in fill], std=[1.0] * 3, dtype=types.FLOAT,
                                  output_layout="HWC")
    x = fn.cast(xf, dtype=types.UINT8)     # rounds to nearest, saturates
    return fn.erase(x, anchor=anchor, shape=shape, axis_names="HW",
                    fill_value=[float(v) for v in dropout_fill(policy)])


def finish(x, policy: AugmentPolicy, normalize: bool):
    if not normalize:
        return x
    return fn.crop_mirror_normalize(x, mean=list(policy.mean), std=list(policy.std), dtype=types.FLOAT,
                                    output_layout="HWC")


def _device_id(device: torch.device):
    if device.type == "cuda":
        _log_once(f"DALI: GPU operators on cuda:{device.index if device.index is not None else torch.cuda.current_device()}")
        return device.index if device.index is not None else torch.cuda.current_device()
    _log_once("DALI: CPU operators (device_id=None): no CUDA device was asked for")
    return None


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
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1), mode="native",
                 num_threads=None, pipe_batch=None):
        if mode not in ("native", "replay"):
            raise ValueError(f"DALI mode must be 'native' or 'replay', not {mode!r}.")
        self.pipe_batch = whole_batches(pipe_batch, DEFAULT_PIPE_BATCH, batch_size, "pipe_batch")
        data, _ = load_split(data_dir, split)
        self.device, self.policy, self.augment, self.seed = device, policy, augment, seed
        self.batch_size, self.drop_last, self.normalize, self.return_index = batch_size, drop_last, normalize, return_index
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.rank, self.world = shard
        self.mode = mode
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        self.device_id = _device_id(device)
        # resident on the device (the GPU where there is one), read once; DALI is fed batches gathered there
        self.images = torch.from_numpy(np.array(data.images)).to(device)
        self.labels = torch.from_numpy(np.array(data.labels)).to(device)
        self._next_epoch = 0
        self.summary = (f"DALI {'GPU' if self.device_id is not None else 'CPU'} operators"
                        f"{f' on cuda:{self.device_id}, fed from GPU memory' if self.device_id is not None else ''}"
                        f", {mode} random parameters, DALI batches of {self.pipe_batch} images sliced into batches "
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
        replay_params = None
        if self.augment and self.mode == "replay":
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
            replay_params = sample_params(len(order), policy, gen)

        @pipeline_def(batch_size=self.pipe_batch, num_threads=self.num_threads, device_id=self.device_id,
                      seed=epoch_seed(self.seed, epoch) % (1 << 31), prefetch_queue_depth=2, exec_dynamic=True)
        def pipe():
            x = fn.external_source(source=source, batch=True, batch_info=True, layout="HWC", dtype=types.UINT8,
                                   device="gpu" if on_gpu else "cpu")
            if self.augment:
                if replay_params is None:
                    p = native_params(policy)
                    x = augment(x, p["flip"], p["matrix"], p["anchor"], p["shape"], policy)
                else:
                    flip, matrix, anchor, shape = fn.external_source(
                        source=_ReplaySource(replay_params, policy, self.pipe_batch), num_outputs=4,
                        batch=True, batch_info=True)
                    x = augment(x, flip, matrix, anchor, shape, policy)
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


class _ReplaySource:
    """external_source callback for replay mode: the shared sampler's parameters, batch by batch."""

    def __init__(self, params: Params, policy: AugmentPolicy, batch_size: int):
        p = params.numpy()
        self.flip = p["flip"].astype(np.int32)
        forward = forward_matrix(params, policy.image_size).numpy()
        forward[~p["ssr"]] = np.eye(3)             # not applied: the exact identity
        self.matrix = dali_matrix(forward)
        applied = p["dropout"].astype(np.float32)[:, None]
        # (n, 2 * holes): y, x of each hole; its height and width, 0 where it is not drawn or dropout not applied
        self.anchor = np.stack([p["hole_y"], p["hole_x"]], -1).reshape(len(applied), -1).astype(np.float32)
        self.shape = np.stack([p["hole_h"] * applied, p["hole_w"] * applied], -1).reshape(len(applied), -1)
        self.shape = self.shape.astype(np.float32)
        if self.anchor.shape[1] == 0:       # no hole can be drawn: one empty region
            self.anchor = self.shape = np.zeros((len(applied), 2), np.float32)
        self.batch_size = batch_size

    def __call__(self, info):
        s = slice(info.iteration * self.batch_size, (info.iteration + 1) * self.batch_size)
        if s.start >= len(self.flip):
            raise StopIteration
        return self.flip[s], self.matrix[s], self.anchor[s], self.shape[s]


# ---------------------------------------------------------------------------------------------
# for the parity harness
# ---------------------------------------------------------------------------------------------

def replay(images: torch.Tensor, params: Params, policy: AugmentPolicy) -> torch.Tensor:
    """uint8 (B, H, W, 3) through the DALI ops with the given parameters -> uint8 (B, H, W, 3)."""
    device_id = _device_id(images.device)
    batch = images.cpu().numpy()
    n = len(batch)
    rp = _ReplaySource(params, policy, n)

    @pipeline_def(batch_size=n, num_threads=os.cpu_count() or 1, device_id=device_id, seed=0,
                  exec_dynamic=True)
    def pipe():
        x = fn.external_source(source=lambda: batch, batch=True, layout="HWC", dtype=types.UINT8)
        if device_id is not None:
            x = x.gpu()
        flip, matrix, anchor, shape = fn.external_source(source=lambda: (rp.flip, rp.matrix, rp.anchor, rp.shape),
                                                         num_outputs=4, batch=True)
        return augment(x, flip, matrix, anchor, shape, policy)

    p = pipe()
    p.build()
    (out,) = p.run()
    out = out.as_cpu() if device_id is not None else out
    return torch.from_numpy(np.stack([np.array(t) for t in out])).to(images.device)


def native_draw(n: int, policy: AugmentPolicy, seed: int, device="cpu") -> tuple[Params, np.ndarray]:
    """``n`` samples' parameters as DALI's native random ops draw them, and the (n, 2, 3) warp matrices
    the native graph computes from them (a test checks those against ``dali_matrix``)."""
    device_id = _device_id(torch.device(device))

    @pipeline_def(batch_size=n, num_threads=os.cpu_count() or 1, device_id=device_id, seed=seed % (1 << 31),
                  exec_dynamic=True)
    def pipe():
        p = native_params(policy)
        return (*p["raw"], p["matrix"])

    p = pipe()
    p.build()
    *raw, matrix = p.run()
    raw = [np.array([np.array(t) for t in o]).reshape(n) for o in raw]
    flip, ssr, angle, sx, sy, tx, ty, drop = raw[:8]
    holes = np.array(raw[8:]).reshape(-1, 4, n).astype(np.int64)       # (max holes, [y, x, h, w], n)
    hy, hx, hh, hw = (np.ascontiguousarray(holes[:, j].T) for j in range(4))
    t = torch.from_numpy
    params = Params(t(flip.astype(bool)), t(ssr > 0.5), t(angle.astype(np.float32)), t(sx.astype(np.float32)),
                    t(sy.astype(np.float32)), t(tx.astype(np.int64)), t(ty.astype(np.int64)), t(drop > 0.5),
                    t(hy), t(hx), t(hh), t(hw))
    return params, np.stack([np.array(m) for m in matrix])


def sampled_params(n: int, policy: AugmentPolicy, seed: int, device="cpu") -> Params:
    """For the parity harness's KS tests: what DALI's native random ops draw."""
    return native_draw(n, policy, seed, device)[0]


LOADER = DaliLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return DaliLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                      normalize=normalize, return_index=return_index, **options)
