"""The `kornia` peer engine: the loader contract, the policy's probabilities and hole size mapped onto kornia's
modules, its own random state, and the policies kornia cannot express refused with a sentence."""
from dataclasses import replace

import numpy as np
import pytest

from pipeline.transforms.colour import Solarize
import torch

pytest.importorskip("kornia", reason="kornia is not installed (pip install -e '.[peers]')")

from conftest import epoch_of  # noqa: E402
from pipeline import build_loader  # noqa: E402
from pipeline.format import load_split  # noqa: E402
from pipeline.parity import statistical_parity  # noqa: E402


def test_contract_and_the_same_seed_gives_the_same_epoch(mini_dir):
    split, _ = load_split(mini_dir, "train")
    x, y, i = epoch_of(build_loader("kornia", mini_dir, "train", 500, return_index=True))
    assert x.dtype == torch.float32 and x.shape == (len(split.labels), 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(i.tolist()) == list(range(len(split.labels)))
    np.testing.assert_array_equal(y.numpy(), split.labels[i.numpy()])

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_loader("kornia", mini_dir, "train", 256, seed=4, normalize=False, return_index=True)
    ea = epoch_of(a)
    assert torch.equal(torch.get_rng_state(), before), "the caller's random state was changed"
    eb = epoch_of(build_loader("kornia", mini_dir, "train", 256, seed=4, normalize=False, return_index=True))
    assert all(torch.equal(u, v) for u, v in zip(ea, eb)) and ea[0].dtype == torch.uint8
    assert not torch.equal(epoch_of(a)[0], ea[0])              # the next epoch differs
    a.set_epoch(0)
    assert torch.equal(epoch_of(a)[0], ea[0])


def test_one_hole_of_the_policys_size(mini_dir, policy):
    """Dropout only, always: every image gets one 16 x 16 box, whole and inside the image, of one grey (kornia
    fills one value: the mean of the policy's fill)."""
    fill = (1.0, 2.0, 3.0)
    only = policy.with_transforms(replace(policy.transforms[2], p=1.0, fill=fill))
    x, _, i = epoch_of(build_loader("kornia", mini_dir, "train", 512, policy=only, normalize=False, return_index=True))
    grey = round(sum(fill) / 3)
    src = torch.from_numpy(np.array(load_split(mini_dir, "train")[0].images))[i].permute(0, 3, 1, 2)
    changed = (x != src).any(1)
    for k in range(0, len(x), 97):
        rows, cols = changed[k].nonzero(as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
        box = (x[k] == grey).all(0)
        assert box.sum() >= 256, k
    assert changed.any((1, 2)).float().mean() > 0.99


def test_probabilities_are_the_policys(mini_dir, policy):
    """Each transform applies with the policy's probability: kornia's epoch leaves as many images unchanged as
    albumentations' (one in eight: each of three transforms skipped), and as many grey ones."""
    checks = {c.name: c for c in statistical_parity("kornia", mini_dir, policy, sampler=False)}
    for name in ("share of images unchanged", "share of grey images"):
        assert checks[name].passed, checks[name].row()


@pytest.mark.parametrize("change, words", [
    (lambda p: p.with_transforms(replace(p.transforms[2], num_holes_range=(2, 4))), "one-hole CoarseDropout"),
    (lambda p: p.with_transforms(replace(p.transforms[1], translate_percent={"x": (-0.1, 0.2), "y": (0, 0)})),
     "symmetric range"),
    (lambda p: p.with_transforms(Solarize()), "no counterpart for Solarize"),
])
def test_what_kornia_cannot_express_is_refused(mini_dir, policy, change, words):
    with pytest.raises(ValueError, match=words):
        build_loader("kornia", mini_dir, "train", 64, policy=change(policy))
