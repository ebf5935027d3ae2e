"""pipeline.convert: sources, safety, atomicity, idempotency, bad input."""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import MINI_BATCHES, ROOT, needs_jpeg, needs_mini, run_in_process, write_batches
from pipeline.convert import convert, main
from pipeline.format import CIFAR10_CLASSES, FORMAT_VERSION, DataError, load_split, read_meta

QUIET = dict(log=lambda *a: None)


def run_cli(*args):
    """python -m pipeline.convert ARGS, in this process (the exit code and output a subprocess would give)."""
    return run_in_process(main, *args)


def assert_one_sentence_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for f in fragments:
        assert f in err, err


def read_pickles_independently(folder: Path):
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = [], []
        for n in names:
            with open(folder / n, "rb") as f:
                d = pickle.load(f, encoding="bytes")   # trusted test data, read the plain way
            xs.append(d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.array(d[b"labels"]))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

@needs_mini
def test_mini_conversion_equals_the_pickles(mini_dir):
    expected = read_pickles_independently(MINI_BATCHES)
    meta = read_meta(mini_dir)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["classes"] == list(CIFAR10_CLASSES)
    assert meta["counts"] == {"train": 5085, "test": 1017}
    for split in ("train", "test"):
        data, _ = load_split(mini_dir, split)
        np.testing.assert_array_equal(data.images, expected[split][0])
        np.testing.assert_array_equal(data.labels, expected[split][1])
    x = expected["train"][0].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(meta["mean"], x.mean(0), atol=1e-5)
    np.testing.assert_allclose(meta["std"], x.std(0), atol=1e-5)
    arr = np.load(mini_dir / "train_images.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.shape == (5085, 32, 32, 3) and arr.dtype == np.uint8


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


@needs_jpeg
@needs_mini
@pytest.mark.slow
def test_jpeg_archive_gives_the_full_set_in_official_order(jpeg_dir):
    meta = read_meta(jpeg_dir)
    assert meta["counts"] == {"train": 50000, "test": 10000}
    official = read_pickles_independently(MINI_BATCHES)
    for split, per_class, first_rows in (("train", 5000, 1017), ("test", 1000, 1017)):
        data, _ = load_split(jpeg_dir, split)
        assert np.array_equal(np.bincount(data.labels), [per_class] * 10)
        assert np.all(np.diff(data.labels) >= 0), "image folders are read in class order"
        # The first rows of data_batch_1 (or test_batch) are each class's first files, in order.
        x, y = official[split][0][:first_rows], official[split][1][:first_rows]
        for c in range(10):
            ours = data.images[c * per_class: c * per_class + 30]
            theirs = x[y == c][:30]
            same = [psnr(a, b) for a, b in zip(ours, theirs)]
            shifted = [psnr(a, b) for a, b in zip(ours[1:], theirs[:-1])]
            assert min(same) > 20, (split, c, min(same))      # the JPEG is the same picture...
            assert max(shifted) < min(same), (split, c)       # ...and no neighbour matches as well


def make_image_tree(root: Path, train=2, test=1, size=(32, 32), skip=None) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", train), ("test", test)):
        for c in CIFAR10_CLASSES:
            if skip == (split, c):
                continue
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def test_image_folder_is_read_in_class_then_file_order(tmp_path):
    tree = make_image_tree(tmp_path / "tree", train=3, test=2)
    # files written out of order on purpose
    (tree / "train" / "cat" / "0002.png").rename(tree / "train" / "cat" / "tmp.png")
    (tree / "train" / "cat" / "tmp.png").rename(tree / "train" / "cat" / "0002.png")
    meta = convert(str(tree), tmp_path / "out", **QUIET)
    assert meta["counts"] == {"train": 30, "test": 20}
    data, _ = load_split(tmp_path / "out", "train")
    for k, c in enumerate(CIFAR10_CLASSES):
        for i in range(3):
            np.testing.assert_array_equal(data.images[3 * k + i], np.asarray(Image.open(tree / "train" / c / f"{i:04d}.png")))
    assert data.labels.tolist() == [k for k in range(10) for _ in range(3)]


def test_official_tar_gz_and_zip_archives(tmp_path, small_batches):
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(small_batches, arcname="cifar-10-batches-py")
    a = convert(str(tgz), tmp_path / "from-tgz", **QUIET)
    b = convert(str(small_batches), tmp_path / "from-dir", **QUIET)
    assert a["sha256"] == b["sha256"]
    tree = make_image_tree(tmp_path / "tree")
    zpath = tmp_path / "tree.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(tree.rglob("*.png")):
            zf.write(p, p.relative_to(tree.parent))      # a top folder 'tree/' above train/ and test/
    c = convert(str(zpath), tmp_path / "from-zip", **QUIET)
    d = convert(str(tree), tmp_path / "from-tree", **QUIET)
    assert c["sha256"] == d["sha256"]


def test_the_folder_above_cifar_10_batches_py_is_read_as_the_batches(tmp_path, small_batches):
    """Where the official tar.gz was unpacked (torchvision's root) holds cifar-10-batches-py/: passing that
    folder reads the batches, rather than failing as an image-folder tree without train/."""
    a = convert(str(small_batches), tmp_path / "from-batches", **QUIET)
    b = convert(str(small_batches.parent), tmp_path / "from-parent", **QUIET)
    assert a["sha256"] == b["sha256"] and a["counts"] == b["counts"]
    assert read_meta(tmp_path / "from-parent")["source"]["path"] == str(small_batches.resolve())


def test_download_without_network_says_to_pass_a_local_source(tmp_path, monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr("pipeline.sources.CACHE_DIR", tmp_path / "cache")
    assert main(["--source", "download", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "pass a local source" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# safety
# --------------------------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_code_running_payload_is_refused_and_never_runs(tmp_path, small_batches):
    marker = tmp_path / "PWNED"
    with open(small_batches / "data_batch_3", "wb") as f:
        pickle.dump({"labels": _Payload(marker), "data": np.zeros((1, 3072), np.uint8)}, f, protocol=2)
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "data_batch_3", "refused", "system")
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out").exists()


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _png_bytes(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _file(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("bad", ["dotdot", "absolute", "symlink", "hardlink", "oversized"])
def test_dangerous_archive_members_are_refused(tmp_path, bad):
    png = _png_bytes()
    members = [_file(f"train/{c}/0000.png", png) for c in CIFAR10_CLASSES]
    if bad == "dotdot":
        members.insert(3, _file("train/../../evil.png", png))
    elif bad == "absolute":
        members.insert(3, _file("/tmp/evil.png", png))
    elif bad in ("symlink", "hardlink"):
        info = tarfile.TarInfo("train/cat/0001.png")
        info.type = tarfile.SYMTYPE if bad == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        members.insert(3, (info, None))
    else:
        members.insert(3, _file("train/cat/0001.png", b"\0" * (1 << 20 | 1)))
    archive = _tar_with(tmp_path / "bad.tar.gz", members)
    proc = run_cli("--source", archive, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, str(archive), "refused")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


# --------------------------------------------------------------------------------------------
# bad input: one sentence naming the file, exit 2, nothing written
# --------------------------------------------------------------------------------------------

def test_truncated_pickle(tmp_path, small_batches):
    p = small_batches / "data_batch_2"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "data_batch_2", "corrupt or truncated")
    assert not (tmp_path / "out").exists()


def test_truncated_archive(tmp_path):
    tree = make_image_tree(tmp_path / "tree", train=20, test=5)
    tgz = tmp_path / "tree.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size * 2 // 3])
    proc = run_cli("--source", tgz, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "tree.tar.gz", "truncated")
    assert not (tmp_path / "out").exists()


def _rewrite(batch: Path, **changes):
    with open(batch, "rb") as f:
        d = pickle.load(f)
    d.update(changes)
    with open(batch, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize("case,fragment", [
    ("shape", "shape (N, 3072)"),
    ("labels", "40 images but 39 labels"),
    ("label-range", "0..9"),
    ("missing-file", "has no data_batch_4"),
    ("missing-class", "no image of class"),
    ("not-a-dict", "not the dict"),
])
def test_bad_batches(tmp_path, small_batches, case, fragment):
    b = small_batches / "data_batch_4"
    if case == "shape":
        _rewrite(b, data=np.zeros((40, 1000), np.uint8))
    elif case == "labels":
        _rewrite(b, labels=[0] * 39)
    elif case == "label-range":
        _rewrite(b, labels=[11] * 40)
    elif case == "missing-file":
        b.unlink()
    elif case == "missing-class":
        _rewrite(small_batches / "test_batch", labels=[0] * 40)
    else:
        b.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case,fragment", [
    ("missing-class", "no images of class 'dog'"),
    ("size", "is 33x32"),
    ("unreadable", "not a readable image"),
    ("no-test", "has no test/"),
    ("not-a-dataset", "is not a CIFAR-10 folder: it holds neither the official batches"),
])
def test_bad_image_folders(tmp_path, case, fragment):
    tree = make_image_tree(tmp_path / "tree", skip=("test", "dog") if case == "missing-class" else None)
    if case == "size":
        Image.fromarray(np.zeros((32, 33, 3), np.uint8)).save(tree / "train" / "cat" / "0005.png")
    elif case == "unreadable":
        (tree / "train" / "cat" / "0005.jpg").write_bytes(b"not a jpeg at all")
    elif case == "no-test":
        import shutil
        shutil.rmtree(tree / "test")
    elif case == "not-a-dataset":       # some other folder: its pictures are not under train/ or test/
        tree = tree / "train"
    proc = run_cli("--source", tree, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, fragment)
    if case in ("size", "unreadable"):
        assert "cat/0005" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_source_and_non_dataset_out(tmp_path, small_batches):
    assert_one_sentence_error(run_cli("--source", tmp_path / "nope", "--out", tmp_path / "out"), "does not exist")
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("do not delete")
    assert_one_sentence_error(run_cli("--source", small_batches, "--out", other, "--force"), "not a converted dataset")
    assert (other / "thesis.txt").read_text() == "do not delete"


# --------------------------------------------------------------------------------------------
# atomicity and idempotency
# --------------------------------------------------------------------------------------------

def _leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_crash_mid_write_leaves_no_dir(tmp_path, small_batches, monkeypatch, exc):
    calls = []
    real_save = np.save

    def crashing_save(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise exc("crash while writing")
        return real_save(*a, **k)
    monkeypatch.setattr("pipeline.format.np.save", crashing_save)
    with pytest.raises(exc):
        convert(str(small_batches), tmp_path / "out", **QUIET)
    assert len(calls) == 2
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path, "out") == []


def test_a_crash_during_force_keeps_the_old_dir(tmp_path, small_batches, monkeypatch):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr("pipeline.format.np.save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        convert(str(small_batches), out, force=True, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "out") == []


def test_a_killed_conversion_leaves_no_dir_and_the_next_run_cleans_up(tmp_path, small_batches):
    out = tmp_path / "out"
    code = ("import os, signal, numpy as np, pipeline.format as F\n"
            "real = np.save\n"
            "def save(*a, **k):\n"
            "    real(*a, **k); os.kill(os.getpid(), signal.SIGKILL)\n"
            "F.np.save = save\n"
            f"from pipeline.convert import main; main(['--source', {str(small_batches)!r}, '--out', {str(out)!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert len(_leftovers(tmp_path, "out")) == 1          # the dead process's temporary folder
    assert run_cli("--source", small_batches, "--out", out).returncode == 0
    assert _leftovers(tmp_path, "out") == []
    assert read_meta(out)["counts"]["train"] == 200


def test_second_run_does_nothing_and_force_redoes(tmp_path, small_batches):
    out = tmp_path / "out"
    assert run_cli("--source", small_batches, "--out", out).returncode == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli("--source", small_batches, "--out", out)
    assert again.returncode == 0 and "already" in again.stdout and "nothing to do" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    forced = run_cli("--source", small_batches, "--out", out, "--force")
    assert forced.returncode == 0 and "converted" in forced.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} != stamp
    # another source into the same folder: refused without --force
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30, seed=5)
    assert_one_sentence_error(run_cli("--source", other, "--out", out), "another source", "--force")
    assert run_cli("--source", other, "--out", out, "--force").returncode == 0
    assert read_meta(out)["counts"]["train"] == 150


# --------------------------------------------------------------------------------------------
# the format's own checks
# --------------------------------------------------------------------------------------------

def test_readers_refuse_another_format_version_and_corrupt_arrays(tmp_path, small_batches):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format version .* convert again with --force"):
        load_split(out, "train")
    convert(str(small_batches), out, force=True, **QUIET)
    raw = bytearray((out / "test_images.npy").read_bytes())
    raw[-1] ^= 0xFF
    (out / "test_images.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        load_split(out, "test")
    with pytest.raises(DataError, match="pipeline.convert"):
        load_split(tmp_path / "missing", "train")


def _edited_meta(out, edit):
    """meta.json edited and its own checksum made again: well-formed, self-consistent, wrong."""
    from pipeline.format import meta_digest
    meta = json.loads((out / "meta.json").read_text())
    edit(meta)
    meta["meta_sha256"] = meta_digest(meta)
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: m.update(classes=m["classes"] + [f"extra{i}" for i in range(990)]), "train labels run 0..9"),
    (lambda m: m.update(classes=m["classes"][:9] + ["airplane"]), "names a class twice"),
    (lambda m: m.update(classes=m["classes"][:9] + ["bad\x1b[2Jname"]), "not printable"),
    (lambda m: m.update(classes=m["classes"][:9] + [""]), "empty"),
    (lambda m: m.update(classes=["only"]), "names 1 classes"),
    (lambda m: m.update(source={"kind": "x", "deep": json.loads("[" * 50 + "]" * 50)}), "nests deeper"),
])
def test_a_self_consistent_but_wrong_meta_json_is_a_sentence(tmp_path, small_batches, edit, fragment):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    _edited_meta(out, edit)
    with pytest.raises(DataError, match=fragment):
        load_split(out, "train")


def test_a_meta_json_nested_past_the_parser_is_a_sentence(tmp_path, small_batches):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    (out / "meta.json").write_text("[" * 100_000 + "]" * 100_000)        # json.loads: RecursionError
    with pytest.raises(DataError, match="nests deeper"):
        read_meta(out)


def test_converted_labels_that_are_not_whole_numbers_are_refused_on_reading(tmp_path, small_batches):
    from pipeline.format import sha256_file
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    labels = np.load(out / "train_labels.npy").astype(np.float64) + 0.25
    np.save(out / "train_labels.npy", labels)
    _edited_meta(out, lambda m: m["sha256"].update({"train_labels.npy": sha256_file(out / "train_labels.npy")}))
    with pytest.raises(DataError, match="train labels must be whole numbers, got float64"):
        load_split(out, "train")


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder of converted data"):
        read_meta(tmp_path / "afile")


# --------------------------------------------------------------------------------------------
# nothing of the user's is ever deleted
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("meta", ['{"name": "my project"}', "not json at all", None])
def test_force_never_replaces_a_folder_that_is_not_provably_ours(tmp_path, small_batches, meta):
    """A folder with a meta.json of its own (or of ours, beside the user's files) is the user's: refused with a
    sentence, --force or not, and every file stays."""
    folder = tmp_path / "project"
    if meta is None:        # a real conversion of ours, into which the user put a file of their own
        convert(str(small_batches), folder, **QUIET)
    else:
        folder.mkdir()
        (folder / "meta.json").write_text(meta)
    (folder / "thesis.txt").write_text("do not delete")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30, seed=5)
    for extra in ((), ("--force",)):
        proc = run_cli("--source", other, "--out", folder, *extra)
        assert_one_sentence_error(proc, "not a converted dataset", "never replaced")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert "thesis.txt" in proc.stderr


