"""Readers for every CIFAR-10 source the converter accepts; each returns plain numpy arrays.

- the official python batches (a ``cifar-10-batches-py`` folder, or the official tar.gz), read with a
  restricted unpickler: they are pickles, and unpickling an untrusted file can run code;
- an image-folder tree ``train/<class>/*.jpg|png``, ``test/<class>/...``, as a folder or an archive
  (.tar, .tar.gz, .tgz, .zip), read in class order, then file-name order;
- ``download``: the official tar.gz, md5-checked, cached.

Archives are never extracted: members are checked (no absolute paths, no ``..``, no links or
devices, no oversized members) and read in one pass, each wanted member decoded as it is read (an
image becomes its 3 KB of pixels at once), so memory stays at what the decoded dataset needs. What
an archive may unpack to is bounded: per member, in total (``MAX_ARCHIVE_BYTES``, unwanted members
included, whose content is skipped unread), in images (``MAX_IMAGES``) and in compression ratio
(``MAX_RATIO``): a small archive that inflates to gigabytes is refused early. Image headers are
read before any pixel is decoded, so a header claiming a huge size is refused before it costs memory.
Pixels that would convert wrongly are refused with a sentence: 16-bit or float images, transparent
pixels, labels that are not whole numbers 0..9.
"""
from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickle
import re
import stat
import tarfile
import warnings
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
MAX_BATCH_BYTES = 64 << 20      # an official batch is 31 MB
MAX_IMAGE_BYTES = 64 << 10      # a 32x32 image is a few kB, even a PNG with metadata
MAX_IMAGES = 120_000            # twice CIFAR-10's 60,000
MAX_ARCHIVE_BYTES = 1 << 30     # what one archive may unpack to, every member counted (official tar: 178 MB)
MAX_RATIO = 100                 # unpacked / packed bytes, checked once past RATIO_GRACE (official tar.gz: 1.05)
RATIO_GRACE = 32 << 20
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
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):    # empty bytes, at protocol 2
            return _empty_bytes
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _empty_bytes(*args):
    if args:
        raise pickle.UnpicklingError("refused global builtins.bytes with arguments")
    return b""


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
    if len(x) == 0:
        raise DataError(f"{name} holds no images (an official CIFAR-10 batch holds 10,000): it is empty or was cut "
                        f"short; use a complete copy.")
    y = _integer_labels(labels, name)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name} holds {len(x)} images but {y.size} labels.")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{name}: labels must lie in 0..9, found {y.min()}..{y.max()}.")
    images = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), y


