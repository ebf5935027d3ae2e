"""The `ffcv` engine (CPU here): .beton caching, registry contract, both modes, parity."""
import sys

import numpy as np
import pytest
import torch

import pipeline
from conftest import ROOT, epoch_of
from pipeline import LoaderUnavailable, available_loaders, build_loader
from pipeline.format import load_split
from pipeline.parity import replay_parity, statistical_parity

needs_ffcv = pytest.mark.skipif("ffcv" not in available_loaders(),
                                reason="ffcv is not installed (apt-get install pkg-config libturbojpeg0-dev "
                                       "libopencv-dev && pip install -e '.[ffcv]')")
MODES = ["numba", "torch"]


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
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # re-converted from another source: other hashes, a new .beton, the stale one removed
    from conftest import write_batches
    from pipeline.convert import convert
    other = write_batches(tmp_path / "other" / "cifar-10-batches-py", per_batch=30)
    convert(str(other), ffcv_dir, force=True, log=lambda *a: None)
    new = ensure_beton(ffcv_dir, "train")
    assert new != path and new.is_file() and not path.exists()


@needs_ffcv
@pytest.mark.parametrize("mode", MODES)
def test_contract_and_every_sample_once(mini_dir, mode):
    split, meta = load_split(mini_dir, "train")
    n = len(split.labels)
    loader = build_loader("ffcv", mini_dir, "train", 500, return_index=True, mode=mode)
    assert len(loader) == -(-n // 500)
    x, y, i = epoch_of(loader)
    assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(i.tolist()) == list(range(n))
    np.testing.assert_array_equal(y.numpy(), split.labels[i.numpy()])
    raw, _, ri = epoch_of(build_loader("ffcv", mini_dir, "train", 512, augment=False, normalize=False,
                                       return_index=True, mode=mode))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).numpy(), split.images[ri.numpy()])


@needs_ffcv
@pytest.mark.parametrize("mode", MODES)
def test_seed_determinism_and_shards(mini_dir, mode):
    def run(seed, shard=(0, 1)):
        return build_loader("ffcv", mini_dir, "train", 512, seed=seed, normalize=False, return_index=True,
                            mode=mode, shard=shard)
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
def test_numba_kernel_pixel_parity(mini_dir, policy):
    split, _ = load_split(mini_dir, "train")
    checks, _ = replay_parity("ffcv", np.asarray(split.images[:1000]), policy, seed=3)
    failed = [c.row() for c in checks if not c.passed]
    assert len(checks) == 4 and not failed, failed


@needs_ffcv
@pytest.mark.parametrize("mode", MODES)
def test_statistical_parity(mini_dir, policy, mode):
    options = None if mode == "numba" else {"mode": mode}    # numba: the CPU default, with its KS tests
    checks = statistical_parity("ffcv", mini_dir, policy, seed=4, options=options)
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed
    assert any(c.name == "angle distribution (KS)" for c in checks) == (mode == "numba")
