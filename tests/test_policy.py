import dataclasses
import json

import pytest

from pipeline.format import read_meta
from pipeline.policy import AugmentPolicy, CoarseDropout, ShiftScaleRotate


def test_defaults_are_the_project_policy(mini_dir):
    p = AugmentPolicy.from_meta(read_meta(mini_dir))
    assert p.mean == tuple(read_meta(mini_dir)["mean"]) and p.std == tuple(read_meta(mini_dir)["std"])
    assert p.flip.p == 0.5
    assert (p.ssr.p, p.ssr.shift_limit, p.ssr.scale_limit, p.ssr.rotate_limit) == (0.5, 0.1, 0.1, 15.0)
    assert (p.ssr.interpolation, p.ssr.border) == ("bilinear", "constant")
    assert (p.dropout.p, p.dropout.num_holes, p.dropout.hole_height, p.dropout.hole_width) == (0.5, 1, 16, 16)
    assert p.fill == p.mean


def test_json_round_trip():
    p = AugmentPolicy(mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7),
                      ssr=ShiftScaleRotate(p=0.7, rotate_limit=10), dropout=CoarseDropout(hole_height=8))
    text = p.to_json()
    assert json.loads(text)["ssr"]["rotate_limit"] == 10
    q = AugmentPolicy.from_json(text)
    assert q == p and hash(q) == hash(p)
    assert AugmentPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_frozen_and_validated():
    p = AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mean = (0, 0, 0)
    with pytest.raises(ValueError, match="must lie in"):
        AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), ssr=ShiftScaleRotate(p=1.5))
    with pytest.raises(ValueError, match="fit"):
        AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1), dropout=CoarseDropout(hole_height=40))
    with pytest.raises(ValueError, match="positive"):
        AugmentPolicy(mean=(1, 2, 3), std=(0, 1, 1))
    with pytest.raises(ValueError, match="not an augmentation policy"):
        AugmentPolicy.from_dict({"mean": [1, 2, 3], "std": [1, 1, 1], "flip": {"prob": 0.5}})


def test_without_augmentation():
    p = AugmentPolicy(mean=(1, 2, 3), std=(1, 1, 1)).without_augmentation()
    assert (p.flip.p, p.ssr.p, p.dropout.p) == (0.0, 0.0, 0.0)