def _integer_labels(labels, name: str) -> np.ndarray:
    """The labels as int64, refusing what would convert silently wrong: floats (3.7 would become 3),
    booleans, strings, and whole numbers too large for int64."""
    try:
        raw = np.asarray(labels)
    except (TypeError, ValueError, OverflowError):
        raw = np.asarray([], dtype=object)
    if raw.dtype.kind not in "iu" or raw.ndim != 1:
        bad = next((v for v in (labels if isinstance(labels, (list, tuple, np.ndarray)) else [labels])
                    if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        what = f"found {bad!r}" if bad is not None else "found numbers too large to be a class"
        raise DataError(f"{name}: 'labels' must be a list of whole numbers 0..9, {what}.")
    if raw.dtype.kind == "u" and raw.dtype.itemsize == 8 and len(raw) and raw.max() > np.iinfo(np.int64).max:
        raise DataError(f"{name}: 'labels' must be whole numbers 0..9, found {raw.max()}.")
    return raw.astype(np.int64)


def parse_meta(data: bytes, name: str) -> list[str]:
    d = _unpickle(data, name)
    names = d.get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{name} has no list of 10 'label_names'.")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _assemble_batches(parsed: dict, where: str) -> tuple[Arrays, list[str]]:
    """``parsed``: file name -> (images, labels) of each batch file found (parse_batch), and
    "batches.meta" -> the class names, for the files of the official layout."""
    arrays = {}
    for split in SPLITS:
        parts = []
        for fname in BATCH_FILES[split]:
            if fname not in parsed:
                raise DataError(f"{where} has no {fname}: the official layout holds "
                                f"data_batch_1..5, test_batch and batches.meta.")
            parts.append(parsed[fname])
        arrays[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    classes = parsed.get("batches.meta", list(CIFAR10_CLASSES))
    for split in SPLITS:
        missing = sorted(set(range(10)) - set(np.unique(arrays[split][1]).tolist()))
        if missing:
            raise DataError(f"{where}: the {split} batches hold no image of class "
                            f"{', '.join(classes[m] for m in missing)}.")
    return arrays, classes


def _parse_batch_file(fname: str, data: bytes, where: str):
    return parse_meta(data, f"{where}/{fname}") if fname == "batches.meta" else parse_batch(data, f"{where}/{fname}")


def read_batches_dir(path: Path) -> tuple[Arrays, list[str]]:
    parsed = {}
    names = BATCH_FILES["train"] + BATCH_FILES["test"] + ["batches.meta"]
    for fname in tqdm(names, desc="reading batches", unit="file", leave=False):
        p = path / fname
        if not p.is_file():
            continue
        if p.stat().st_size > MAX_BATCH_BYTES:
            raise DataError(f"{p} is {p.stat().st_size} bytes, far larger than a CIFAR-10 batch.")
        parsed[fname] = _parse_batch_file(fname, p.read_bytes(), str(path))
    return _assemble_batches(parsed, str(path))


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


class _Counting(io.RawIOBase):
    """A read-only file that counts the bytes read from it: the packed bytes behind a tar stream."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def readable(self):
        return True

    def readinto(self, b):
        n = self.f.readinto(b)
        self.count += n or 0
        return n


class _Budget:
    """What one archive may unpack to: in total and relative to its packed size."""

    def __init__(self, archive: Path, packed):
        self.archive, self.packed, self.total = archive, packed, 0

    def take(self, size: int) -> None:
        self.total += size
        if self.total > MAX_ARCHIVE_BYTES:
            raise DataError(f"{self.archive} was refused: it unpacks to more than {MAX_ARCHIVE_BYTES >> 20} MB, "
                            f"more than any CIFAR-10 source.")
        packed = max(self.packed(), 1)
        if self.total > RATIO_GRACE and self.total > MAX_RATIO * packed:
            raise DataError(f"{self.archive} was refused: it unpacks to over {MAX_RATIO} times its packed size "
                            f"(a compression bomb, or not a dataset of images).")


def _unpacked(f):
    """The tar stream inside a gzip, bzip2 or xz file (or the file itself): decompressed in bounded steps, so
    that a few kB of a compression bomb never turn into megabytes at once (tarfile's own "r|gz" would)."""
    import bz2
    import gzip
    import lzma
    magic = f.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f, mode="rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, mode="rb")
    return f


def _read_limited(f, limit: int, name: str, archive: Path) -> bytes:
    data = f.read(limit + 1)            # never more than the limit, whatever the header claims
    if len(data) > limit:
        raise DataError(f"{archive} was refused: member {name!r} unpacks to more than its {limit}-byte limit.")
    return data


def iter_archive(archive: Path, limit_of) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) for the regular-file members for which ``limit_of(name)`` gives a byte limit (None:
    not wanted; its content is skipped, never read into memory).

    Every member is checked, wanted or not: absolute paths, ``..``, links and device files refuse the whole
    archive, and so does a wanted member over its limit, or the whole unpacking more than MAX_ARCHIVE_BYTES
    or MAX_RATIO times the archive's size."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            yield from _iter_zip(archive, limit_of)
            return
        with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                                 desc=f"reading {archive.name}", leave=False) as bar:
            counted = _Counting(raw)
            budget = _Budget(archive, lambda: counted.count)
            stream = _unpacked(io.BufferedReader(counted, 1 << 16))
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for info in tf:
                    bar.update(counted.count - bar.n)
                    member = _check_member_name(info.name, archive)
                    if info.issym() or info.islnk():
                        raise DataError(f"{archive} was refused: member {info.name!r} is a link.")
                    if info.isdir():
                        continue
                    if not info.isfile():
                        raise DataError(f"{archive} was refused: member {info.name!r} is not a regular file.")
                    budget.take(info.size)
                    limit = limit_of(member)
                    if limit is None:
                        continue                        # skipped by the stream, never held
                    if info.size > limit:
                        raise DataError(f"{archive} was refused: member {info.name!r} is {info.size} bytes, "
                                        f"over the {limit}-byte limit.")
                    yield member, _read_limited(tf.extractfile(info), limit, info.name, archive)
            # read on past the tar's end marker to the end of the stream: gzip and xz check their payload's
            # checksum only there, so a flipped byte in a member would otherwise convert into wrong pixels
            while block := stream.read(1 << 16):
                budget.take(len(block))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{archive} is not a readable archive ({type(e).__name__}: {e}): "
                        f"the file is corrupt or truncated.") from None
    except OSError as e:
        if e.filename is not None:
            raise                               # the archive itself cannot be opened: said at the CLI boundary
        raise DataError(f"{archive} is not a readable archive ({type(e).__name__}: {e}): "
                        f"the file is corrupt or truncated.") from None


def _iter_zip(archive: Path, limit_of) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        budget = _Budget(archive, lambda: archive.stat().st_size)
        for info in zf.infolist():
            member = _check_member_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise DataError(f"{archive} was refused: member {info.filename!r} is a link.")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise DataError(f"{archive} is encrypted (member {info.filename!r} needs a password): "
                                f"unpack it with its password and pass the folder instead.")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                          zipfile.ZIP_LZMA):
                raise DataError(f"{archive} uses a compression this tool cannot read (method "
                                f"{info.compress_type} for {info.filename!r}): re-pack it as a plain .zip "
                                f"(deflate) or .tar.gz.")
            budget.take(info.file_size)
            limit = limit_of(member)
            if limit is None:
                continue
            if info.file_size > limit:
                raise DataError(f"{archive} was refused: member {info.filename!r} is {info.file_size} bytes, "
                                f"over the {limit}-byte limit.")
            try:
                with zf.open(info) as f:
                    yield member, _read_limited(f, limit, info.filename, archive)
            except NotImplementedError as e:
                raise DataError(f"{archive}: member {info.filename!r} cannot be read ({e}): re-pack it as a "
                                f"plain .zip (deflate) or .tar.gz.") from None


