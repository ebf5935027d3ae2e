"""The ``ffcv`` engine: the converted arrays as FFCV ``.beton`` files, read by an FFCV ``Loader``.

The .beton (an RGB image field written raw, an int label field and the sample's index) is written on
first use, beside the arrays in ``DIR/ffcv/``, named after the sha256 of the arrays it was made from,
so a re-converted folder gets a new one; it is written into a temporary file, recorded (the arrays'
sha256, its sample count, size and sha256: ``pipeline.format.record_beton``) and renamed, and
``python -m pipeline.convert ... --beton`` writes it up front. It is part of the converted data, not a
cache taken on trust: before FFCV opens it, it is read into memory and checked against its record and
meta.json, then its header against the sample count (``read_beton``); FFCV reads the samples from that
checked copy. A file at its path without a record is the user's: refused, never overwritten.

FFCV has a horizontal flip and a cutout but no rotation, crop-and-pad or colour transform of albumentations'
semantics, so FFCV decodes and moves raw uint8 batches to the device (``ToDevice`` on a GPU), and the policy's own
batched torch ops (``policy.apply``, the ``gpu`` engine's) augment them there, with parameters from
``policy.sample`` seeded by (seed, epoch). (A numba FFCV Operation of the first three transforms was measured 1.1 to
1.3x faster on a 2-core CPU; one per transform was not worth a second implementation of every transform.)
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
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
from ffcv.transforms import Squeeze, ToDevice, ToTensor
from ffcv.writer import DatasetWriter

from pipeline import format as fmt
from pipeline.format import DataError, load_split, read_meta
from pipeline.output import Normalizer, epoch_seed
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
# the loader
# ---------------------------------------------------------------------------------------------

class FfcvLoader:
    """One epoch per ``iter()``; the epoch number advances after each, or is set with ``set_epoch``.

    Options: ``num_workers`` (FFCV's threads, 1 to what numba allows here; default all cores), ``batches_ahead`` (batches FFCV prepares ahead, default 3), ``shuffle``,
    ``drop_last``, ``shard``. The .beton is read into memory once (``read_beton``)."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed,
                 normalize, return_index, shuffle=None, drop_last=False, shard=(0, 1),
                 num_workers=None, batches_ahead=3):
        workers = _threads(num_workers)
        if isinstance(batches_ahead, bool) or not isinstance(batches_ahead, int) or not 1 <= batches_ahead <= 64:
            raise ValueError(f"batches_ahead must be a whole number of batches from 1 to 64, not {batches_ahead!r}.")
        self.device, self.policy, self.augment, self.seed = device, policy, augment, seed
        self.normalize, self.return_index = normalize, return_index
        path = ensure_beton(data_dir, split, log=print)
        meta = read_meta(data_dir)
        self.beton = read_beton(path, meta, split)
        n = meta["counts"][split]
        rank, world = shard
        shuffle = split == "train" if shuffle is None else shuffle
        image_ops = [SimpleRGBImageDecoder()]
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
            if self.augment:
                x = self.output.pixels(self.policy.apply(images.to(self.device), self.policy.sample(len(idx), gen)))
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