def _recorded_beton(out, split="train"):
    """A .beton as the ffcv engine leaves it (stand-in bytes; its record and lock beside it)."""
    from pipeline.format import beton_path, record_beton
    meta = read_meta(out)
    path = beton_path(out, meta, split)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"beton")
    record_beton(path, path, meta, split, meta["counts"][split])
    (path.parent / f".{split}.lock").write_bytes(b"")
    return path


def test_force_replaces_a_conversion_of_ours_with_its_beton_folder(tmp_path, small_batches):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    _recorded_beton(out)
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30, seed=5)
    assert run_cli("--source", other, "--out", out, "--force").returncode == 0
    assert read_meta(out)["counts"]["train"] == 150 and not (out / "ffcv").exists()


@pytest.mark.parametrize("mine", [".notes", "train-0123.beton", "mine.beton", "train-0123.beton.json", "sub/x"])
def test_force_never_deletes_a_file_of_the_users_inside_the_beton_folder(tmp_path, small_batches, mine):
    """Only what the conversion wrote, by name and record: a dotfile, a .beton of the user's own (no record),
    a record of no .beton, a folder: refused with the name, --force or not, and nothing is deleted."""
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    ours = _recorded_beton(out)
    path = out / "ffcv" / mine
    path.parent.mkdir(exist_ok=True)
    path.write_text("{}" if mine.endswith(".json") else "mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30, seed=5)
    proc = run_cli("--source", other, "--out", out, "--force")
    assert_one_sentence_error(proc, "not a converted dataset", "never replaced")
    assert f"ffcv/{mine.split('/')[0]}" in proc.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and ours.exists()


def test_two_conversions_into_one_folder_at_once_are_refused(tmp_path, small_batches):
    from pipeline.format import exclusive
    out = tmp_path / "out"
    with exclusive(out):            # another conversion holds the folder
        proc = run_cli("--source", small_batches, "--out", out)
    assert_one_sentence_error(proc, "another conversion into", "running")
    assert not out.exists()
    assert run_cli("--source", small_batches, "--out", out).returncode == 0     # free again afterwards
    assert not (tmp_path / ".out.lock").exists()


# --------------------------------------------------------------------------------------------
# memory: what an archive may unpack to is bounded
# --------------------------------------------------------------------------------------------

def _peak_python_memory(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("where", ["images", "elsewhere"])
def test_a_small_archive_that_inflates_is_refused_without_holding_it(tmp_path, where):
    """40 members of 1 MB of zeros pack to a few dozen kB: refused (an image member is over its size limit,
    other members inflate past the compression ratio) while the converter holds a few MB at most."""
    png = _png_bytes()
    members = [_file(f"train/{c}/0000.png", png) for c in CIFAR10_CLASSES]
    name = "train/cat/{i:04d}.png" if where == "images" else "docs/blob{i}.bin"
    members += [_file(name.format(i=i + 1), b"\0" * (1 << 20)) for i in range(40)]
    archive = _tar_with(tmp_path / "bomb.tar.gz", members)
    assert archive.stat().st_size < 200_000
    results = []
    peak = _peak_python_memory(lambda: results.append(run_cli("--source", archive, "--out", tmp_path / "out")))
    assert_one_sentence_error(results[0], str(archive), "refused")
    assert peak < 8 << 20, f"held {peak / 2**20:.0f} MB"
    assert not (tmp_path / "out").exists()


def test_images_are_decoded_as_they_are_read_and_the_first_bad_one_stops_it(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "tree", train=3, test=1)
    (tree / "train" / "airplane" / "0001.png").write_bytes(b"broken")
    tgz = tmp_path / "tree.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for p in sorted(tree.rglob("*.png")):
            tf.add(p, arcname=str(p.relative_to(tree)))
    decoded = []
    import pipeline.sources as sources
    real = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda data, name: decoded.append(name) or real(data, name))
    assert_one_sentence_error(run_cli("--source", tgz, "--out", tmp_path / "out"), "airplane/0001.png",
                              "not a readable image")
    assert decoded[-1].endswith("train/airplane/0001.png"), "it went on decoding after the bad member"
    assert len(decoded) == 12           # test/'s ten, then train/airplane/0000 and the bad one: in archive order


def _png_with_header(width: int, height: int) -> bytes:
    import struct
    import zlib as z

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", z.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", z.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def test_an_image_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "0009.png").write_bytes(_png_with_header(100_000, 100_000))
    proc = run_cli("--source", tree, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "cat/0009.png", "huge")


