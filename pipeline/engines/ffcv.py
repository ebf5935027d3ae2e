"""The ``ffcv`` engine: the converted arrays as FFCV ``.beton`` files, read by an FFCV ``Loader``.

The .beton (an RGB image field written raw, an int label field and the sample's index) is written on
first use, beside the arrays in ``DIR/ffcv/``, named after the sha256 of the arrays it was made from,
so a re-converted folder gets a new one; it is written into a temporary file, recorded (the arrays'
sha256, its sample count, size and sha256: ``pipeline.format.record_beton``) and renamed, and
``python -m pipeline.convert ... --beton`` writes it up front. It is part of the converted data, not a
cache taken on trust: before FFCV opens it, it is read into memory and checked against its record and
meta.json, then its header against the sample count (``read_beton``); FFCV reads the samples from that
checked copy. A file at its path without a record is the user's: refused, never overwritten.

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

import contextlib
import fcntl
import hashlib
import math
import os
import queue
import threading
import weakref
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

from pipeline import format as fmt
from pipeline.format import DataError, load_split, read_meta
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


FIELDS = (("image", 2), ("label", 1), ("index", 1))     # the .beton's fields and FFCV's type ids (RGB image, int)


def beton_path(data_dir, split: str) -> Path:
    return fmt.beton_path(data_dir, read_meta(data_dir), split)


@contextlib.contextmanager
def _writing(folder: Path, split: str):
    """Hold the lock of ``split``'s .beton in ``folder`` (a blocking one: a second process, a DDP rank, waits for
    the first to write it and then uses it)."""
    fd = os.open(folder / f".{split}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_beton(data_dir, split: str, log=None) -> Path:
    """The split's .beton, written (atomically, with its record: ``pipeline.fmt.record_beton``) if it is
    missing. A file at its path that no conversion wrote (no record, or of another size than its record) is
    refused with a sentence, never overwritten; .betons of older arrays that are ours are removed."""
    meta = read_meta(data_dir)
    path = fmt.beton_path(data_dir, meta, split)
    path.parent.mkdir(exist_ok=True)
    with _writing(path.parent, split):
        if path.exists():
            if not fmt.owned_beton(path):
                raise DataError(f"{path} was not written by cifarflow (it has no record {path.name}.json beside it, "
                                f"or another size than its record says): move it out of {path.parent} and the ffcv "
                                f"loader writes its own from the arrays.")
            return path
        data, _ = load_split(data_dir, split)
        for stale in path.parent.glob(f"{split}-*.beton"):
            fmt.remove_beton(stale)          # ours only: a .beton without its record stays
        for stale in path.parent.glob(f".{split}-*.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not fmt.pid_alive(int(pid)):
                stale.unlink(missing_ok=True)   # a killed writer's
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if log:
            log(f"writing {path} ({len(data.labels)} images)")
        try:
            writer = DatasetWriter(str(tmp), {"image": RGBImageField(write_mode="raw"), "label": IntField(),
                                              "index": IntField()}, num_workers=os.cpu_count() or 1)
            writer.from_indexed_dataset(_Arrays(data.images, data.labels))
            fmt.record_beton(path, tmp, meta, split, len(data.labels))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def read_beton(path: Path, meta: dict, split: str) -> np.ndarray:
    """The .beton's bytes, read into memory once (read-only) after checking them against its record and the data's
    meta.json: the arrays it was written from, its size and sha256, then its header (FFCV's format version, the
    fields, the sample count, each image 32x32 and every pointer inside the file). The loader reads its samples
    from this copy, not from a memory map of the file, so a file truncated or replaced during an epoch changes
    nothing (a map would kill the process with SIGBUS). DataError with a sentence for every mismatch."""
    record = fmt.beton_record(path)
    count = meta["counts"][split]
    redo = f"delete it and its record {path.name}.json, and the ffcv loader writes it again from the arrays"
    if record is None:
        raise DataError(f"{path} has no record of the arrays it was written from: {redo}.")
    if (record["split"], record["count"], record["images_sha256"], record["labels_sha256"]) != (
            split, count, meta["sha256"][f"{split}_images.npy"], meta["sha256"][f"{split}_labels.npy"]):
        raise DataError(f"{path} was written from other arrays than {split}'s in {path.parent.parent} (its record "
                        f"says {record['split']}, {record['count']} images): {redo}.")
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) != record["size"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(f"{path} does not match its record ({len(data)} bytes, {record['size']} written): it was "
                        f"damaged, truncated or replaced since it was written: {redo}.")
    problem = _header_problem(data, count)
    if problem:
        raise DataError(f"{path} is not the .beton of {count} CIFAR images this conversion writes ({problem}): {redo}.")
    data.setflags(write=False)
    return data


def _header_problem(data: np.ndarray, count: int) -> str | None:
    """What in the .beton's header does not fit ``count`` 32x32 RGB images with their label and index, or None."""
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType
    if len(data) < HeaderType.itemsize + 3 * FieldDescType.itemsize:
        return "shorter than its header"
    header = data[:HeaderType.itemsize].view(HeaderType)[0]
    if header["version"] != CURRENT_VERSION:
        return f"FFCV format version {header['version']}, not {CURRENT_VERSION}"
    if header["num_samples"] != count or header["num_fields"] != len(FIELDS):
        return f"{header['num_samples']} samples of {header['num_fields']} fields"
    descs = data[HeaderType.itemsize:HeaderType.itemsize + len(FIELDS) * FieldDescType.itemsize].view(FieldDescType)
    names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in descs]
    if [(n, int(d["type_id"])) for n, d in zip(names, descs)] != list(FIELDS):
        return f"fields {', '.join(names)}"
    table_at = int(header["alloc_table_ptr"])
    if not 0 < table_at <= len(data) or (len(data) - table_at) % ALLOC_TABLE_TYPE.itemsize:
        return "an allocation table outside the file"
    table = data[table_at:].view(ALLOC_TABLE_TYPE)
    if len(table) != count or (table["ptr"] + table["size"] > table_at).any() or (table["sample_id"] >= count).any():
        return "sample data outside the file"
    return None


