"""The `ffcv` engine (CPU here): .beton caching, registry contract, parity."""
import sys

import numpy as np
import pytest
import torch

from conftest import epoch_of
from pipeline import LoaderUnavailable, available_loaders, build_loader
from pipeline.format import load_split
from pipeline.parity import statistical_parity

needs_ffcv = pytest.mark.skipif("ffcv" not in available_loaders(),
                                reason="ffcv is not installed (apt-get install pkg-config libturbojpeg0-dev "
                                       "libopencv-dev && pip install -e '.[ffcv]')")


@pytest.fixture(scope="module")
def ffcv_dir(tmp_path_factory, mini_source):
    """A private conversion: the .beton files are written into it."""
    from pipeline.convert import convert
    out = tmp_path_factory.mktemp("ffcv") / "mini"
    convert(str(mini_source), out, log=lambda *a: None)
    return out


def test_missing_ffcv_is_a_sentence(mini_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    assert "ffcv" not in available_loaders()
    with pytest.raises(LoaderUnavailable, match="apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev"):
        build_loader("ffcv", mini_dir, "train", 64)


@needs_ffcv
def test_beton_is_written_atomically_once_and_rebuilt_for_new_arrays(ffcv_dir, tmp_path):
    from conftest import run_in_process
    from pipeline.convert import main
    proc = run_in_process(main, "--source", ffcv_dir.parent / "x", "--out", ffcv_dir, "--beton")
    assert proc.returncode == 2 and "does not exist" in proc.stderr      # bad source: nothing written
    from pipeline.engines.ffcv import beton_path, ensure_beton
    path = ensure_beton(ffcv_dir, "train")
    assert path == beton_path(ffcv_dir, "train") and path.stat().st_size > 5085 * 3072
    mtime = path.stat().st_mtime_ns
    assert ensure_beton(ffcv_dir, "train").stat().st_mtime_ns == mtime     # cached
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # no temporary left
    from pipeline.format import owned_dataset
    assert owned_dataset(ffcv_dir) == (True, [])        # the .beton, its record and its lock are the conversion's
    # re-converted from another source: other hashes, a new .beton, the stale one removed
    from conftest import write_batches
    from pipeline.convert import convert
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30)
    convert(str(other), ffcv_dir, force=True, log=lambda *a: None)
    new = ensure_beton(ffcv_dir, "train")
    assert new != path and new.is_file() and not path.exists()


@needs_ffcv
def test_contract_and_every_sample_once(mini_dir):
    split, meta = load_split(mini_dir, "train")
    n = len(split.labels)
    loader = build_loader("ffcv", mini_dir, "train", 500, return_index=True)
    assert len(loader) == -(-n // 500)
    x, y, i = epoch_of(loader)
    assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(i.tolist()) == list(range(n))
    np.testing.assert_array_equal(y.numpy(), split.labels[i.numpy()])
    raw, _, ri = epoch_of(build_loader("ffcv", mini_dir, "train", 512, augment=False, normalize=False,
                                       return_index=True))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).numpy(), split.images[ri.numpy()])


@needs_ffcv
def test_seed_determinism_and_shards(mini_dir):
    def run(seed, shard=(0, 1)):
        return build_loader("ffcv", mini_dir, "train", 512, seed=seed, normalize=False, return_index=True,
                            shard=shard)
    a = run(2)
    ea, eb = epoch_of(a), epoch_of(run(2))
    assert all(torch.equal(u, v) for u, v in zip(ea, eb))
    e1 = epoch_of(a)
    assert not torch.equal(ea[0], e1[0])
    a.set_epoch(0)
    assert torch.equal(epoch_of(a)[0], ea[0])
    seen = [epoch_of(run(2, (r, 2)))[2] for r in range(2)]
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(len(load_split(mini_dir, "train")[0].labels)))


@needs_ffcv
def test_statistical_parity(mini_dir, policy):
    checks = statistical_parity("ffcv", mini_dir, policy, seed=4)
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed
    assert any(c.name == "mean augmented image" for c in checks)


# --------------------------------------------------------------------------------------------
# the .beton is part of the converted data: bound to its arrays, checked before FFCV reads it
# --------------------------------------------------------------------------------------------

@pytest.fixture
def beton_dir(tmp_path, tiny_dir):
    """A private copy of the tiny conversion with both .beton files written, for a test to damage."""
    import shutil

    from pipeline.engines.ffcv import ensure_beton
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data, ignore=shutil.ignore_patterns("ffcv"))
    return data, ensure_beton(data, "train"), ensure_beton(data, "test")


def _header(path):
    from ffcv.types import HeaderType
    return np.fromfile(path, dtype=HeaderType, count=1)[0]


def _rewrite(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _zero_labels(path):
    from pipeline.engines.ffcv import read_beton  # noqa: F401  (the layout below is FFCV's)
    from ffcv.types import FieldDescType, HeaderType
    h = _header(path)
    meta_dtype = np.dtype([("", np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])),
                           ("", np.dtype([("value", "<i8")])), ("", np.dtype([("value", "<i8")]))], align=True)
    at = HeaderType.itemsize + int(h["num_fields"]) * FieldDescType.itemsize
    metadata = np.fromfile(path, dtype=meta_dtype, count=int(h["num_samples"]), offset=at)
    metadata["f1"]["value"] = 0
    _rewrite(path, at, metadata.tobytes())


