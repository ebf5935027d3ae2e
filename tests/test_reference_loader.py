"""The `torch` engine (albumentations on DataLoader workers): the registry contract and the policy's rates."""
import numpy as np
import pytest
import torch

from pipeline import build_loader
from pipeline.format import load_split
from pipeline.policy import AugmentPolicy
from pipeline.transforms.affine import Affine
from pipeline.transforms.erasing import CoarseDropout
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip


@pytest.fixture(scope="module")
def train(mini_dir):
    split, meta = load_split(mini_dir, "train")
    return np.asarray(split.images), np.asarray(split.labels), AugmentPolicy.from_meta(meta)


def epoch(loader):
    xs, ys, idx = [], [], []
    for x, y, i in loader:
        xs.append(x)
        ys.append(y)
        idx.append(i)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


def test_normalized_output_contract(mini_dir, train):
    images, labels, policy = train
    loader = build_loader("torch", mini_dir, "train", 256, num_workers=2, return_index=True)
    assert len(loader) == -(-len(labels) // 256)
    sizes = []
    for x, y, i in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.dtype == torch.int64 and i.dtype == torch.int64 and x.device.type == "cpu"
        sizes.append(len(x))
        np.testing.assert_array_equal(y.numpy(), labels[i.numpy()])
    assert sizes[:-1] == [256] * (len(sizes) - 1) and sum(sizes) == len(labels)
    # two-tuple form, and normalization = (x - mean) / std of meta (checked on unaugmented pixels)
    plain = build_loader("torch", mini_dir, "test", 100, augment=False, num_workers=0)
    x, y = next(iter(plain))
    test_split, _ = load_split(mini_dir, "test")
    src = torch.from_numpy(np.array(test_split.images[:100])).permute(0, 3, 1, 2).float()
    expected = (src - torch.tensor(policy.mean).view(1, 3, 1, 1)) / torch.tensor(policy.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_every_sample_once_and_augment_false_gives_the_source_pixels(mini_dir, train):
    images, labels, _ = train
    loader = build_loader("torch", mini_dir, "train", 128, augment=False, normalize=False,
                          return_index=True, num_workers=2)
    x, y, i = epoch(loader)
    assert x.dtype == torch.uint8 and x.shape == (len(labels), 3, 32, 32)
    assert sorted(i.tolist()) == list(range(len(labels)))
    assert i.tolist() != list(range(len(labels))), "the training split is shuffled"
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), images[i.numpy()])
    np.testing.assert_array_equal(y.numpy(), labels[i.numpy()])


def test_same_seed_same_epoch_whatever_the_workers(mini_dir):
    a = epoch(build_loader("torch", mini_dir, "train", 200, seed=7, normalize=False, return_index=True, num_workers=0))
    b = epoch(build_loader("torch", mini_dir, "train", 200, seed=7, normalize=False, return_index=True, num_workers=2))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = epoch(build_loader("torch", mini_dir, "train", 200, seed=8, normalize=False, return_index=True, num_workers=0))
    assert not torch.equal(a[2], c[2]) and not torch.equal(a[0], c[0])


def test_epochs_advance_and_set_epoch_replays(mini_dir):
    loader = build_loader("torch", mini_dir, "train", 500, normalize=False, return_index=True, num_workers=2)
    e0, e1 = epoch(loader), epoch(loader)
    assert not torch.equal(e0[2], e1[2])
    loader.set_epoch(0)
    again = epoch(loader)
    assert all(torch.equal(u, v) for u, v in zip(e0, again))


def only(policy, kind):
    """The project's policy with only its transform of this kind."""
    kept = [t for t in policy.transforms if isinstance(t, kind)]
    assert len(kept) == 1, kept
    return policy.with_transforms(*kept)


def test_flip_rate_over_an_epoch(mini_dir, train):
    images, _, policy = train
    x, _, i = epoch(build_loader("torch", mini_dir, "train", 512, normalize=False, return_index=True,
                                 policy=only(policy, HorizontalFlip), num_workers=2))
    out, src = x.permute(0, 2, 3, 1).numpy(), images[i.numpy()]
    same = np.all(out == src, axis=(1, 2, 3))
    mirrored = np.all(out == src[:, :, ::-1], axis=(1, 2, 3))
    symmetric = same & mirrored
    assert np.all(same | mirrored), "a flip-only policy gives the source or its exact mirror"
    rate = mirrored[~symmetric].mean()
    assert abs(rate - 0.5) < 0.03, rate        # 5,085 draws: sd 0.007


def test_dropout_rate_and_hole_over_an_epoch(mini_dir, train):
    images, _, policy = train
    x, _, i = epoch(build_loader("torch", mini_dir, "train", 512, normalize=False, return_index=True,
                                 policy=only(policy, CoarseDropout), num_workers=2))
    out, src = x.permute(0, 2, 3, 1).numpy(), images[i.numpy()]
    fill = np.trunc(policy.mean).astype(np.uint8)
    applied = 0
    for o, s in zip(out, src):
        diff = np.any(o != s, axis=2)
        if not diff.any():
            continue
        applied += 1
        ys, xs = np.nonzero(diff)
        # a 16x16 hole, fully inside the image, filled with the truncated mean
        y0, x0 = ys.min(), xs.min()
        assert ys.max() - y0 < 16 and xs.max() - x0 < 16
        hole = np.all(o == fill, axis=2)
        assert not (diff & ~hole).any(), "every changed pixel is a fill pixel"
    rate = applied / len(out)
    assert abs(rate - 0.5) < 0.03, rate


def test_shift_scale_rotate_rate(mini_dir, train):
    images, _, policy = train
    x, _, i = epoch(build_loader("torch", mini_dir, "train", 512, normalize=False, return_index=True,
                                 policy=only(policy, Affine), num_workers=2))
    changed = np.any(x.permute(0, 2, 3, 1).numpy() != images[i.numpy()], axis=(1, 2, 3))
    assert abs(changed.mean() - 0.5) < 0.03, changed.mean()


def test_the_transforms_of_a_batch_draw_independently(mini_dir, train):
    """Each transform of the Compose draws from a seed of its own: with albumentations' own seeding the two flips
    below were applied together more often than chance."""
    images, _, policy = train
    flips = policy.with_transforms(HorizontalFlip(p=0.5), VerticalFlip(p=0.5))
    x, _, i = epoch(build_loader("torch", mini_dir, "train", 512, normalize=False, return_index=True,
                                 policy=flips, num_workers=2))
    out, src = x.permute(0, 2, 3, 1).numpy(), images[i.numpy()]
    h = np.all(out == src[:, :, ::-1], axis=(1, 2, 3)) | np.all(out == src[:, ::-1, ::-1], axis=(1, 2, 3))
    v = np.all(out == src[:, ::-1], axis=(1, 2, 3)) | np.all(out == src[:, ::-1, ::-1], axis=(1, 2, 3))
    plain = np.all(out == src, axis=(1, 2, 3))
    symmetric = plain & (h | v)
    both = np.all(out == src[:, ::-1, ::-1], axis=(1, 2, 3)) & ~symmetric
    assert abs(both.mean() - 0.25) < 0.03, both.mean()          # 5,085 draws: sd 0.006
