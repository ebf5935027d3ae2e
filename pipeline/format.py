"""The on-disk format of a converted CIFAR-10: four .npy arrays and meta.json.

    DIR/train_images.npy  (N, 32, 32, 3) uint8, HWC, RGB
    DIR/train_labels.npy  (N,) int64, 0..9
    DIR/test_images.npy   (M, 32, 32, 3) uint8
    DIR/test_labels.npy   (M,) int64
    DIR/meta.json         format version, class names, counts, per-channel train mean/std
                          (pixel units, 0..255), the source, the sha256 of each .npy file, and
                          ``meta_sha256``: the sha256 of meta.json's own other fields, so that an
                          edited mean or std is caught like a modified array
    DIR/ffcv/             (optional) the FFCV .beton files written from the arrays, each beside its record
                          ``NAME.beton.json`` (the arrays' sha256 it was written from, its sample count,
                          size and sha256): a .beton is used, and replaced by ``--force``, only when its
                          record is there and matches (``beton_record``, ``owned_beton``)

Arrays load with ``np.load(path, mmap_mode="r")``. Writing goes into a temporary folder beside
DIR that is renamed into place at the end (see ``atomic_dir``), so a reader never sees half a dataset.
A folder is replaced only when it is provably one of ours (``owned_dataset``): its meta.json says so
and it holds nothing but what a conversion writes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "cifarflow"
FORMAT_VERSION = 2          # 2: meta.json carries meta_sha256, a checksum of its own fields
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
ARRAY_FILES = tuple(f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels"))
OWN_FILES = frozenset(ARRAY_FILES + ("meta.json",))
BETON_DIR = "ffcv"                  # the one sub-folder a converted folder may hold: .beton files and their records
BETON_RECORD = "cifarflow-beton"    # the "format" of a .beton's record


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
    if labels.dtype.kind not in "iu":
        raise DataError(f"{split} labels must be whole numbers, got {labels.dtype}.")
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
        _save(out / f"{split}_images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        _save(out / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
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
    meta["meta_sha256"] = meta_digest(meta)
    _write_json(out / "meta.json", meta)
    for name in ARRAY_FILES + ("meta.json",):
        _fsync(out / name)
    return meta


def _save(path: Path, array: np.ndarray) -> None:
    """np.save; a short write (numpy's "N requested and M written", with no errno) is the full disk it is."""
    try:
        np.save(path, array)
    except OSError as e:
        if e.errno is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def meta_digest(meta: dict) -> str:
    """sha256 of meta.json's fields other than ``meta_sha256`` itself, in a canonical form."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MAX_META_BYTES = 1 << 20      # a meta.json is about 2 kB
MAX_META_DEPTH = 8            # its deepest nesting is 3 (source, sha256)
MAX_CLASSES = 1000


def _load_meta_json(path: Path):
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise DataError(f"{path} is {path.stat().st_size:,} bytes, far more than a meta.json of ours holds: "
                            f"convert again with --force.")
        text = path.read_text(encoding="utf-8")
        if _depth(text) > MAX_META_DEPTH:
            raise DataError(f"{path} nests deeper than a meta.json of ours ever does: convert again with --force.")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}): convert again with --force.") from None


def _depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (outside strings), measured before parsing: a deeply nested file
    would otherwise end the parser in a RecursionError."""
    depth = most = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            most = max(most, depth)
        elif ch in "]}":
            depth -= 1
    return most


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _check_meta_fields(meta: dict, path: Path) -> None:
    """Every field a reader relies on, present and of its type: a hand-edited or foreign meta.json is refused
    here with a sentence rather than failing later with a KeyError."""
    def need(cond, what):
        if not cond:
            raise DataError(f"{path} {what}: convert again with --force.")
    for key in ("classes", "counts", "mean", "std", "sha256", "source", "meta_sha256"):
        need(key in meta, f"lacks the field {key!r}")
    classes = meta["classes"]
    need(isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes),
         "has no list of class names in 'classes'")
    need(2 <= len(classes) <= MAX_CLASSES, f"names {len(classes)} classes (2 to {MAX_CLASSES} are possible)")
    need(all(c and c.isprintable() and c == c.strip() and len(c) <= 100 for c in classes),
         "holds a class name that is empty, not printable, padded with spaces or over 100 characters")
    need(len(set(classes)) == len(classes), "names a class twice in 'classes'")
    counts = meta["counts"]
    need(isinstance(counts, dict) and all(isinstance(counts.get(s), int) and not isinstance(counts.get(s), bool)
                                          and counts[s] > 0 for s in SPLITS),
         "has no positive train and test image counts in 'counts'")
    for key in ("mean", "std"):
        v = meta[key]
        need(isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v),
             f"has no three numbers in {key!r}")
    need(all(0 <= m <= 255 for m in meta["mean"]) and all(s > 0 for s in meta["std"]),
         "holds a mean outside 0..255 or a std that is not positive")
    sums = meta["sha256"]
    need(isinstance(sums, dict) and all(isinstance(sums.get(n), str) for n in ARRAY_FILES),
         "lacks the sha256 of an array file")
    need(isinstance(meta["meta_sha256"], str) and meta["meta_sha256"] == meta_digest(meta),
         "does not match its own checksum (meta_sha256): it was edited after the conversion "
         "(its mean, std, counts or class names can no longer be trusted)")


