"""The `gpu` engine: registry contract, sampler properties, parity with albumentations (CPU here, CUDA where present)."""
import numpy as np
import pytest
import torch
from albumentations.augmentations.geometric import functional as fgeometric

from conftest import epoch_of
from pipeline import available_loaders, build_loader
from pipeline.format import load_split
from pipeline.transforms.affine import forward_matrix
from pipeline.parity import replay_parity, statistical_parity

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA GPU on this machine"))]


@pytest.mark.parametrize("device", DEVICES)
def test_contract(mini_dir, device):
    assert "gpu" in available_loaders()
    split, _ = load_split(mini_dir, "train")
    loader = build_loader("gpu", mini_dir, "train", 500, device=device, return_index=True)
    assert len(loader) == -(-len(split.labels) // 500)
    x, y, i = epoch_of(loader)
    assert x.dtype == torch.float32 and x.shape == (len(split.labels), 3, 32, 32) and x.device.type == device
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in loader)
    assert sorted(i.tolist()) == list(range(len(split.labels)))
    np.testing.assert_array_equal(y.cpu().numpy(), split.labels[i.cpu().numpy()])
    raw, _, ri = epoch_of(build_loader("gpu", mini_dir, "train", 500, device=device, augment=False,
                                    normalize=False, return_index=True))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).cpu().numpy(), split.images[ri.cpu().numpy()])
    x2, y2 = next(iter(build_loader("gpu", mini_dir, "test", 64, device=device, augment=False)))
    assert len(x2) == 64 and x2.dtype == torch.float32


def test_same_seed_same_epoch_and_epochs_advance(mini_dir):
    a = build_loader("gpu", mini_dir, "train", 256, seed=5, normalize=False, return_index=True)
    b = build_loader("gpu", mini_dir, "train", 256, seed=5, normalize=False, return_index=True)
    ea, eb = epoch_of(a), epoch_of(b)
    assert all(torch.equal(u, v) for u, v in zip(ea, eb))
    nxt = epoch_of(a)
    assert not torch.equal(ea[2], nxt[2]) and not torch.equal(ea[0], nxt[0])
    a.set_epoch(0)
    assert all(torch.equal(u, v) for u, v in zip(ea, epoch_of(a)))


def test_shards_split_an_epoch_without_overlap(mini_dir):
    seen = []
    for rank in range(2):
        loader = build_loader("gpu", mini_dir, "train", 300, seed=1, shard=(rank, 2), return_index=True)
        seen.append(epoch_of(loader)[2])
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(len(load_split(mini_dir, "train")[0].labels)))


def test_sampler_properties(policy):
    flip, ssr, drop = policy.sample(20000, torch.Generator().manual_seed(0)).items
    for params, t in zip((flip, ssr, drop), policy.transforms):
        assert abs(params["on"].float().mean().item() - t.p) < 0.02
    assert ssr["angle"].abs().max() <= 15 and ssr["angle"].abs().max() > 14.9
    for s in (ssr["scale_x"], ssr["scale_y"]):
        assert 0.9 <= s.min() and s.max() <= 1.1
    assert not torch.equal(ssr["scale_x"], ssr["scale_y"]), "x and y scales are drawn separately"
    assert ssr["shift_x"].dtype == torch.int64 and set(ssr["shift_x"].unique().tolist()) == set(range(-3, 4))
    # truncation toward zero: 0 is about twice as likely as +1 (U(-3.2, 3.2) -> int)
    counts = torch.bincount(ssr["shift_x"] + 3)
    assert 1.6 < counts[3] / counts[4] < 2.4
    assert set(drop["hole_y"].unique().tolist()) == set(range(0, 17)) == set(drop["hole_x"].unique().tolist())
    assert set(drop["hole_h"].unique().tolist()) == {16} == set(drop["hole_w"].unique().tolist())


def test_sampler_of_a_varied_dropout(policy):
    """2-4 holes of 4-12 pixels: the number and each size uniform on its range, every hole inside the image."""
    from pipeline.transforms.erasing import CoarseDropout
    pol = policy.with_transforms(CoarseDropout(p=1.0, num_holes_range=(2, 4), hole_height_range=(4, 12),
                                               hole_width_range=(4, 12)))
    (p,) = pol.sample(30000, torch.Generator().manual_seed(1)).items
    count = (p["hole_h"] > 0).sum(1)
    assert p["hole_h"].shape == (30000, 4) and set(count.unique().tolist()) == {2, 3, 4}
    assert torch.all((torch.bincount(count)[2:].float() / 30000 - 1 / 3).abs() < 0.02)
    drawn = p["hole_h"][p["hole_h"] > 0]
    assert set(drawn.unique().tolist()) == set(range(4, 13))
    hy, hx, hh, hw = p["hole_y"], p["hole_x"], p["hole_h"], p["hole_w"]
    assert torch.all((hy >= 0) & (hy + hh <= 32) & (hx >= 0) & (hx + hw <= 32))
    tall = hh == 12           # its top-left is uniform on 0..20, both ends reached
    assert set(hy[tall].unique().tolist()) == set(range(0, 21))
    frac = policy.with_transforms(CoarseDropout(hole_height_range=(0.1, 0.2), hole_width_range=(0.25, 0.25)))
    (q,) = frac.sample(20000, torch.Generator().manual_seed(2)).items
    drawn = q["hole_h"][q["hole_h"] > 0]
    assert set(drawn.unique().tolist()) == {3, 4, 5, 6} and set(q["hole_w"][q["hole_w"] > 0].unique().tolist()) == {8}


