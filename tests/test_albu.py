"""The albumentations reference built from the policy."""
import warnings

import albumentations as A
import numpy as np
import pytest

from pipeline.albu import build_compose
from pipeline.format import load_split
from pipeline.policy import AugmentPolicy


@pytest.fixture(scope="module")
def images(mini_dir):
    split, _ = load_split(mini_dir, "train")
    return np.asarray(split.images[:400])


def test_building_the_reference_emits_no_warning(policy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose = build_compose(policy, seed=0)
    names = [type(t).__name__ for t in compose.transforms]
    assert names == ["HorizontalFlip", "Affine", "CoarseDropout"]


def test_old_keywords_fail_loudly_instead_of_being_ignored():
    # what albumentations 2.x does with 1.x keywords by default: a warning, and defaults apply
    with pytest.warns(UserWarning, match="max_holes"):
        A.CoarseDropout(max_holes=1, max_height=16, max_width=16)
    # what the reference does: strict=True, so the same mistake is an error
    with pytest.raises(ValueError, match="max_holes"):
        A.CoarseDropout(max_holes=1, strict=True)


def test_affine_equals_shift_scale_rotate_pixel_for_pixel(policy, images):
    with pytest.warns(UserWarning, match="special case of Affine"):
        legacy = build_compose(policy, seed=123, legacy_ssr=True)
    ours = build_compose(policy, seed=123)
    changed = 0
    for img in images:
        a, b = legacy(image=img)["image"], ours(image=img)["image"]
        np.testing.assert_array_equal(a, b)
        changed += not np.array_equal(a, img)
    assert changed > len(images) // 2   # the transforms did run


def test_fills_are_the_dataset_mean(policy, images):
    # a hole on a black image is the (truncated) mean; a big rotation border is the (rounded) mean
    compose = build_compose(AugmentPolicy(mean=policy.mean, std=policy.std,
                                          flip=type(policy.flip)(p=0.0),
                                          ssr=type(policy.ssr)(p=0.0)), seed=0)
    out = None
    for _ in range(20):
        out = compose(image=np.zeros((32, 32, 3), np.uint8))["image"]
        if out.any():
            break
    hole = out.reshape(-1, 3)[out.reshape(-1, 3).any(1)]
    assert len(hole) == 256
    np.testing.assert_array_equal(np.unique(hole, axis=0)[0], np.trunc(policy.mean).astype(np.uint8))