def _in_memory(loader: Loader, data: np.ndarray, path: Path) -> None:
    """Make FFCV's loader read its samples from ``data`` (read_beton's checked copy) instead of a memory map of the
    file, after checking that the header FFCV read from the file is the one checked."""
    from ffcv.types import ALLOC_TABLE_TYPE, HeaderType
    header = data[:HeaderType.itemsize].view(HeaderType)[0]
    table = data[int(header["alloc_table_ptr"]):].view(ALLOC_TABLE_TYPE)
    if loader.reader.num_samples != header["num_samples"] or not np.array_equal(loader.reader.alloc_table, table):
        raise DataError(f"{path} changed while it was being opened: run the command again.")
    loader.memory_manager.context.mmap = data      # FFCV's OS-cache context maps the file only when this is None


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
        for k in range(len(hy)):        # each hole clipped to the image, whatever the parameters say
            for y in range(max(hy[k], 0), min(hy[k] + hh[k], h)):
                for x in range(max(hx[k], 0), min(hx[k] + hw[k], w)):
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
            hh[i, k] = min(max(hh[i, k], 0), size)      # a hole never larger than the image (the policy's checks
            hw[i, k] = min(max(hw[i, k], 0), size)      # keep it so; a kernel stays in bounds whatever it is handed)
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
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``.

    Options: ``mode`` ("numba" or "torch"; default: ``default_mode``), ``num_workers`` (FFCV's threads, 1 to what
    numba allows here; default all cores), ``batches_ahead`` (batches FFCV prepares ahead, default 3), ``shuffle``,
    ``drop_last``, ``shard``. The .beton is read into memory once (``read_beton``)."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1), mode=None,
                 num_workers=None, batches_ahead=3):
        mode = default_mode(device) if mode is None else mode
        if mode not in ("torch", "numba"):
            raise ValueError(f"FFCV mode must be 'torch' or 'numba', not {mode!r}.")
        workers = _threads(num_workers)
        if isinstance(batches_ahead, bool) or not isinstance(batches_ahead, int) or not 1 <= batches_ahead <= 64:
            raise ValueError(f"batches_ahead must be a whole number of batches from 1 to 64, not {batches_ahead!r}.")
        self.device, self.policy, self.augment, self.seed, self.mode = device, policy, augment, seed, mode
        self.normalize, self.return_index = normalize, return_index
        path = ensure_beton(data_dir, split, log=print)
        meta = read_meta(data_dir)
        self.beton = read_beton(path, meta, split)
        n = meta["counts"][split]
        rank, world = shard
        shuffle = split == "train" if shuffle is None else shuffle
        image_ops = [SimpleRGBImageDecoder()]
        if augment and mode == "numba":
            image_ops.append(NumbaPolicy(policy, seed))
        to_dev = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
        self.loader = Loader(
            str(path), batch_size=batch_size, num_workers=workers, os_cache=True,
            order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
            seed=seed % (1 << 31), indices=np.arange(n)[rank::world] if world > 1 else None,
            drop_last=drop_last, batches_ahead=batches_ahead,
            pipelines={"image": image_ops + [ToTensor()] + to_dev,
                       "label": [IntDecoder(), ToTensor(), Squeeze()] + to_dev,
                       "index": [IntDecoder(), ToTensor(), Squeeze()] + to_dev})
        _in_memory(self.loader, self.beton, path)
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
        for images, labels, idx in _batches(iter(self.loader)):
            # FFCV reuses its batch buffers for the batches ahead: copy out what we hand on
            labels, idx = labels.reshape(-1).to(torch.long, copy=True), idx.reshape(-1).to(torch.long, copy=True)
            if self.augment and self.mode == "torch":
                x = self.output.pixels(apply(images, sample_params(len(idx), self.policy, gen), self.policy))
            else:
                x = self.output(images if self.normalize else images.clone())   # (the buffer is reused)
            yield (x, labels, idx) if self.return_index else (x, labels)


