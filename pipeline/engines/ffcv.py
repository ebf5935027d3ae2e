"""The ``ffcv`` engine: the converted arrays as FFCV ``.beton`` files, read by an FFCV ``Loader``.

The .beton (an RGB image field written raw, an int label field and the sample's index) is written on
first use, beside the arrays in ``DIR/ffcv/``, named after the sha256 of the arrays it was made from,
so a re-converted folder gets a new one; it is written into a temporary file and renamed, and
``python -m pipeline.convert ... --beton`` writes it up front.

FFCV has a horizontal flip and a cutout but no rotation or scale, and its cutout is centred (partly
outside the image) with a constant fill, so the policy needs its own code. Both ways are built:

- ``mode="numba"``: one custom FFCV Operation, compiled by numba and parallel over the batch, doing
  flip, the bilinear shift-scale-rotate with the mean border and the hole on the CPU workers; its
  random numbers are seeded from (seed, the batch's indices), so an epoch is reproducible;
- ``mode="torch"``: FFCV decodes and moves raw uint8 batches to the device, and the shared batched
  torch ops (``pipeline.ops.apply``, the ``gpu`` engine's) augment them there, with parameters from
  ``pipeline.params`` seeded by (seed, epoch).

Measured side by side on this project's 2-core CPU (full train split, batch 512, loader-only, second
epoch): numba 50,195 / 50,309 img/s, torch 37,746 / 44,211 img/s; numba's first epoch costs ~7.5 s
of JIT compilation against ~2 s. So the default is numba on the CPU; on a GPU it is torch, which
turns the augmentation into a few GPU kernels instead of CPU work per image (bench/gpu_report.sh
measures both there: see bench/results).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.transforms import Squeeze, ToDevice, ToTensor
from ffcv.writer import DatasetWriter
from numba import njit

from pipeline.format import DataError, load_split
from pipeline.ops import apply
from pipeline.output import Normalizer, epoch_seed
from pipeline.params import Params, dropout_fill, forward_matrix, sample_params, ssr_fill
from pipeline.policy import AugmentPolicy


# ---------------------------------------------------------------------------------------------
# the .beton
# ---------------------------------------------------------------------------------------------

class _Arrays:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return np.asarray(self.images[i]), int(self.labels[i]), int(i)


def beton_path(data_dir, split: str) -> Path:
    from pipeline.format import read_meta
    meta = read_meta(data_dir)
    digest = meta["sha256"][f"{split}_images.npy"][:12] + meta["sha256"][f"{split}_labels.npy"][:4]
    return Path(data_dir) / "ffcv" / f"{split}-{digest}.beton"


def ensure_beton(data_dir, split: str, log=None) -> Path:
    """The split's .beton, written (atomically) if it is missing or was made from other arrays."""
    path = beton_path(data_dir, split)
    if path.is_file():
        return path
    data, _ = load_split(data_dir, split)
    path.parent.mkdir(exist_ok=True)
    for stale in path.parent.glob(f"{split}-*.beton"):
        stale.unlink()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if log:
        log(f"writing {path} ({len(data.labels)} images)")
    try:
        writer = DatasetWriter(str(tmp), {"image": RGBImageField(write_mode="raw"), "label": IntField(),
                                          "index": IntField()}, num_workers=os.cpu_count() or 1)
        writer.from_indexed_dataset(_Arrays(data.images, data.labels))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# mode="numba": the policy as one FFCV Operation
# ---------------------------------------------------------------------------------------------

# Every kernel is compiled eagerly, with its one signature, when this module is imported: FFCV calls them
# from its own threads, and numba's lazy compilation of a new signature there raced with other
# threads (KeyError in the dispatcher, then a silent hang of the loader). Fills are passed as scalars
# so that no closure array (read-only to numba) asks for a second signature.
@njit("void(uint8[:, :, ::1], uint8[:, :, ::1], boolean, float64[:, ::1], boolean, int64[::1], int64[::1], "
      "int64[::1], int64[::1], float64, float64, float64, uint8, uint8, uint8)", cache=False)
