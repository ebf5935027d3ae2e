"""The policy as plain data: an ordered list of transforms, its JSON round trip (version 2, version 1 still read),
its checks, each a sentence."""
import dataclasses
import json

import numpy as np
import pytest

from pipeline.format import read_meta
from pipeline.policy import KINDS, AugmentPolicy, transform_from_dict
from pipeline.transforms.affine import Affine, ShiftScaleRotate
from pipeline.transforms.colour import RandomBrightnessContrast, ToGray
from pipeline.transforms.crops import PadIfNeeded, RandomCrop
from pipeline.transforms.erasing import CoarseDropout
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip
from pipeline.transforms.one_of import OneOf

STATS = {"mean": (1, 2, 3), "std": (4, 5, 6)}


def test_defaults_are_the_project_policy(mini_dir):
    meta = read_meta(mini_dir)
    p = AugmentPolicy.from_meta(meta)
    assert p.mean == tuple(meta["mean"]) and p.std == tuple(meta["std"])
    flip, ssr, drop = p.transforms
    assert flip == HorizontalFlip(p=0.5)
    assert (ssr.p, ssr.translate_percent, ssr.scale, ssr.rotate, ssr.shear, ssr.fill) == \
        (0.5, {"x": (-0.1, 0.1), "y": (-0.1, 0.1)}, {"x": (0.9, 1.1), "y": (0.9, 1.1)}, (-15.0, 15.0),
         {"x": (0.0, 0.0), "y": (0.0, 0.0)}, "mean")
    assert (drop.p, drop.num_holes_range, drop.hole_height_range, drop.hole_width_range, drop.fill) == \
        (0.5, (1, 1), (16, 16), (16, 16), "mean")


CLASSIC = (PadIfNeeded(min_height=40, min_width=40, border_mode="reflect_101"), RandomCrop(height=32, width=32),
           HorizontalFlip(p=0.5), VerticalFlip(p=0.2),
           ShiftScaleRotate(shift_limit_x=(0, 0.2), scale_limit=0.1, rotate_limit=15, fill=(1, 2, 3), p=0.5),
           RandomBrightnessContrast(p=0.5), ToGray(p=0.1),
           OneOf(transforms=(CoarseDropout(num_holes_range=(2, 4), hole_height_range=(4, 12), hole_width_range=(4, 8),
                                           fill="mean"), HorizontalFlip(p=0.3)), p=0.7))


def test_json_round_trip_of_any_list_of_transforms():
    p = AugmentPolicy(**STATS, transforms=CLASSIC)
    text = p.to_json()
    d = json.loads(text)
    assert d["format_version"] == 2 and [t["name"] for t in d["transforms"]][:3] == \
        ["PadIfNeeded", "RandomCrop", "HorizontalFlip"]
    q = AugmentPolicy.from_json(text)
    assert q == p and hash(q) == hash(p)
    assert AugmentPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert AugmentPolicy(**STATS, transforms=CLASSIC * 2).transforms[8] == CLASSIC[0]     # twice, in any order


def test_every_transform_kind_round_trips_alone():
    for name, kind in KINDS.items():
        t = kind(transforms=(ToGray(),)) if kind is OneOf else kind()
        assert transform_from_dict(json.loads(json.dumps(t.to_dict()))) == t, name


