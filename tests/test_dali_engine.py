"""The `dali` engine, in DALI's CPU mode here (GPU tests skip with a reason without CUDA)."""
import numpy as np
import pytest
import torch

from pipeline import available_loaders, build_loader
from pipeline.format import load_split
from pipeline.params import forward_matrix
from pipeline.parity import replay_parity, statistical_parity
from pipeline.policy import AugmentPolicy

pytestmark = pytest.mark.skipif("dali" not in available_loaders(),
                                reason="NVIDIA DALI is not installed (pip install -e '.[dali]')")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA GPU on this machine"))]


@pytest.fixture(scope="module")
def policy(mini_dir):
    return AugmentPolicy.from_meta(load_split(mini_dir, "train")[1])


def epoch_of(loader):
    xs, ys, idx = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


@pytest.mark.parametrize("device", DEVICES)
def test_contract_and_every_sample_once(mini_dir, device):
    split, _ = load_split(mini_dir, "train")
    n = len(split.labels)
    loader = build_loader("dali", mini_dir, "train", 500, device=device, return_index=True)
    assert len(loader) == -(-n // 500)
    batches = list(loader)
    assert len(batches) == len(loader) and len(batches[-1][0]) == n % 500
    x, y, i = (torch.cat(t) for t in zip(*batches))
    assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32) and x.device.type == device
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in batches)
    assert sorted(i.tolist()) == list(range(n))
    np.testing.assert_array_equal(y.cpu().numpy(), split.labels[i.cpu().numpy()])
    raw, _, ri = epoch_of(build_loader("dali", mini_dir, "train", 512, device=device, augment=False,
                                    normalize=False, return_index=True))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).cpu().numpy(), split.images[ri.cpu().numpy()])
    # normalization: (x - mean) / std of meta, on unaugmented test pixels
    test, meta = load_split(mini_dir, "test")
    xt, _ = next(iter(build_loader("dali", mini_dir, "test", 100, device=device, augment=False)))
    src = torch.from_numpy(np.array(test.images[:100])).permute(0, 3, 1, 2).float()
    expected = (src - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(xt.cpu(), expected, rtol=0, atol=1e-4)


def test_seed_determinism_and_epochs(mini_dir):
    def run(seed, epoch=None):
        loader = build_loader("dali", mini_dir, "train", 512, seed=seed, normalize=False, return_index=True)
        if epoch is not None:
            loader.set_epoch(epoch)
        return loader, epoch_of(loader)

    la, a = run(3)
    _, b = run(3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    a2 = epoch_of(la)                    # the next epoch differs...
    assert not torch.equal(a[2], a2[2]) and not torch.equal(a[0], a2[0])
    _, again = run(3, epoch=1)           # ...and is replayed by set_epoch
    assert all(torch.equal(u, v) for u, v in zip(a2, again))
    _, c = run(4)
    assert not torch.equal(a[0], c[0])


def test_two_shards_cover_the_epoch_without_overlap(mini_dir):
    seen = [epoch_of(build_loader("dali", mini_dir, "train", 256, seed=1, shard=(r, 2), return_index=True))[2]
            for r in range(2)]
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(len(load_split(mini_dir, "train")[0].labels)))


@pytest.mark.parametrize("device", DEVICES)
def test_replay_pixel_parity(mini_dir, policy, device):
    split, _ = load_split(mini_dir, "train")
    checks, _ = replay_parity("dali", np.asarray(split.images[:1500]), policy, seed=5, device=device)
    failed = [c.row() for c in checks if not c.passed]
    assert len(checks) == 4 and not failed, failed


@pytest.mark.parametrize("device", DEVICES)
def test_native_statistical_parity(mini_dir, policy, device):
    checks = statistical_parity("dali", mini_dir, policy, seed=7, device=device)
    assert any(c.name == "angle distribution (KS)" for c in checks)
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed


def test_native_matrices_are_the_replay_convention(policy):
    from pipeline.engines.dali import dali_matrix, native_draw
    params, native = native_draw(4000, policy, seed=9)
    forward = forward_matrix(params).numpy()
    forward[~params.ssr.numpy()] = np.eye(3)
    np.testing.assert_allclose(native, dali_matrix(forward), atol=2e-5)
    assert np.array_equal(native[~params.ssr.numpy()], np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32),
                                                               ((~params.ssr).sum().item(), 1, 1)))


def test_replay_mode_loader_runs_the_shared_sampler(mini_dir):
    loader = build_loader("dali", mini_dir, "train", 512, normalize=False, mode="replay", return_index=True)
    x, _, i = epoch_of(loader)
    assert sorted(i.tolist()) == list(range(len(x)))
    with pytest.raises(ValueError, match="mode"):
        build_loader("dali", mini_dir, "train", 512, mode="random")
