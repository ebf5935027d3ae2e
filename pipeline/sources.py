"""Readers for every CIFAR-10 source the converter accepts; each returns plain numpy arrays.

- the official python batches (a ``cifar-10-batches-py`` folder, or the official tar.gz), read with a
  restricted unpickler: they are pickles, and unpickling an untrusted file can run code;
- an image-folder tree ``train/<class>/*.jpg|png``, ``test/<class>/...``, as a folder or an archive
  (.tar, .tar.gz, .tgz, .zip), read in class order, then file-name order;
- ``download``: the official tar.gz, md5-checked, cached.

Archives are never extracted: members are checked (no absolute paths, no ``..``, no links or
devices, no oversized members) and read into memory one by one.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from tqdm import tqdm

from pipeline.format import CIFAR10_CLASSES, SPLITS, DataError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_BATCH_BYTES = 256 << 20     # an official batch is 31 MB
MAX_IMAGE_BYTES = 1 << 20       # a 32x32 image is a few kB
MAX_ARCHIVE_BYTES = 4 << 30     # uncompressed total read from one archive
CACHE_DIR = Path(os.environ.get("CIFARFLOW_CACHE", Path.home() / ".cache" / "cifarflow"))

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# The official python batches
# ---------------------------------------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """Allows exactly what a CIFAR-10 batch holds: builtin containers, and numpy arrays rebuilt
    through ``numpy.core.multiarray._reconstruct``. Any other global is refused before it is
    imported, so a payload such as ``os.system`` never runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _latin1_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused global _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused global"):
            raise DataError(f"{name} was refused: it asks to load {str(e)[len('refused global '):]}, "
                            f"which a CIFAR-10 batch never holds (possibly a malicious file).") from None
        raise DataError(f"{name} is not a readable pickle ({e}): the file is corrupt or truncated.") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError, OverflowError) as e:
        raise DataError(f"{name} is not a readable pickle ({type(e).__name__}: {e}): "
                        f"the file is corrupt or truncated.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name} holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (images (N,32,32,3) uint8, labels (N,) int64)."""
    d = _unpickle(data, name)
    if "data" not in d or not ("labels" in d or "fine_labels" in d):
        raise DataError(f"{name} has no 'data' and 'labels' entries: it is not a CIFAR-10 batch.")
    x = d["data"]
    labels = d.get("labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", None)
        raise DataError(f"{name}: 'data' must be a uint8 array of shape (N, 3072), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {shape}.")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: 'labels' is not a list of integers.") from None
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name} holds {len(x)} images but {y.size} labels.")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{name}: labels must lie in 0..9, found {y.min()}..{y.max()}.")
    images = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), y


def parse_meta(data: bytes, name: str) -> list[str]:
    d = _unpickle(data, name)
    names = d.get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{name} has no list of 10 'label_names'.")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _assemble_batches(read, where: str) -> tuple[Arrays, list[str]]:
    """``read(file_name) -> bytes or None`` for the files of the official layout."""
    arrays = {}
    for split in SPLITS:
        parts = []
        with tqdm(BATCH_FILES[split], desc=f"reading {split} batches", unit="file", leave=False) as bar:
            for fname in bar:
                data = read(fname)
                if data is None:
                    raise DataError(f"{where} has no {fname}: the official layout holds "
                                    f"data_batch_1..5, test_batch and batches.meta.")
                parts.append(parse_batch(data, f"{where}/{fname}"))
        arrays[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    meta = read("batches.meta")
    classes = parse_meta(meta, f"{where}/batches.meta") if meta is not None else list(CIFAR10_CLASSES)
    for split in SPLITS:
        missing = sorted(set(range(10)) - set(np.unique(arrays[split][1]).tolist()))
        if missing:
            raise DataError(f"{where}: the {split} batches hold no image of class "
                            f"{', '.join(classes[m] for m in missing)}.")
    return arrays, classes


def read_batches_dir(path: Path) -> tuple[Arrays, list[str]]:
    def read(fname):
        p = path / fname
        if not p.is_file():
            return None
        if p.stat().st_size > MAX_BATCH_BYTES:
            raise DataError(f"{p} is {p.stat().st_size} bytes, far larger than a CIFAR-10 batch.")
        return p.read_bytes()
    return _assemble_batches(read, str(path))


# ---------------------------------------------------------------------------------------------
# Archives, read member by member, never extracted
# ---------------------------------------------------------------------------------------------

def _check_member_name(name: str, archive: Path) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive} was refused: member {name!r} has an absolute path.")
    if ".." in p.parts:
        raise DataError(f"{archive} was refused: member {name!r} points outside the archive ('..').")
    return str(p)


