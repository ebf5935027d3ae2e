import dataclasses
import json

import pytest

from pipeline.format import read_meta
from pipeline.policy import AugmentPolicy, CoarseDropout, ShiftScaleRotate


def test_defaults_are_the_project_policy(mini_dir):
    p = AugmentPolicy.from_meta(read_meta(mini_dir))
    assert p.mean == tuple(read_meta(mini_dir)["mean"]) and p.std == tuple(read_meta(mini_dir)["std"])
    assert p.flip.p == 0.5
    s = p.ssr
    assert (s.p, s.shift_x, s.shift_y, s.scale_x, s.scale_y, s.rotate) == \
        (0.5, (-0.1, 0.1), (-0.1, 0.1), (0.9, 1.1), (0.9, 1.1), (-15.0, 15.0))
    assert (s.interpolation, s.border, s.fill) == ("bilinear", "constant", "mean")
    d = p.dropout
    assert (d.p, d.num_holes, d.hole_height, d.hole_width, d.fill) == (0.5, (1, 1), (16, 16), (16, 16), "mean")
    assert p.ssr_fill == p.mean and p.dropout_fill == p.mean


def test_json_round_trip():
    p = AugmentPolicy(mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7),
                      ssr=ShiftScaleRotate(p=0.7, rotate=(-10, 20), shift_y=(0, 0.2), fill=0),
                      dropout=CoarseDropout(num_holes=(2, 4), hole_height=(4, 12), hole_width=(4, 8), fill=(1, 2, 3)))
    text = p.to_json()
    assert json.loads(text)["ssr"]["rotate"] == [-10.0, 20.0] and json.loads(text)["ssr"]["fill"] == [0.0] * 3
    q = AugmentPolicy.from_json(text)
    assert q == p and hash(q) == hash(p)
    assert AugmentPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    fractions = CoarseDropout(hole_height=(0.1, 0.2), hole_width=(0.1, 0.3))
    assert not fractions.in_pixels and AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), dropout=fractions).dropout == fractions


def test_the_symmetric_form_of_earlier_versions_still_reads():
    """Checkpoints and released weights hold the policy as earlier versions wrote it."""
    old = {"mean": [1, 2, 3], "std": [1, 1, 1], "flip": {"p": 0.5},
           "ssr": {"p": 0.5, "shift_limit": 0.1, "scale_limit": 0.1, "rotate_limit": 15.0,
                   "interpolation": "bilinear", "border": "constant"},
           "dropout": {"p": 0.5, "num_holes": 1, "hole_height": 16, "hole_width": 16}, "image_size": 32}
    assert AugmentPolicy.from_dict(old) == AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1))


def test_frozen_and_validated():
    p = AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mean = (0, 0, 0)
    with pytest.raises(ValueError, match="must lie in"):
        AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), ssr=ShiftScaleRotate(p=1.5))
    with pytest.raises(ValueError, match="within 1..32"):
        AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), dropout=CoarseDropout(hole_height=(8, 40)))
    with pytest.raises(ValueError, match="positive"):
        AugmentPolicy(mean=(1, 2, 3), std=(0, 1, 1))
    with pytest.raises(ValueError, match="not an augmentation policy"):
        AugmentPolicy.from_dict({"mean": [1, 2, 3], "std": [1, 1, 1], "flip": {"prob": 0.5}})
    with pytest.raises(ValueError, match="'mean' or a constant in 0..255"):
        CoarseDropout(fill="random")
    with pytest.raises(ValueError, match="a range within"):
        AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), ssr=ShiftScaleRotate(shift_x=(0.2, -0.2)))
    with pytest.raises(ValueError, match="a .low, high. pair"):
        ShiftScaleRotate(rotate=15)


def test_without_augmentation():
    p = AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1)).without_augmentation()
    assert (p.flip.p, p.ssr.p, p.dropout.p) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("field,value,fragment", [
    (("flip", "p"), True, "flip.p must be a finite number, not True"),
    (("ssr", "p"), "0.5", "ssr.p must be a finite number"),
    (("dropout", "p"), float("nan"), "dropout.p must be a finite number"),
    (("dropout", "p"), 1.5, "dropout.p = 1.5 must lie in [0, 1]"),
    (("ssr", "rotate"), [True, 5], "ssr.rotate must be a finite number"),
    (("ssr", "shift_x"), ["-0.1", "0.1"], "ssr.shift_x must be a finite number"),
    (("dropout", "fill"), ["1", "2", "3"], "dropout.fill must be 'mean' or a constant"),
    (("dropout", "num_holes"), [1.5, 2], "whole numbers"),
    (("image_size",), True, "image_size must be a whole number"),
    (("mean",), ["125", 1, 2], "mean must be a finite number"),
])
def test_policy_values_are_typed_like_the_command_line(field, value, fragment):
    d = json.loads(AugmentPolicy(mean=(1, 2, 3), std=(4, 5, 6)).to_json())
    target = d
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    with pytest.raises(ValueError) as e:
        AugmentPolicy.from_dict(d)
    assert fragment in str(e.value)


def test_a_policy_for_other_image_sizes_is_refused_where_the_loader_is_built(tiny_dir):
    from pipeline import available_loaders, build_loader
    big = AugmentPolicy(mean=(1, 2, 3), std=(4, 5, 6), image_size=64,
                        dropout=CoarseDropout(hole_height=(48, 48), hole_width=(48, 48)))
    for name in available_loaders():
        with pytest.raises(ValueError, match="made for 64x64 images, but .* holds 32x32 ones"):
            build_loader(name, tiny_dir, "train", 64, policy=big)


@pytest.mark.parametrize("seed", [-1, 1 << 63, 2.5, True, "3"])
def test_a_seed_no_generator_takes_is_a_sentence(tiny_dir, seed):
    from pipeline import build_loader
    with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 9223372036854775807"):
        build_loader("gpu", tiny_dir, "train", 64, seed=seed)