def test_matrix_is_albumentations_own(policy):
    _, p, _ = policy.sample(300, torch.Generator().manual_seed(3)).items
    m = forward_matrix(p, (32, 32)).numpy()
    for i in range(300):
        ref = fgeometric.create_affine_transformation_matrix(
            {"x": int(p["shift_x"][i]), "y": int(p["shift_y"][i])}, {"x": 0.0, "y": 0.0},
            {"x": float(p["scale_x"][i]), "y": float(p["scale_y"][i])}, float(p["angle"][i]),
            fgeometric.center((32, 32)))
        np.testing.assert_allclose(m[i], ref, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_pixel_parity(mini_dir, policy, device):
    split, _ = load_split(mini_dir, "train")
    checks, _ = replay_parity("gpu", np.asarray(split.images[:1500]), policy, seed=11, device=device)
    assert len(checks) == 4
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("device", DEVICES)
def test_statistical_parity(mini_dir, policy, device):
    checks = statistical_parity("gpu", mini_dir, policy, seed=2, device=device)
    names = {c.name for c in checks}
    assert {"0 HorizontalFlip rate", "1 Affine angle (KS)", "share of pixels of the CoarseDropout fill",
            "mean augmented image"} <= names
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed


@pytest.mark.slow
@pytest.mark.filterwarnings("error:Dynamo detected a call to a `functools.lru_cache`:UserWarning")
def test_compiled_apply_matches_eager(mini_dir):
    """torch.compile'd augmentation is the eager one, and traces the constants each device keeps without warning."""
    eager = build_loader("gpu", mini_dir, "train", 1024, seed=4, normalize=False)
    compiled = build_loader("gpu", mini_dir, "train", 1024, seed=4, normalize=False, compile=True)
    for (a, _), (b, _) in zip(eager, compiled):
        assert a.dtype == b.dtype == torch.uint8
        diff = (a.int() - b.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_batches_never_make_the_host_wait(mini_dir):
    """Past the first batch, drawing and augmenting a batch on the GPU queues work and never synchronizes
    (a singularity check of an inverse, or a tensor made from host values, would make the host wait for the
    GPU at every batch, and expose the launch time of every training step behind it)."""
    # chunks of two batches: the next chunk is made on the side stream during the batches below
    it = iter(build_loader("gpu", mini_dir, "train", 256, device="cuda", seed=0, chunk=512))
    next(it)                                    # the epoch's permutation and parameters, the cached constants
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            x, y = next(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and y.is_cuda


def test_augment_constants_are_made_once_per_device(mini_dir):
    """The CPU side of the test above: the policy's fill values and the pixel -> normalized map are made once
    and reused, not made anew from host values for each batch."""
    from pipeline.transforms import channel_constant
    from pipeline.transforms.affine import image_centre, pixel_to_normalized
    loader = build_loader("gpu", mini_dir, "train", 64, device="cpu", seed=0)
    it = iter(loader)
    next(it)
    made = [f.cache_info().misses for f in (channel_constant, pixel_to_normalized, image_centre)]
    for _ in range(3):
        next(it)
    assert [f.cache_info().misses for f in (channel_constant, pixel_to_normalized, image_centre)] == made
    assert channel_constant.cache_info().hits >= 6


def _epoch(data_dir, epoch=2, **options):
    loader = build_loader("gpu", data_dir, "train", 100, seed=3, return_index=True, **options)
    loader.set_epoch(epoch)
    xs, ys, ids = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys), torch.cat(ids), [len(y) for y in ys]


@pytest.mark.parametrize("options", [{}, {"drop_last": True}, {"shard": (1, 3)}])
def test_the_chunk_size_never_changes_the_epoch(tiny_dir, options):
    """chunk=batch size is the per-batch path; any other chunk (whole batches, or not) gives the same batches of
    the same samples with the same pixels."""
    per_batch = _epoch(tiny_dir, chunk=100, **options)
    for chunk in (250, 300, 10_000):
        other = _epoch(tiny_dir, chunk=chunk, **options)
        assert other[3] == per_batch[3]
        assert all(torch.equal(a, b) for a, b in zip(other[:3], per_batch[:3])), chunk
    assert not torch.equal(_epoch(tiny_dir, epoch=3, chunk=300)[0], _epoch(tiny_dir, chunk=300)[0])


def test_chunk_is_whole_batches_and_bounded(tiny_dir):
    loader = build_loader("gpu", tiny_dir, "train", 100, chunk=250)
    assert loader.chunk == 200 and loader.chunk_bytes() == 200 * 3 * 32 * 32 * 4
    assert build_loader("gpu", tiny_dir, "train", 100, chunk=50).chunk == 100
    with pytest.raises(ValueError, match="chunk must be a positive number"):
        build_loader("gpu", tiny_dir, "train", 100, chunk=0)


def test_bf16_output_is_what_a_bf16_autocast_step_sees(mini_dir):
    """dtype="bfloat16": the same normalized batches rounded to bf16, channels-last, at half the bytes; under bf16
    autocast the net's first convolution casts float32 input to exactly that, so the step computes the same."""
    from model import build_model
    f32 = epoch_of(build_loader("gpu", mini_dir, "train", 256, seed=3, return_index=True))
    bf16 = epoch_of(build_loader("gpu", mini_dir, "train", 256, seed=3, return_index=True, dtype="bfloat16"))
    assert bf16[0].dtype == torch.bfloat16 and bf16[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bf16[0], f32[0].to(torch.bfloat16))
    assert torch.equal(bf16[1], f32[1]) and torch.equal(bf16[2], f32[2])
    torch.manual_seed(0)
    net = build_model().eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(net(f32[0][:64]), net(bf16[0][:64]))
    loader = build_loader("gpu", mini_dir, "train", 256, dtype="bfloat16")
    assert loader.chunk_bytes() == loader.chunk * 3 * 32 * 32 * 2
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        build_loader("gpu", mini_dir, "train", 256, dtype="float16")