# --------------------------------------------------------------------------------------------
# silent wrong data is refused instead
# --------------------------------------------------------------------------------------------

def _save_png(path: Path, array: np.ndarray) -> None:
    import cv2
    ok, enc = cv2.imencode(".png", array[..., ::-1] if array.ndim == 3 else array)  # OpenCV writes BGR(A)
    assert ok
    path.write_bytes(enc.tobytes())


@pytest.mark.parametrize("case,fragment", [
    ("gray16", "16-bit"), ("rgb16", "16-bit"), ("transparent", "transparent pixels"),
])
def test_images_that_would_convert_wrongly_are_refused(tmp_path, case, fragment):
    tree = make_image_tree(tmp_path / "tree")
    path = tree / "train" / "dog" / "0001.png"
    if case == "gray16":
        _save_png(path, np.full((32, 32), 40_000, np.uint16))       # clipped to white by an RGB conversion
    elif case == "rgb16":
        _save_png(path, np.full((32, 32, 3), 40_000, np.uint16))
    else:
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[5, 5, 3] = 0
        Image.fromarray(rgba).save(path)
    proc = run_cli("--source", tree, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "dog/0001.png", fragment)
    assert not (tmp_path / "out").exists()


def test_an_opaque_alpha_channel_is_dropped_without_changing_a_pixel(tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    rgb = np.asarray(Image.open(tree / "train" / "dog" / "0001.png"))
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 255, np.uint8)])).save(tree / "train" / "dog" / "0001.png")
    convert(str(tree), tmp_path / "out", **QUIET)
    data, _ = load_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(data.images[5 * 2 + 1], rgb)        # dog is class 5, two images a class