def read_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a converted folder, after checking that it is one, of this format version, with every
    field present and its own checksum intact."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is a file, not a folder of converted data: pass the folder that "
                        f"`python -m pipeline.convert --out` wrote.")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} does not exist: convert CIFAR-10 first with "
                        f"`python -m pipeline.convert --source SRC --out {data_dir}`.")
    if not path.is_file():
        raise DataError(f"{data_dir} holds no meta.json, so it is not a converted dataset: "
                        f"run `python -m pipeline.convert --source SRC --out {data_dir}`.")
    meta = _load_meta_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a {FORMAT_NAME} meta file: convert again with --force.")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:     # type: True == 1 and 1.0 == 1 in Python
        raise DataError(f"{data_dir} is in format version {version!r}, this version of the tool reads "
                        f"version {FORMAT_VERSION}: convert again with --force.")
    _check_meta_fields(meta, path)
    return meta


def owned_dataset(folder: Path) -> tuple[bool, list[str]]:
    """(is ``folder`` a converted dataset of ours, of any format version?, the names in it that a conversion
    never writes). Only an owned folder may ever be replaced or deleted: a meta.json that names this format,
    beside nothing but the arrays, meta.json and the .beton folder, which itself holds nothing but .beton files
    with their records (``owned_beton``), and the temporary files of a .beton being written."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        meta = None
    ours = isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
    foreign = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return False, []
    for p in entries:
        if p.name in OWN_FILES and p.is_file() and not p.is_symlink():
            continue
        if p.name == BETON_DIR and p.is_dir() and not p.is_symlink():
            foreign += [f"{BETON_DIR}/{name}" for name in _foreign_in_beton_dir(p)]
            continue
        foreign.append(p.name)
    return ours and not foreign, foreign


def _foreign_in_beton_dir(folder: Path) -> list[str]:
    """The names in DIR/ffcv/ that no conversion wrote: anything but a recorded .beton, its record, and the
    temporary file of a .beton or record being written (``.NAME.tmp-PID``)."""
    names = sorted(p.name for p in folder.iterdir())
    foreign = []
    for name in names:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            foreign.append(name)
        elif name.endswith(".beton"):
            if not owned_beton(path):
                foreign.append(name)
        elif name.endswith(".beton.json"):
            if beton_record(path.with_name(name[:-len(".json")])) is None:
                foreign.append(name)
        elif not BETON_TEMPORARY.match(name):
            foreign.append(name)
    return foreign


# what a .beton being written leaves in DIR/ffcv/ while it runs (or after a kill): its temporary file, its record's,
# and the lock that keeps two processes from writing the same split at once
BETON_TEMPORARY = re.compile(r"^\.(train|test)(-[0-9a-f]+\.beton(\.json)?\.tmp-\d+|\.lock)$")


def beton_path(data_dir, meta: dict, split: str) -> Path:
    """Where the .beton of ``split`` lives: named after the arrays it is written from, so that re-converted arrays
    get a new one."""
    digest = meta["sha256"][f"{split}_images.npy"][:12] + meta["sha256"][f"{split}_labels.npy"][:4]
    return Path(data_dir) / BETON_DIR / f"{split}-{digest}.beton"


def _record_path(beton: Path) -> Path:
    return beton.with_name(beton.name + ".json")


def beton_record(beton: Path) -> dict | None:
    """The record a conversion wrote beside ``beton`` (a dict of its fields), or None where there is none or it is
    not one of ours."""
    try:
        record = json.loads(_record_path(beton).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    fields = {"split": str, "images_sha256": str, "labels_sha256": str, "count": int, "size": int, "sha256": str}
    if not (isinstance(record, dict) and record.get("format") == BETON_RECORD and all(
            type(record.get(k)) is kind for k, kind in fields.items())):
        return None
    return record


def owned_beton(beton: Path) -> bool:
    """Whether ``beton`` is one a conversion wrote, by name and record: its record is beside it and gives its size
    (its sha256 is checked where it is read: ``pipeline.engines.ffcv``)."""
    record = beton_record(beton)
    try:
        return record is not None and beton.stat().st_size == record["size"]
    except OSError:
        return False


def record_beton(beton: Path, written: Path, meta: dict, split: str, count: int) -> dict:
    """Write the record of the .beton ``written`` (its temporary file) from ``split``'s arrays, atomically, before
    it is renamed to ``beton``: a kill between the two leaves a record without its .beton, never a .beton
    without its record."""
    record = {"format": BETON_RECORD, "split": split, "images_sha256": meta["sha256"][f"{split}_images.npy"],
              "labels_sha256": meta["sha256"][f"{split}_labels.npy"], "count": int(count),
              "size": written.stat().st_size, "sha256": sha256_file(written)}
    path = _record_path(beton)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_json(tmp, record)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return record


def remove_beton(beton: Path) -> None:
    """Delete a .beton of ours and its record (never a file without its record, or of another size than it
    records)."""
    if owned_beton(beton):
        beton.unlink(missing_ok=True)
        _record_path(beton).unlink(missing_ok=True)


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
    if split == "train" and int(labels.max()) + 1 != len(meta["classes"]):
        raise DataError(f"{data_dir}: meta.json names {len(meta['classes'])} classes, but the train labels run "
                        f"0..{int(labels.max())}: a model would learn outputs no image has; convert again with "
                        f"--force.")
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
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive(final: Path):
    """Hold the lock of ``final`` (a file ``.NAME.lock`` beside it) for the block: a second conversion into the
    same folder at the same time is refused with a sentence instead of racing the first one's rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataError(f"another conversion into {final} is running right now: wait for it to finish "
                                f"(or pick another --out).") from None
            raise
        try:        # the lock file may have been removed by its last holder after we opened it: take the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def replaceable(final: Path) -> Path:
    """The folder that replacing ``final`` replaces: where it points if it is a link (so the link keeps its place);
    DataError with a sentence for a mount point, which no rename can replace."""
    final = Path(final)
    if final.is_symlink():
        final = final.resolve()
    if os.path.ismount(final):
        raise DataError(f"{final} is a mount point, which cannot be replaced as a whole: pass a folder inside it "
                        f"(e.g. --out {final / 'cifar10'}).")
    return final


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a fresh temporary folder beside ``final``; on success, swap it into place.

    On any exception, KeyboardInterrupt included, the temporary folder is removed and ``final``
    is left exactly as it was (absent, or the old one). A ``final`` that is a link to a folder is replaced where it
    points, so the link keeps its place; a mount point cannot be replaced, and is refused with a sentence."""
    final = replaceable(final)
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
