"""The on-disk format of a converted CIFAR-10: four .npy arrays and meta.json.

    DIR/train_images.npy  (N, 32, 32, 3) uint8, HWC, RGB
    DIR/train_labels.npy  (N,) int64, 0..9
    DIR/test_images.npy   (M, 32, 32, 3) uint8
    DIR/test_labels.npy   (M,) int64
    DIR/meta.json         format version, class names, counts, per-channel train mean/std
                          (pixel units, 0..255), the source, and the sha256 of each .npy file

Arrays load with ``np.load(path, mmap_mode="r")``. Writing goes into a temporary folder beside
DIR that is renamed into place at the end (see ``atomic_dir``), so a reader never sees half a dataset.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "cifarflow"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
ARRAY_FILES = tuple(f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels"))


class DataError(Exception):
    """Bad input or a bad converted folder. The message is one sentence meant for the user."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray   # (N, 32, 32, 3) uint8, memory-mapped
    labels: np.ndarray   # (N,) int64


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population) of uint8 HWC images, in pixel units, exact in float64."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for i in range(0, len(images), chunk):
        block = images[i:i + chunk].reshape(-1, 3).astype(np.float64)
        total += block.sum(0)
        total_sq += (block * block).sum(0)
    n = len(images) * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def validate_arrays(split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{split} images must be uint8 of shape (N, 32, 32, 3), "
                        f"got {images.dtype} {tuple(images.shape)}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{split} has {len(images)} images but {len(labels)} labels.")
    if len(images) == 0:
        raise DataError(f"{split} has no images.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{split} labels must lie in 0..{num_classes - 1}, "
                        f"found {labels.min()}..{labels.max()}.")


def write_dataset(out: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]],
                  classes: list[str], source: dict) -> dict:
    """Write both splits and meta.json into the folder ``out`` (which should be a temporary one)."""
    for split in SPLITS:
        images, labels = arrays[split]
        validate_arrays(split, images, labels, len(classes))
    for split in SPLITS:
        images, labels = arrays[split]
        np.save(out / f"{split}_images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        np.save(out / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    mean, std = channel_stats(arrays["train"][0])
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": list(classes),
        "counts": {split: int(len(arrays[split][1])) for split in SPLITS},
        "mean": mean,
        "std": std,
        "source": source,
        "sha256": {name: sha256_file(out / name) for name in ARRAY_FILES},
    }
    _write_json(out / "meta.json", meta)
    for name in ARRAY_FILES + ("meta.json",):
        _fsync(out / name)
    return meta


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a converted folder, after checking that it is one, of this format version."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} does not exist: convert CIFAR-10 first with "
                        f"`python -m pipeline.convert --source SRC --out {data_dir}`.")
    if not path.is_file():
        raise DataError(f"{data_dir} holds no meta.json, so it is not a converted dataset: "
                        f"run `python -m pipeline.convert --source SRC --out {data_dir}`.")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}): convert again with --force.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a {FORMAT_NAME} meta file: convert again with --force.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{data_dir} is in format version {meta.get('format_version')}, this "
                        f"version of the tool reads version {FORMAT_VERSION}: convert again with --force.")
    return meta


_VERIFIED: dict[tuple, bool] = {}


def verify_hashes(data_dir: Path, meta: dict) -> None:
    """Check each array file against its sha256 in meta.json (once per process per file state)."""
    for name in ARRAY_FILES:
        path = data_dir / name
        if not path.is_file():
            raise DataError(f"{path} is missing: convert again with --force.")
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, meta["sha256"][name])
        if key in _VERIFIED:
            continue
        if sha256_file(path) != meta["sha256"][name]:
            raise DataError(f"{path} does not match its checksum in meta.json (corrupt or modified): "
                            f"convert again with --force.")
        _VERIFIED[key] = True


def load_split(data_dir: str | os.PathLike, split: str, verify: bool = True) -> tuple[Split, dict]:
    """Memory-map one split of a converted folder; returns (Split, meta)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose 'train' or 'test'.")
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if verify:
        verify_hashes(data_dir, meta)
    try:
        images = np.load(data_dir / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(data_dir / f"{split}_labels.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the {split} arrays in {data_dir} ({e}): convert again with --force.") from None
    validate_arrays(split, images, labels, len(meta["classes"]))
    if len(images) != meta["counts"][split]:
        raise DataError(f"{data_dir}: meta.json counts {meta['counts'][split]} {split} images, "
                        f"the array holds {len(images)}: convert again with --force.")
    return Split(images, labels), meta


# ---------------------------------------------------------------------------------------------
# Atomic folder replacement
# ---------------------------------------------------------------------------------------------

def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _remove_stale_tmp(final: Path) -> None:
    """Remove temporary folders that killed conversions (SIGKILL, power loss) left beside ``final``."""
    for p in final.parent.glob(_tmp_prefix(final) + "*"):
        pid = p.name[len(_tmp_prefix(final)):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a fresh temporary folder beside ``final``; on success, swap it into place.

    On any exception, KeyboardInterrupt included, the temporary folder is removed and ``final``
    is left exactly as it was (absent, or the old one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final)
    tmp = final.parent / f"{_tmp_prefix(final)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f"{_tmp_prefix(final)}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