def _augment_one(img, out, flip, m, drop, hy, hx, hh, hw, fb0, fb1, fb2, fh0, fh1, fh2):
    """One HWC uint8 image -> ``out``: flip; warp with the (2, 3) output->input matrix ``m`` (pixel
    coordinates, OpenCV's convention; all-zero means not applied), bilinear, border (fb0, fb1, fb2);
    holes ``k`` of ``hh[k]`` x ``hw[k]`` at (``hy[k]``, ``hx[k]``) filled with (fh0, fh1, fh2) where ``drop``."""
    h, w, c = img.shape
    fill_b = (fb0, fb1, fb2)
    fill_h = (fh0, fh1, fh2)
    src = img[:, ::-1] if flip else img
    if m[0, 0] == 0.0 and m[0, 1] == 0.0:
        out[:] = src
    else:
        for y in range(h):
            for x in range(w):
                sx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
                sy = m[1, 0] * x + m[1, 1] * y + m[1, 2]
                x0 = math.floor(sx)
                y0 = math.floor(sy)
                fx = sx - x0
                fy = sy - y0
                for ch in range(c):
                    acc = 0.0
                    for dy in range(2):
                        for dx in range(2):
                            yy = y0 + dy
                            xx = x0 + dx
                            wgt = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
                            if 0 <= yy < h and 0 <= xx < w:
                                acc += wgt * src[yy, xx, ch]
                            else:
                                acc += wgt * fill_b[ch]
                    v = np.rint(acc)
                    out[y, x, ch] = 0 if v < 0 else (255 if v > 255 else np.uint8(v))
    if drop:
        for k in range(len(hy)):
            for y in range(hy[k], hy[k] + hh[k]):
                for x in range(hx[k], hx[k] + hw[k]):
                    for ch in range(c):
                        out[y, x, ch] = fill_h[ch]


@njit("Tuple((boolean[::1], boolean[::1], float64[::1], float64[::1], float64[::1], int64[::1], int64[::1], "
      "boolean[::1], int64[:, ::1], int64[:, ::1], int64[:, ::1], int64[:, ::1]))(int64, int64, float64, float64, "
      "float64, UniTuple(float64, 14), UniTuple(int64, 2), boolean)", cache=False)
def _draw(n, size, flip_p, ssr_p, drop_p, ranges, holes, pixels):
    """numba's draws for ``n`` samples, with albumentations 2.x's distributions. ``ranges``: rotate, scale x,
    scale y, shift x, shift y, hole height, hole width (low, high each); ``holes``: the number's range;
    ``pixels``: hole sizes in whole pixels (else fractions of the side)."""
    flips = np.random.rand(n) < flip_p
    ssr = np.random.rand(n) < ssr_p
    angle = np.random.uniform(ranges[0], ranges[1], n)
    sx = np.random.uniform(ranges[2], ranges[3], n)
    sy = np.random.uniform(ranges[4], ranges[5], n)
    tx = np.empty(n, np.int64)
    ty = np.empty(n, np.int64)
    for i in range(n):
        tx[i] = int(np.random.uniform(ranges[6], ranges[7]) * size)     # int(): toward zero, as albumentations
        ty[i] = int(np.random.uniform(ranges[8], ranges[9]) * size)
    drops = np.random.rand(n) < drop_p
    most = holes[1]
    hh = np.zeros((n, most), np.int64)
    hw = np.zeros((n, most), np.int64)
    hys = np.zeros((n, most), np.int64)
    hxs = np.zeros((n, most), np.int64)
    for i in range(n):
        count = np.random.randint(holes[0], holes[1] + 1)
        for k in range(count):
            if pixels:
                hh[i, k] = np.random.randint(int(ranges[10]), int(ranges[11]) + 1)
                hw[i, k] = np.random.randint(int(ranges[12]), int(ranges[13]) + 1)
            else:
                hh[i, k] = int(np.random.uniform(ranges[10], ranges[11]) * size)
                hw[i, k] = int(np.random.uniform(ranges[12], ranges[13]) * size)
            hys[i, k] = np.random.randint(0, size - hh[i, k] + 1)
            hxs[i, k] = np.random.randint(0, size - hw[i, k] + 1)
    return flips, ssr, angle, sx, sy, tx, ty, drops, hys, hxs, hh, hw


