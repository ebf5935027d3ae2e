"""Deliberately wrong engines, each one plausible mistake: the parity harness must catch every one."""
from dataclasses import replace

import torch

from pipeline.engines import gpu
from pipeline.policy import PolicyParams


def _index(policy, name):
    names = [t.name for t in policy.transforms]
    return names.index(name) if name in names else None


def _with(params: PolicyParams, index: int, **changes) -> PolicyParams:
    items = list(params.items)
    items[index] = {**items[index], **changes}
    return PolicyParams(items, len(params))


def replay_flip_vertical(images, params, policy):
    """Flips rows instead of columns (the flip comes first in the project's policy)."""
    k = _index(policy, "HorizontalFlip")
    if k != 0:
        return gpu.replay(images, params, policy)
    flag = params.items[0]["on"].view(-1, 1, 1, 1).to(images.device)
    flipped = torch.where(flag, images.flip(1), images)
    return gpu.replay(flipped, _with(params, 0, on=torch.zeros_like(params.items[0]["on"])), policy)


def replay_zero_fill(images, params, policy):
    """Fills the hole and the border with 0 instead of the dataset mean."""
    return gpu.replay(images, params, replace(policy, mean=(0.0, 0.0, 0.0)))


def replay_angle_sign(images, params, policy):
    """Rotates the other way (the sign convention of the rotation matrix)."""
    k = _index(policy, "Affine")
    if k is None:
        return gpu.replay(images, params, policy)
    return gpu.replay(images, _with(params, k, angle=-params.items[k]["angle"]), policy)