@pytest.mark.parametrize("labels,fragment", [
    ([3.7] * 40, "3.7"), ([2 ** 70] * 40, "whole numbers"), ([True] * 40, "True"), (["cat"] * 40, "'cat'"),
])
def test_labels_that_are_not_whole_numbers_are_refused(tmp_path, small_batches, labels, fragment):
    _rewrite(small_batches / "data_batch_2", labels=labels)
    assert_one_sentence_error(run_cli("--source", small_batches, "--out", tmp_path / "out"), "data_batch_2",
                              "whole numbers", fragment)


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: m.update(mean=[m["mean"][0] + 1, *m["mean"][1:]]), "edited"),
    (lambda m: m.update(std=[1.0, 1.0, 1.0]), "edited"),
    (lambda m: m.pop("sha256"), "lacks the field 'sha256'"),
    (lambda m: m.pop("classes"), "lacks the field 'classes'"),
    (lambda m: m.pop("counts"), "lacks the field 'counts'"),
    (lambda m: m.pop("mean"), "lacks the field 'mean'"),
    (lambda m: m.update(format_version=True), "format version True"),
    (lambda m: m.update(format_version=str(FORMAT_VERSION)), "format version '"),
])
def test_an_edited_or_incomplete_meta_json_is_refused(tmp_path, small_batches, edit, fragment):
    out = tmp_path / "out"
    convert(str(small_batches), out, **QUIET)
    meta = json.loads((out / "meta.json").read_text())
    edit(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="convert again with --force") as e:
        load_split(out, "train")
    assert fragment in str(e.value)
    # the folder is still ours: --force converts it again
    assert run_cli("--source", small_batches, "--out", out).returncode == 2
    assert run_cli("--source", small_batches, "--out", out, "--force").returncode == 0
    load_split(out, "train")