def is_archive(path: Path) -> bool:
    n = path.name.lower()
    return path.is_file() and n.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def read_archive(archive: Path) -> tuple[Arrays, list[str]]:
    """The official batches or an image-folder tree from one archive, in one pass: each wanted member is
    parsed or decoded as it is read, and the first bad one refuses the archive."""
    batch_names = set(BATCH_FILES["train"] + BATCH_FILES["test"] + ["batches.meta"])

    def limit_of(member):
        if PurePosixPath(member).name in batch_names:
            return MAX_BATCH_BYTES
        return MAX_IMAGE_BYTES if _image_member(member) is not None else None

    parsed: dict = {}
    images = _ImageSet(str(archive))
    for member, data in iter_archive(archive, limit_of):
        fname = PurePosixPath(member).name
        if fname in batch_names:
            parsed[fname] = _parse_batch_file(fname, data, str(archive))
        else:
            images.add(_image_member(member), data, f"{archive}:{member}")
    if "data_batch_1" in parsed:
        return _assemble_batches(parsed, str(archive))
    return images.assemble()


# ---------------------------------------------------------------------------------------------
# Image folders: train/<class>/*.jpg|png, test/<class>/...
# ---------------------------------------------------------------------------------------------

_IMAGE_RE = re.compile(r"^(?:(?P<prefix>.*)/)?(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$")
_DEEP_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "RGB;16", "RGBA;16"}