def _draw_args(policy: AugmentPolicy) -> tuple:
    """_draw's arguments after ``n`` for the policy."""
    s, d = policy.ssr, policy.dropout
    # tuples, not arrays: numba sees a closure's arrays as read-only, a type the signature does not take
    ranges = tuple(float(v) for v in (*s.rotate, *s.scale_x, *s.scale_y, *s.shift_x, *s.shift_y, *d.hole_height,
                                      *d.hole_width))
    return (policy.image_size, float(policy.flip.p), float(s.p), float(d.p), ranges,
            tuple(int(v) for v in d.num_holes), bool(d.in_pixels))


@njit("float64[:, :, ::1](boolean[::1], float64[::1], float64[::1], float64[::1], int64[::1], int64[::1], int64)",
      cache=False)
def _inverse_matrices(ssr, angle, sx, sy, tx, ty, size):
    """(n, 2, 3) output -> input matrices (the inverse of albumentations' M); zeros where not applied."""
    n = len(ssr)
    m = np.zeros((n, 2, 3))
    c = size / 2 - 0.5
    for i in range(n):
        if ssr[i]:
            a = math.radians(angle[i])
            cs, sn = math.cos(a), math.sin(a)
            a00, a01, a10, a11 = cs / sx[i], -sn / sx[i], sn / sy[i], cs / sy[i]
            m[i, 0, 0], m[i, 0, 1], m[i, 1, 0], m[i, 1, 1] = a00, a01, a10, a11
            m[i, 0, 2] = c - (a00 * (c + tx[i]) + a01 * (c + ty[i]))
            m[i, 1, 2] = c - (a10 * (c + tx[i]) + a11 * (c + ty[i]))
    return m


@njit("void(uint64, int64[:])", cache=False)
def _seed_from(base, indices):
    """Seed numba's generator from (seed, the batch's sample indices)."""
    h = base
    for j in indices:
        h = h * np.uint64(6364136223846793005) + np.uint64(j) + np.uint64(1442695040888963407)
    np.random.seed(np.uint32(h >> np.uint64(32)))


class NumbaPolicy(Operation):
    """Flip, shift-scale-rotate and the hole in one numba kernel, parallel over the batch (CPU workers).
    The draws are seeded from (seed, the batch's sample indices): FFCV's order is seeded by (seed, epoch),
    so the same seed and epoch give the same batches and the same draws, whichever thread runs them."""

    def __init__(self, policy: AugmentPolicy, seed: int):
        super().__init__()
        self.policy, self.seed = policy, seed

    def generate_code(self):
        my_range = Compiler.get_iterator()
        p, size = self.policy, self.policy.image_size
        fb0, fb1, fb2 = (float(v) for v in ssr_fill(p))
        fh0, fh1, fh2 = (np.uint8(v) for v in dropout_fill(p))
        args = _draw_args(p)
        base = np.uint64(self.seed % (1 << 63))
        draw, inverse, seed_from, augment_one = _draw, _inverse_matrices, _seed_from, _augment_one

        def policy_op(images, dst, indices):
            seed_from(base, indices.astype(np.int64))
            flips, ssr, angle, sx, sy, tx, ty, drops, hys, hxs, hhs, hws = draw(images.shape[0], *args)
            m = inverse(ssr, angle, sx, sy, tx, ty, size)
            for i in my_range(images.shape[0]):
                augment_one(images[i], dst[i], flips[i], m[i], drops[i], hys[i], hxs[i], hhs[i], hws[i],
                            fb0, fb1, fb2, fh0, fh1, fh2)
            return dst

        policy_op.is_parallel = True
        policy_op.with_indices = True
        return policy_op

    def declare_state_and_memory(self, previous_state):
        from dataclasses import replace
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)