# --------------------------------------------------------------------------------------------
# the environment's failures: one sentence, exit 2
# --------------------------------------------------------------------------------------------

def test_an_out_below_a_file_is_a_sentence(tmp_path, small_batches):
    (tmp_path / "afile").write_text("x")
    assert_one_sentence_error(run_cli("--source", small_batches, "--out", tmp_path / "afile" / "out"),
                              "not a folder")


@pytest.mark.parametrize("code,fragment", [(28, "no space left"), (13, "permission denied")])
def test_a_full_disk_or_a_denied_write_is_a_sentence_and_leaves_nothing(tmp_path, small_batches, monkeypatch,
                                                                         code, fragment):
    def failing_save(path, *a, **k):
        raise OSError(code, os.strerror(code), str(path))
    monkeypatch.setattr("pipeline.format.np.save", failing_save)
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, fragment)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, "out") == []


def test_an_unreadable_source_file_is_a_sentence(tmp_path, small_batches, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "data_batch_3":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert_one_sentence_error(run_cli("--source", small_batches, "--out", tmp_path / "out"),
                              "permission denied", "data_batch_3")


def _zip_tree(tree: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*.png")):
            zf.write(p, str(p.relative_to(tree)))
    return path


@pytest.mark.parametrize("case,fragment", [("encrypted", "encrypted"), ("method", "compression")])
def test_encrypted_or_unsupported_zips_are_a_sentence(tmp_path, case, fragment):
    import struct
    archive = _zip_tree(make_image_tree(tmp_path / "tree"), tmp_path / "tree.zip")
    raw = bytearray(archive.read_bytes())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        i = raw.find(sig)
        while i >= 0:
            if case == "encrypted":
                raw[i + flag_at:i + flag_at + 2] = struct.pack("<H", 1)
            else:
                raw[i + method_at:i + method_at + 2] = struct.pack("<H", 99)     # AES, which zipfile lacks
            i = raw.find(sig, i + 4)
    archive.write_bytes(bytes(raw))
    assert_one_sentence_error(run_cli("--source", archive, "--out", tmp_path / "out"), str(archive), fragment)


# --------------------------------------------------------------------------------------------
# archives read to their end; sentences that say what is wrong
# --------------------------------------------------------------------------------------------

def test_a_gzip_with_a_flipped_byte_in_its_payload_is_refused(tmp_path, small_batches):
    """Stored (uncompressed) deflate blocks: the flipped byte decodes silently, only gzip's CRC at the stream's end
    tells; the tar's end marker comes before it, so the archive must be read to its end."""
    import gzip
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        tf.add(small_batches, arcname="cifar-10-batches-py")
    packed = bytearray(gzip.compress(raw.getvalue(), compresslevel=0))
    tar = raw.getvalue()
    at = tar.index(b"data_batch_3") + 5000          # inside a batch's pickled pixels
    packed[len(packed) - len(tar) + at - 8] ^= 0x01   # (stored blocks: the payload's bytes, a few headers before)
    tgz = tmp_path / "flipped.tar.gz"
    tgz.write_bytes(bytes(packed))
    proc = run_cli("--source", tgz, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "flipped.tar.gz", "corrupt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_batch_of_zero_images_says_so(tmp_path, small_batches, protocol):
    batch = small_batches / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((0, 3072), np.uint8), "labels": []}, f, protocol=protocol)
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "data_batch_2 holds no images")
    assert "malicious" not in proc.stderr