def test_the_version_1_form_still_reads_as_the_same_three_transforms():
    """Checkpoints and released weights hold the policy as earlier versions wrote it."""
    old = {"mean": [1, 2, 3], "std": [1, 1, 1], "flip": {"p": 0.5},
           "ssr": {"p": 0.5, "shift_limit": 0.1, "scale_limit": 0.1, "rotate_limit": 15.0,
                   "interpolation": "bilinear", "border": "constant"},
           "dropout": {"p": 0.5, "num_holes": 1, "hole_height": 16, "hole_width": 16}, "image_size": 32}
    assert AugmentPolicy.from_dict(old) == AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1))
    newer = {"mean": [1, 2, 3], "std": [1, 1, 1], "flip": {"p": 0.25},
             "ssr": {"p": 0.4, "shift_x": [0, 0.2], "shift_y": [-0.1, 0.1], "scale_x": [0.9, 1.1],
                     "scale_y": [1, 1.2], "rotate": [-10, 30], "fill": [1, 2, 3]},
             "dropout": {"p": 0.7, "num_holes": [2, 3], "hole_height": [4, 8], "hole_width": [5, 6], "fill": "mean"}}
    flip, ssr, drop = AugmentPolicy.from_dict(newer).transforms
    assert flip.p == 0.25 and ssr.translate_percent == {"x": (0.0, 0.2), "y": (-0.1, 0.1)}
    assert ssr.scale == {"x": (0.9, 1.1), "y": (1.0, 1.2)} and ssr.fill == (1, 2, 3)
    assert (drop.num_holes_range, drop.hole_height_range, drop.fill) == ((2, 3), (4, 8), "mean")