def _image_member(name: str):
    m = _IMAGE_RE.match(name)
    if m and m["file"].lower().endswith(IMAGE_SUFFIXES) and not m["file"].startswith("."):
        return m
    return None


def decode_image(data: bytes, name: str) -> np.ndarray:
    """One encoded 32x32 image -> (32, 32, 3) uint8 RGB. Its header is checked before any pixel is decoded
    (size, a decompression bomb); 16-bit and float images and transparent pixels are refused, since
    converting them to 8-bit RGB would silently change them."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:            # reads the header only
                if im.size != (32, 32):
                    raise DataError(f"{name} is {im.size[0]}x{im.size[1]}, CIFAR-10 images are 32x32.")
                rawmode = im.tile[0][3] if im.tile and isinstance(im.tile[0][3], str) else ""
                if im.mode in _DEEP_MODES or "16" in rawmode:
                    raise DataError(f"{name} is a 16-bit or floating-point image ({im.mode}), which 8-bit "
                                    f"CIFAR-10 pixels cannot hold without changing it: save it as 8-bit first.")
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
                    if (rgba[..., 3] != 255).any():
                        raise DataError(f"{name} has transparent pixels (an alpha channel), which CIFAR-10 "
                                        f"images do not have: flatten it onto a background first.")
                    return np.ascontiguousarray(rgba[..., :3])
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name} was refused: its header claims a huge image ({e}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{name} is not a readable image ({e}).") from None


class _ImageSet:
    """Decoded images of an image-folder tree, collected as they are read: (split, class, file) -> pixels."""

    def __init__(self, where: str):
        self.where, self.images, self.prefixes = where, {}, set()

    def add(self, m, data: bytes, name: str) -> None:
        if len(self.images) >= MAX_IMAGES:
            raise DataError(f"{self.where} holds more than {MAX_IMAGES:,} images, far more than CIFAR-10's "
                            f"60,000: it is not a CIFAR-10 source.")
        self.prefixes.add(m["prefix"] or "")
        if len(self.prefixes) > 1:
            trees = ", ".join(f"{prefix}/train and {prefix}/test" if prefix else "train and test at its top level"
                              for prefix in sorted(self.prefixes))
            raise DataError(f"{self.where} holds several train/test trees ({trees}): keep one.")
        self.images[(m["split"], m["cls"], m["file"])] = decode_image(data, name)

    def assemble(self) -> tuple[Arrays, list[str]]:
        return _assemble_images(self.images, self.where)


def _assemble_images(files: dict[tuple[str, str, str], np.ndarray], where: str) -> tuple[Arrays, list[str]]:
    """files: (split, class, file name) -> decoded (32, 32, 3) pixels."""
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
    for split in SPLITS:
        keys = sorted((k for k in files if k[0] == split), key=lambda k: (classes.index(k[1]), k[2]))
        images = np.empty((len(keys), 32, 32, 3), np.uint8)
        labels = np.empty(len(keys), np.int64)
        for i, key in enumerate(keys):
            images[i] = files[key]
            labels[i] = classes.index(key[1])
        arrays[split] = (images, labels)
    return arrays, classes


def read_image_dir(root: Path) -> tuple[Arrays, list[str]]:
    images = _ImageSet(str(root))
    paths = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in cls_dir.iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    paths.append((split, cls_dir, f))
    for split, cls_dir, f in tqdm(paths, desc="decoding images", unit="img", leave=False):
        if f.stat().st_size > MAX_IMAGE_BYTES:
            raise DataError(f"{f} is {f.stat().st_size} bytes, far larger than a 32x32 image.")
        m = _IMAGE_RE.match(f"{split}/{cls_dir.name}/{f.name}")
        images.add(m, f.read_bytes(), str(f))
    return images.assemble()


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
        return read_archive(download_official())
    path = Path(desc["path"])
    if kind == "batches-dir":
        return read_batches_dir(path)
    if kind == "image-dir":
        return read_image_dir(path)
    return read_archive(path)