def test_an_archive_with_two_trees_names_both(tmp_path):
    tree = make_image_tree(tmp_path / "tree", train=10, test=10)
    tgz = tmp_path / "two.tar"
    with tarfile.open(tgz, "w") as tf:
        for top in ("", "copy/"):
            for split in ("train", "test"):
                tf.add(tree / split, arcname=f"{top}{split}")
    proc = run_cli("--source", tgz, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "train and test at its top level, copy/train and copy/test")


def test_a_full_disk_while_numpy_writes_the_arrays_is_a_full_disk(tmp_path, small_batches, monkeypatch):
    def short(path, array):
        raise OSError(f"{array.size} requested and 12 written")     # numpy's tofile: no errno
    monkeypatch.setattr(np, "save", short)
    proc = run_cli("--source", small_batches, "--out", tmp_path / "out")
    assert_one_sentence_error(proc, "no space left on the disk", "train_images.npy")


def test_a_mount_point_is_refused_before_anything_is_read(tmp_path, small_batches, monkeypatch):
    target = tmp_path / "mnt"
    target.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == target or real(p))
    proc = run_cli("--source", small_batches, "--out", target)
    assert_one_sentence_error(proc, "is a mount point", f"--out {target / 'cifar10'}")
    from pipeline.cli import os_error_sentence
    import errno
    assert "mount point" in os_error_sentence(OSError(errno.EBUSY, "Device or resource busy", "/mnt"))


