"""The policy as batched PyTorch ops: ``apply(images, params, policy)``, deterministic given the
per-sample parameters of ``pipeline.params``. Shared by the engines that augment with torch on the
device (``gpu``, and ``ffcv`` after ``ToDevice``):

- flip: ``torch.where`` between the batch and its mirror;
- shift-scale-rotate: one batched ``affine_grid`` + ``grid_sample`` (bilinear, align_corners=False)
  whose theta reproduces albumentations' matrix; the border is the per-channel fill, by sampling
  ``x - fill`` with zero padding and adding the fill back, then rounding as OpenCV does;
- dropout: a mask of the holes (each of its own size), filled with the (truncated) fill;
all in float32, channels-last, whole pixel values out.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pipeline.params import Params, dropout_fill, grid_sample_theta, ssr_fill
from pipeline.policy import AugmentPolicy


@functools.lru_cache(maxsize=16)
def channel_constant(values: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) float32 on ``device``, made once per value and device: a tensor made from host values at
    each batch is a copy that makes the host wait for the GPU's queued work (callers must not modify it)."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def apply(images: torch.Tensor, params: Params, policy: AugmentPolicy) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) channels-last holding whole pixel values 0..255."""
    b, h, w, _ = images.shape
    dev = images.device
    x = images.permute(0, 3, 1, 2).float()      # channels-last view of the NHWC batch
    x = torch.where(params.flip.view(-1, 1, 1, 1), x.flip(3), x)

    fill = channel_constant(ssr_fill(policy), dev)
    theta = grid_sample_theta(params, h)
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    warped = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    warped = warped.round_().clamp_(0, 255)
    x = torch.where(params.ssr.view(-1, 1, 1, 1), warped, x)

    rows = torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w)
    hy, hx = params.hole_y.view(b, -1, 1, 1), params.hole_x.view(b, -1, 1, 1)
    hh, hw = params.hole_h.view(b, -1, 1, 1), params.hole_w.view(b, -1, 1, 1)
    inside = ((rows >= hy) & (rows < hy + hh) & (cols >= hx) & (cols < hx + hw)).any(1)
    hole = (inside & params.dropout.view(-1, 1, 1)).unsqueeze(1)
    hole_value = channel_constant(tuple(float(v) for v in dropout_fill(policy)), dev)
    x = torch.where(hole, hole_value, x)
    return x.contiguous(memory_format=torch.channels_last)


def replay(images: torch.Tensor, params: Params, policy: AugmentPolicy) -> torch.Tensor:
    """For the parity harness: uint8 (B, H, W, 3) in, uint8 (B, H, W, 3) out."""
    return apply(images, params.to(images.device), policy).to(torch.uint8).permute(0, 2, 3, 1)
