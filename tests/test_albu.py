"""The albumentations reference built from the policy (``AugmentPolicy.to_albumentations``)."""
import warnings

import albumentations as A
import numpy as np
import pytest

from pipeline.format import load_split
from pipeline.transforms.affine import ShiftScaleRotate
from pipeline.transforms.erasing import CoarseDropout


@pytest.fixture(scope="module")
def images(mini_dir):
    split, _ = load_split(mini_dir, "train")
    return np.asarray(split.images[:400])


def test_building_the_reference_emits_no_warning(policy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose = policy.to_albumentations()
    names = [type(t).__name__ for t in compose.transforms]
    assert names == ["HorizontalFlip", "Affine", "CoarseDropout", "Normalize"]


def test_old_keywords_fail_loudly_instead_of_being_ignored():
    # what albumentations 2.x does with 1.x keywords by default: a warning, and defaults apply
    with pytest.warns(UserWarning, match="max_holes"):
        A.CoarseDropout(max_holes=1, max_height=16, max_width=16)
    # what the reference does: strict=True, so the same mistake is an error
    with pytest.raises(ValueError, match="max_holes"):
        A.CoarseDropout(max_holes=1, strict=True)


def test_shift_scale_rotate_is_built_as_the_affine_it_is_pixel_for_pixel(policy, images):
    ssr = ShiftScaleRotate(shift_limit_x=(-0.1, 0.1), shift_limit_y=(-0.05, 0.1), scale_limit=0.1, rotate_limit=20,
                           fill=(10, 20, 30), p=0.7)
    with pytest.warns(UserWarning, match="special case of Affine"):
        legacy = A.Compose([A.ShiftScaleRotate(shift_limit_x=(-0.1, 0.1), shift_limit_y=(-0.05, 0.1),
                                               scale_limit=0.1, rotate_limit=20, border_mode=0, fill=(10, 20, 30),
                                               p=0.7)], seed=123)
    ours = policy.with_transforms(ssr).to_albumentations(with_normalize=False)
    assert [type(t).__name__ for t in ours.transforms] == ["Affine"]
    ours.set_random_seed(123)
    changed = 0
    for img in images:
        a, b = legacy(image=img)["image"], ours(image=img)["image"]
        np.testing.assert_array_equal(a, b)
        changed += not np.array_equal(a, img)
    assert changed > len(images) // 2   # the transform did run


def test_fills_are_the_dataset_mean(policy):
    # a hole on a black image is the (truncated) mean
    hole_only = policy.with_transforms(CoarseDropout(num_holes_range=(1, 1), hole_height_range=(16, 16),
                                                     hole_width_range=(16, 16), fill="mean", p=1.0))
    out = hole_only.to_albumentations(with_normalize=False)(image=np.zeros((32, 32, 3), np.uint8))["image"]
    hole = out.reshape(-1, 3)[out.reshape(-1, 3).any(1)]
    assert len(hole) == 256
    np.testing.assert_array_equal(np.unique(hole, axis=0)[0], np.trunc(policy.mean).astype(np.uint8))