def test_frozen_and_validated():
    p = AugmentPolicy(**STATS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mean = (0, 0, 0)
    with pytest.raises(ValueError, match=r"HorizontalFlip.p = 1.5 must lie in \[0, 1\]"):
        HorizontalFlip(p=1.5)
    with pytest.raises(ValueError, match="holes up to 40x16 do not fit the 32x32 images"):
        AugmentPolicy(**STATS, transforms=(CoarseDropout(hole_height_range=(8, 40), hole_width_range=(8, 16)),))
    with pytest.raises(ValueError, match="positive"):
        AugmentPolicy(mean=(1, 2, 3), std=(0, 1, 1))
    with pytest.raises(ValueError, match="unknown transform 'Flip'"):
        AugmentPolicy.from_dict({**STATS, "format_version": 2, "transforms": [{"name": "Flip"}]})
    with pytest.raises(ValueError, match="HorizontalFlip: .*prob"):
        AugmentPolicy.from_dict({**STATS, "format_version": 2, "transforms": [{"name": "HorizontalFlip", "prob": 1}]})
    with pytest.raises(ValueError, match="'mean' or a constant in 0..255"):
        CoarseDropout(fill="random")
    with pytest.raises(ValueError, match="the low end is above the high end"):
        Affine(translate_percent=(0.2, -0.2))
    with pytest.raises(ValueError, match="format_version 3"):
        AugmentPolicy.from_dict({**STATS, "format_version": 3, "transforms": []})


def test_the_sizes_along_the_pipeline_must_come_back_to_the_images():
    with pytest.raises(ValueError, match="turns 32x32 images into 40x40 ones"):
        AugmentPolicy(**STATS, transforms=(PadIfNeeded(min_height=40, min_width=40),))
    with pytest.raises(ValueError, match="larger than the 32x32 images"):
        AugmentPolicy(**STATS, transforms=(RandomCrop(height=40, width=40),))
    with pytest.raises(ValueError, match="changes the image size.*set p=1"):
        AugmentPolicy(**STATS, transforms=(PadIfNeeded(min_height=40, min_width=40, p=0.5),
                                           RandomCrop(height=32, width=32)))
    assert AugmentPolicy(**STATS, transforms=CLASSIC[:2]).sizes() == [(32, 32), (40, 40), (32, 32)]


def test_without_augmentation():
    assert AugmentPolicy(**STATS).without_augmentation().transforms == ()


def test_a_policy_without_stats_takes_the_datas():
    p = AugmentPolicy(mean=None, std=None, transforms=CLASSIC)
    assert p.for_data({"mean": [1, 2, 3], "std": [4, 5, 6]}) == AugmentPolicy(**STATS, transforms=CLASSIC)
    with pytest.raises(ValueError, match="no mean and std of its own"):
        p.to_albumentations()
    with pytest.raises(ValueError, match="both, or neither"):
        AugmentPolicy(mean=(1, 2, 3), std=None)


@pytest.mark.parametrize("index,key,value,fragment", [
    (0, "p", True, "HorizontalFlip.p must be a finite number, not True"),
    (1, "p", "0.5", "Affine.p must be a finite number"),
    (2, "p", float("nan"), "CoarseDropout.p must be a finite number"),
    (2, "p", 1.5, "CoarseDropout.p = 1.5 must lie in [0, 1]"),
    (1, "rotate", [True, 5], "Affine.rotate must be a finite number"),
    (2, "fill", ["1", "2", "3"], "CoarseDropout.fill must be 'mean' or a constant"),
    (2, "num_holes_range", [1.5, 2], "whole number"),
    (None, "image_size", True, "image_size must be a whole number"),
    (None, "mean", ["125", 1, 2], "mean must be a finite number"),
])
def test_policy_values_are_typed_like_the_command_line(index, key, value, fragment):
    d = json.loads(AugmentPolicy(**STATS).to_json())
    (d if index is None else d["transforms"][index])[key] = value
    with pytest.raises(ValueError) as e:
        AugmentPolicy.from_dict(d)
    assert fragment in str(e.value)


def test_a_policy_for_other_image_sizes_is_refused_where_the_loader_is_built(tiny_dir):
    from pipeline import available_loaders, build_loader
    big = AugmentPolicy(**STATS, image_size=64,
                        transforms=(CoarseDropout(hole_height_range=(48, 48), hole_width_range=(48, 48)),))
    for name in available_loaders():
        with pytest.raises(ValueError, match="made for 64x64 images, but .* holds 32x32 ones"):
            build_loader(name, tiny_dir, "train", 64, policy=big)


@pytest.mark.parametrize("seed", [-1, 1 << 63, 2.5, True, "3"])
def test_a_seed_no_generator_takes_is_a_sentence(tiny_dir, seed):
    from pipeline import build_loader
    with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 9223372036854775807"):
        build_loader("gpu", tiny_dir, "train", 64, seed=seed)


def test_albumentations_is_seeded_so_that_its_transforms_draw_independently():
    """albumentations 2.0.8 hands a Compose's seed to every transform, so two flips of p 0.5 flip together on every
    image; seed_albumentations gives each transform a seed of its own (the torch engine and the parity reference)."""
    import albumentations as A
    from pipeline.policy import seed_albumentations

    def both_rate(seed_it):
        compose = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], save_applied_params=True)
        seed_it(compose)
        image = np.zeros((4, 4, 3), np.uint8)
        names = [{n for n, _ in compose(image=image)["applied_transforms"]} for _ in range(2000)]
        return np.mean([{"HorizontalFlip", "VerticalFlip"} <= n for n in names])
    assert both_rate(lambda c: c.set_random_seed(3)) > 0.45          # albumentations' own: the same draws
    assert abs(both_rate(lambda c: seed_albumentations(c, 3)) - 0.25) < 0.04    # 2,000 draws: sd 0.01


def test_seeding_reaches_every_transform_of_any_policy():
    """OneOf's children are seeded too; a transform whose own attribute is called transforms (ColorJitter's
    functions) is not taken for a composition."""
    from pipeline.policy import seed_albumentations
    from pipeline.transforms.colour import ColorJitter
    from pipeline.transforms.flips import VerticalFlip
    from pipeline.transforms.one_of import OneOf
    policy = AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1)).with_transforms(
        ColorJitter(p=0.5), OneOf(transforms=(VerticalFlip(p=1), ColorJitter(p=1)), p=0.5))
    compose = policy.to_albumentations()
    seed_albumentations(compose, 5)
    seeds = [compose.transforms[0].seed, compose.transforms[1].seed, *(c.seed for c in compose.transforms[1].transforms)]
    assert len(set(seeds)) == 4 and 5 not in seeds
