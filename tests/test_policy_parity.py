"""Every engine honours every field of a non-default policy: pixel parity by replay and statistical parity against
albumentations, for a strong shift-scale-rotate, 2-4 holes of 4-12 pixels filled with 0, and flip only."""
from dataclasses import replace

import numpy as np
import pytest

from pipeline import available_loaders
from pipeline.format import load_split
from pipeline.parity import replay_parity, statistical_parity
from pipeline.policy import AugmentPolicy, CoarseDropout, ShiftScaleRotate

POLICIES = {
    "ssr-30-0.2-0.2-p1": lambda p: replace(p, ssr=ShiftScaleRotate(p=1.0, rotate=(-30, 30), shift_x=(-0.2, 0.2),
                                                                  shift_y=(-0.2, 0.2), scale_x=(0.8, 1.2),
                                                                  scale_y=(0.8, 1.2))),
    "holes-2-4-of-4-12-fill-0": lambda p: replace(p, dropout=CoarseDropout(p=0.5, num_holes=(2, 4), hole_height=(4, 12),
                                                                           hole_width=(4, 12), fill=0)),
    "flip-only": lambda p: replace(p, ssr=ShiftScaleRotate(p=0.0), dropout=CoarseDropout(p=0.0)),
}
# the gpu engine in the default suite; the others (tens of seconds each) with the slow cases
ENGINES = [pytest.param("gpu"), *(pytest.param(e, marks=pytest.mark.slow) for e in ("torch", "dali", "ffcv"))]


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_passes_parity_on_a_non_default_policy(mini_dir, engine, name):
    if engine not in available_loaders():
        pytest.skip(f"{engine} is not installed here")
    split, meta = load_split(mini_dir, "train")
    policy = POLICIES[name](AugmentPolicy.from_meta(meta))
    checks, _ = replay_parity(engine, np.asarray(split.images[:500]), policy, seed=3)
    checks += statistical_parity(engine, mini_dir, policy, seed=4)
    failed = [c.row() for c in checks if not c.passed]
    assert len(checks) >= 8 and not failed, "\n".join(failed)