def replay(images: torch.Tensor, params: Params, policy: AugmentPolicy) -> torch.Tensor:
    """For the parity harness: the numba kernel of ``mode="numba"`` with the given parameters
    (``mode="torch"`` runs ``pipeline.ops``, whose parity the gpu engine's tests check)."""
    src = images.cpu().numpy()
    out = np.empty_like(src)
    p = params.numpy()
    inverse = np.linalg.inv(forward_matrix(params, policy.image_size).numpy())[:, :2]
    inverse[~p["ssr"]] = 0.0
    fills = (*(float(v) for v in ssr_fill(policy)), *(np.uint8(v) for v in dropout_fill(policy)))
    holes = [np.ascontiguousarray(p[k], dtype=np.int64) for k in ("hole_y", "hole_x", "hole_h", "hole_w")]
    for i in range(len(src)):
        _augment_one(src[i], out[i], bool(p["flip"][i]), np.ascontiguousarray(inverse[i]), bool(p["dropout"][i]),
                     *(h[i] for h in holes), *fills)
    return torch.from_numpy(out).to(images.device)


def sampled_params(n: int, policy: AugmentPolicy, seed: int, device="cpu") -> Params:
    """What the default mode for ``device`` draws: numba's generator on the CPU, ``pipeline.params``
    (torch) on a GPU."""
    if default_mode(torch.device(device)) == "torch":
        return sample_params(n, policy, torch.Generator(device=device).manual_seed(seed), device=device)
    _seed_from(np.uint64(seed % (1 << 63)), np.arange(1, dtype=np.int64))
    flips, ssr, angle, sx, sy, tx, ty, drops, hys, hxs, hhs, hws = _draw(n, *_draw_args(policy))
    t = torch.from_numpy
    return Params(t(flips), t(ssr), t(angle.astype(np.float32)), t(sx.astype(np.float32)), t(sy.astype(np.float32)),
                  t(tx), t(ty), t(drops), t(hys), t(hxs), t(hhs), t(hws))


def default_mode(device: torch.device) -> str:
    """numba on the CPU (measured faster there, see the module docstring); torch on a GPU, where the
    augmentation runs as a few GPU kernels instead of on the CPU workers."""
    return "torch" if device.type == "cuda" else "numba"


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------

class FfcvLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1), mode=None,
                 num_workers=None, batches_ahead=3, os_cache=True):
        mode = default_mode(device) if mode is None else mode
        if mode not in ("torch", "numba"):
            raise ValueError(f"FFCV mode must be 'torch' or 'numba', not {mode!r}.")
        self.device, self.policy, self.augment, self.seed, self.mode = device, policy, augment, seed, mode
        self.normalize, self.return_index = normalize, return_index
        path = ensure_beton(data_dir, split, log=print)
        n = len(load_split(data_dir, split, verify=False)[0].labels)
        rank, world = shard
        shuffle = split == "train" if shuffle is None else shuffle
        image_ops = [SimpleRGBImageDecoder()]
        if augment and mode == "numba":
            image_ops.append(NumbaPolicy(policy, seed))
        to_dev = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
        self.loader = Loader(
            str(path), batch_size=batch_size, num_workers=num_workers or os.cpu_count() or 1,
            os_cache=os_cache, order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
            seed=seed % (1 << 31), indices=np.arange(n)[rank::world] if world > 1 else None,
            drop_last=drop_last, batches_ahead=batches_ahead,
            pipelines={"image": image_ops + [ToTensor()] + to_dev,
                       "label": [IntDecoder(), ToTensor(), Squeeze()] + to_dev,
                       "index": [IntDecoder(), ToTensor(), Squeeze()] + to_dev})
        self.output = Normalizer(policy, device, normalize)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        self.loader.next_epoch = epoch
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch))
        for images, labels, idx in self.loader:
            # FFCV reuses its batch buffers for the batches ahead: copy out what we hand on
            labels, idx = labels.reshape(-1).to(torch.long, copy=True), idx.reshape(-1).to(torch.long, copy=True)
            if self.augment and self.mode == "torch":
                x = self.output.pixels(apply(images, sample_params(len(idx), self.policy, gen), self.policy))
            else:
                x = self.output(images if self.normalize else images.clone())   # (the buffer is reused)
            yield (x, labels, idx) if self.return_index else (x, labels)


LOADER = FfcvLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    try:
        return FfcvLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                          normalize=normalize, return_index=return_index, **options)
    except OSError as e:
        raise DataError(f"cannot write the FFCV .beton in {data_dir}/ffcv ({e}).") from None