def iter_archive(archive: Path, wanted, max_member: int) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) for the regular-file members for which ``wanted(name)`` is true.

    Every member is checked, wanted or not: absolute paths, ``..``, links and device files
    refuse the whole archive; a wanted member over ``max_member`` bytes too."""
    total = 0
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    member = _check_member_name(info.filename, archive)
                    mode = info.external_attr >> 16
                    if mode and stat.S_ISLNK(mode):
                        raise DataError(f"{archive} was refused: member {info.filename!r} is a link.")
                    if info.is_dir() or not wanted(member):
                        continue
                    if info.file_size > max_member:
                        raise DataError(f"{archive} was refused: member {info.filename!r} is "
                                        f"{info.file_size} bytes, over the {max_member}-byte limit.")
                    total += info.file_size
                    if total > MAX_ARCHIVE_BYTES:
                        raise DataError(f"{archive} was refused: it unpacks to more than {MAX_ARCHIVE_BYTES} bytes.")
                    yield member, zf.read(info)
            return
        with tarfile.open(archive, mode="r|*") as tf:
            for info in tf:
                member = _check_member_name(info.name, archive)
                if info.issym() or info.islnk():
                    raise DataError(f"{archive} was refused: member {info.name!r} is a link.")
                if info.isdir():
                    continue
                if not info.isfile():
                    raise DataError(f"{archive} was refused: member {info.name!r} is not a regular file.")
                if not wanted(member):
                    continue
                if info.size > max_member:
                    raise DataError(f"{archive} was refused: member {info.name!r} is {info.size} bytes, "
                                    f"over the {max_member}-byte limit.")
                total += info.size
                if total > MAX_ARCHIVE_BYTES:
                    raise DataError(f"{archive} was refused: it unpacks to more than {MAX_ARCHIVE_BYTES} bytes.")
                f = tf.extractfile(info)
                yield member, f.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive} is not a readable archive ({type(e).__name__}: {e}): "
                        f"the file is corrupt or truncated.") from None


def is_archive(path: Path) -> bool:
    n = path.name.lower()
    return path.is_file() and n.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def archive_kind(archive: Path) -> str:
    """'batches' if the archive holds the official python batches, else 'images'.
    This first pass also checks every member, so a bad archive is refused before any work."""
    names = []
    for _ in iter_archive(archive, lambda m: names.append(m) and False, 0):
        pass
    return "batches" if any(PurePosixPath(n).name == "data_batch_1" for n in names) else "images"


def read_batches_archive(archive: Path) -> tuple[Arrays, list[str]]:
    wanted = set(BATCH_FILES["train"] + BATCH_FILES["test"] + ["batches.meta"])
    found: dict[str, bytes] = {}
    for member, data in iter_archive(archive, lambda m: PurePosixPath(m).name in wanted, MAX_BATCH_BYTES):
        found[PurePosixPath(member).name] = data
    return _assemble_batches(found.get, str(archive))


# ---------------------------------------------------------------------------------------------
# Image folders: train/<class>/*.jpg|png, test/<class>/...
# ---------------------------------------------------------------------------------------------

_IMAGE_RE = re.compile(r"^(?:(?P<prefix>.*)/)?(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$")


def _image_member(name: str):
    m = _IMAGE_RE.match(name)
    if m and m["file"].lower().endswith(IMAGE_SUFFIXES) and not m["file"].startswith("."):
        return m
    return None


def decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (32, 32):
                raise DataError(f"{name} is {im.size[0]}x{im.size[1]}, CIFAR-10 images are 32x32.")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name} is not a readable image ({e}).") from None


def _assemble_images(files: dict[tuple[str, str, str], bytes], where: str) -> tuple[Arrays, list[str]]:
    """files: (split, class, file name) -> encoded bytes."""
    classes = list(CIFAR10_CLASSES)
    present = {split: {c for (s, c, _) in files if s == split} for split in SPLITS}
    for split in SPLITS:
        if not present[split]:
            raise DataError(f"{where} has no {split}/<class>/*.jpg|png images: an image-folder source "
                            f"needs train/ and test/, each with one folder per class.")
        unknown = sorted(present[split] - set(classes))
        if unknown:
            raise DataError(f"{where}: {split}/{unknown[0]} is not a CIFAR-10 class "
                            f"(expected {', '.join(classes)}).")
        missing = [c for c in classes if c not in present[split]]
        if missing:
            raise DataError(f"{where}: {split}/ has no images of class {missing[0]!r} "
                            f"(the 10 CIFAR-10 classes are all needed).")
    arrays = {}
    with tqdm(total=len(files), desc="decoding images", unit="img", leave=False) as bar:
        for split in SPLITS:
            keys = sorted((k for k in files if k[0] == split), key=lambda k: (classes.index(k[1]), k[2]))
            images = np.empty((len(keys), 32, 32, 3), np.uint8)
            labels = np.empty(len(keys), np.int64)
            for i, key in enumerate(keys):
                images[i] = decode_image(files[key], f"{where}:{'/'.join(key)}")
                labels[i] = classes.index(key[1])
                bar.update()
            arrays[split] = (images, labels)
    return arrays, classes


def read_image_archive(archive: Path) -> tuple[Arrays, list[str]]:
    files = {}
    prefixes = set()
    members = iter_archive(archive, lambda m: _image_member(m) is not None, MAX_IMAGE_BYTES)
    with tqdm(members, desc="reading archive", unit="file", leave=False) as bar:
        for member, data in bar:
            m = _image_member(member)
            prefixes.add(m["prefix"] or "")
            files[(m["split"], m["cls"], m["file"])] = data
    if len(prefixes) > 1:
        raise DataError(f"{archive} holds several train/test trees ({', '.join(sorted(prefixes))}): "
                        f"keep one.")
    return _assemble_images(files, str(archive))


def read_image_dir(root: Path) -> tuple[Arrays, list[str]]:
    files = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in cls_dir.iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    if f.stat().st_size > MAX_IMAGE_BYTES:
                        raise DataError(f"{f} is {f.stat().st_size} bytes, far larger than a 32x32 image.")
                    files[(split, cls_dir.name, f.name)] = f.read_bytes()
    return _assemble_images(files, str(root))


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------

def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def download_official(cache_dir: Path | None = None, url: str = OFFICIAL_URL) -> Path:
    """The official tar.gz, downloaded once into the cache (atomically) and md5-verified."""
    cache_dir = Path(cache_dir or CACHE_DIR)
    dest = cache_dir / "cifar-10-python.tar.gz"
    if dest.is_file() and md5_file(dest) == OFFICIAL_MD5:
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10") as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        if md5_file(tmp) != OFFICIAL_MD5:
            raise DataError(f"the download from {url} does not match the official md5 {OFFICIAL_MD5}: "
                            f"try again, or pass a local copy with --source.")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(f"could not download CIFAR-10 from {url} ({getattr(e, 'reason', e)}): without "
                        f"network, pass a local source, e.g. --source path/to/cifar-10-python.tar.gz, "
                        f"a cifar-10-batches-py folder or an image-folder tree.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

def describe(source: str) -> dict:
    """What the source is, and a cheap fingerprint (path, sizes, mtimes) for the idempotency check."""
    if source == "download":
        return {"kind": "download", "url": OFFICIAL_URL, "md5": OFFICIAL_MD5}
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"source {source} does not exist: pass 'download', a cifar-10-batches-py folder, "
                        f"the official tar.gz, or an image-folder tree or archive.")
    path = path.resolve()
    if path.is_dir():
        inner = path / "cifar-10-batches-py"      # where the official tar.gz unpacks (torchvision's root holds it)
        if not (path / "data_batch_1").exists() and not (path / "train").exists() and (inner / "data_batch_1").exists():
            path = inner
        kind = "batches-dir" if (path / "data_batch_1").exists() else "image-dir"
        if kind == "image-dir" and not any((path / split).is_dir() for split in SPLITS):
            # said before the fingerprint below walks the folder (which for a wrong folder can be a big tree)
            raise DataError(f"{path} is not a CIFAR-10 folder: it holds neither the official batches (data_batch_1..5 "
                            f"and test_batch, there or in cifar-10-batches-py/) nor an image-folder tree "
                            f"(train/<class>/*.jpg|png and test/<class>/...).")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if kind == "image-dir" else \
            sorted(p for p in path.iterdir() if p.is_file())
    elif is_archive(path):
        kind = "archive"
        files = [path]
    else:
        raise DataError(f"source {path} is neither a folder nor an archive (.tar, .tar.gz, .tgz, .zip).")
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return {"kind": kind, "path": str(path), "fingerprint": h.hexdigest()}


def read_source(desc: dict) -> tuple[Arrays, list[str]]:
    kind = desc["kind"]
    if kind == "download":
        return read_batches_archive(download_official())
    path = Path(desc["path"])
    if kind == "batches-dir":
        return read_batches_dir(path)
    if kind == "image-dir":
        return read_image_dir(path)
    if archive_kind(path) == "batches":
        return read_batches_archive(path)
    return read_image_archive(path)