def _damage(kind, data, train, test):
    import shutil
    if kind == "the test .beton under the train name":
        shutil.copyfile(test, train)
    elif kind == "the test .beton and its record under the train name":
        shutil.copyfile(test, train)
        shutil.copyfile(f"{test}.json", f"{train}.json")
    elif kind == "zeroed labels":
        _zero_labels(train)
    elif kind == "a truncated tail":
        with open(train, "r+b") as f:
            f.truncate(train.stat().st_size - 5000)
    elif kind == "a smaller sample count in the header":
        _rewrite(train, 8, np.uint64(100).tobytes())
    elif kind == "pointers past the end":
        h = _header(train)
        _rewrite(train, int(h["alloc_table_ptr"]) + 8, np.uint64(10 ** 12).tobytes())
    elif kind == "a damaged header":
        _rewrite(train, 0, b"\xff" * 24)
    elif kind == "no record":
        (train.parent / f"{train.name}.json").unlink()


DAMAGES = ["the test .beton under the train name", "the test .beton and its record under the train name",
           "zeroed labels", "a truncated tail", "a smaller sample count in the header", "pointers past the end",
           "a damaged header", "no record"]


@needs_ffcv
@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_or_foreign_beton_is_refused_with_a_sentence(beton_dir, kind):
    from pipeline.format import DataError
    data, train, test = beton_dir
    _damage(kind, data, train, test)
    with pytest.raises(DataError) as e:
        build_loader("ffcv", data, "train", 100)
    assert str(train) in str(e.value) and ("not written by cifarflow" in str(e.value) or "record" in str(e.value))
    assert "\n" not in str(e.value)


@needs_ffcv
@pytest.mark.parametrize("kind", ["a smaller sample count in the header", "pointers past the end", "a damaged header"])
def test_a_damaged_header_with_a_matching_record_is_refused_before_ffcv_reads_it(beton_dir, kind):
    """A record rewritten to fit a damaged file (digest and size recomputed): the header check still refuses it."""
    from pipeline.engines.ffcv import read_beton
    from pipeline.format import DataError, read_meta, record_beton
    data, train, test = beton_dir
    _damage(kind, data, train, test)
    record_beton(train, train, read_meta(data), "train", 600)
    with pytest.raises(DataError, match="is not the .beton of 600 CIFAR images"):
        read_beton(train, read_meta(data), "train")


@needs_ffcv
def test_a_beton_truncated_during_an_epoch_changes_nothing(beton_dir):
    """The loader reads the checked copy in memory: truncating the file mid-epoch (SIGBUS with a memory map) leaves
    the epoch whole and the same."""
    data, train, _ = beton_dir
    whole = epoch_of(build_loader("ffcv", data, "train", 100, normalize=False, return_index=True, seed=1))
    loader = build_loader("ffcv", data, "train", 100, normalize=False, return_index=True, seed=1)
    batches = []
    for k, batch in enumerate(loader):
        batches.append(batch)
        if k == 0:
            with open(train, "r+b") as f:
                f.truncate(4096)
    got = [torch.cat(parts) for parts in zip(*batches)]
    assert all(torch.equal(a, b) for a, b in zip(got, whole))


@needs_ffcv
def test_a_beton_of_the_users_own_is_never_overwritten_or_deleted(beton_dir):
    from pipeline.engines.ffcv import ensure_beton
    from pipeline.format import DataError
    data, train, _ = beton_dir
    mine = train.parent / "train-0000.beton"          # a name like ours, no record: the user's
    mine.write_bytes(b"my own beton")
    (train.parent / f"{train.name}.json").unlink()      # and the loader's own without its record
    with pytest.raises(DataError, match="not written by cifarflow"):
        ensure_beton(data, "train")
    assert mine.read_bytes() == b"my own beton" and train.exists()


@needs_ffcv
def test_ffcv_thread_count_and_a_dying_loader_thread_are_sentences(beton_dir, monkeypatch):
    import numba

    from pipeline.engines import ffcv
    from pipeline.format import DataError
    data, _, _ = beton_dir
    most = numba.config.NUMBA_NUM_THREADS
    with pytest.raises(ValueError, match=f"runs 1 to {most} threads on this machine"):
        build_loader("ffcv", data, "train", 100, num_workers=most + 1)
    loader = build_loader("ffcv", data, "train", 100, augment=False)

    def broken(*a, **k):
        raise IndexError("a kernel failed")
    from ffcv.loader.epoch_iterator import EpochIterator
    monkeypatch.setattr(EpochIterator, "run_pipeline", broken)
    with pytest.raises(DataError, match=r"FFCV's loader thread failed \(IndexError: a kernel failed\)"):
        list(loader)
    assert not ffcv._THREAD_ERRORS