def test_force_into_a_link_replaces_the_folder_it_points_to_and_keeps_the_link(tmp_path, small_batches):
    real, link = tmp_path / "big-disk" / "cifar10", tmp_path / "cifar10"
    convert(str(small_batches), real, **QUIET)
    link.symlink_to(real)
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30, seed=5)
    assert run_cli("--source", other, "--out", link, "--force").returncode == 0
    assert link.is_symlink() and read_meta(link)["counts"]["train"] == 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-disk", "cifar-10-batches-py", "cifar10", "other"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["cifar10"]     # no .tmp-…-old- left behind


def test_what_a_kill_left_beside_a_file_or_folder_is_cleaned_by_the_next_run(tmp_path, small_batches):
    from model.checkpoint import write_text_atomic
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.json.tmp-{dead.pid}"
    stale.write_text("half")
    write_text_atomic(tmp_path / "metrics.json", "[]")
    assert not stale.exists() and (tmp_path / "metrics.json").read_text() == "[]"
    out = tmp_path / "data"
    convert(str(small_batches), out, **QUIET)
    left = [tmp_path / f".data.tmp-{dead.pid}-old-1234abcd", tmp_path / f".data.tmp-{dead.pid}-5678abcd"]
    left[0].symlink_to(out)                          # an old link renamed aside, and a half-written folder
    left[1].mkdir()
    convert(str(small_batches), out, force=True, **QUIET)
    assert not any(p.exists() or p.is_symlink() for p in left) and read_meta(out)