def _threads(num_workers) -> int:
    """FFCV's thread count: numba runs at most NUMBA_NUM_THREADS threads (the cores, unless set), and FFCV's own
    error for more is numba's; said here in one sentence instead."""
    import numba
    most = numba.config.NUMBA_NUM_THREADS
    if num_workers is None:
        return min(os.cpu_count() or 1, most)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or not 1 <= num_workers <= most:
        raise ValueError(f"the ffcv loader runs 1 to {most} threads on this machine (numba's limit, "
                         f"NUMBA_NUM_THREADS), not {num_workers!r}: pass --workers from 1 to {most}.")
    return num_workers


# errors of FFCV's loader threads, recorded as they die (FFCV's iterator would wait for their batch forever)
_THREAD_ERRORS: "weakref.WeakKeyDictionary[threading.Thread, BaseException]" = weakref.WeakKeyDictionary()
_default_excepthook = threading.excepthook


def _record_thread_error(args) -> None:
    from ffcv.loader.epoch_iterator import EpochIterator
    if isinstance(args.thread, EpochIterator):
        _THREAD_ERRORS[args.thread] = args.exc_value
    else:
        _default_excepthook(args)


threading.excepthook = _record_thread_error


def _batches(epoch):
    """The batches of FFCV's EpochIterator ``epoch``, as its ``__next__`` hands them out, but never waiting on a
    thread that has died: its error becomes a DataError with a sentence."""
    cuda = epoch.cuda_streams[0] is not None
    while True:
        try:
            item = epoch.output_queue.get(timeout=0.5)
        except queue.Empty:
            if epoch.is_alive():
                continue
            try:
                item = epoch.output_queue.get_nowait()
            except queue.Empty:
                error = _THREAD_ERRORS.pop(epoch, None)
                epoch.close()
                what = f"{type(error).__name__}: {error}" if error is not None else "it stopped without a batch"
                raise DataError(f"FFCV's loader thread failed ({what}); the epoch cannot go on.") from None
        if item is None:
            epoch.close()
            return
        slot, result = item
        if cuda:
            epoch.current_stream.wait_stream(epoch.cuda_streams[slot])    # the batch's copy to the GPU is done
        yield result


LOADER = FfcvLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    try:
        return FfcvLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                          normalize=normalize, return_index=return_index, **options)
    except OSError as e:
        raise DataError(f"cannot write the FFCV .beton in {data_dir}/ffcv ({e}).") from None
