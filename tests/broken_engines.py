"""Deliberately wrong engines, each one plausible mistake: the parity harness must catch every one."""
from dataclasses import replace

import torch

from pipeline import ops as gpu


def replay_flip_vertical(images, params, policy):
    """Flips rows instead of columns."""
    flag = params.flip.view(-1, 1, 1, 1).to(images.device)
    flipped = torch.where(flag, images.flip(1), images)
    return gpu.replay(flipped, replace(params, flip=torch.zeros_like(params.flip)), policy)


def replay_zero_fill(images, params, policy):
    """Fills the hole and the border with 0 instead of the dataset mean."""
    return gpu.replay(images, params, replace(policy, mean=(0.0, 0.0, 0.0)))


def replay_angle_sign(images, params, policy):
    """Rotates the other way (the sign convention of the rotation matrix)."""
    return gpu.replay(images, replace(params, angle=-params.angle), policy)
