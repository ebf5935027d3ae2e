"""Per-sample augmentation parameters and albumentations' conventions, shared by every engine that
replays parameters and by the parity harness.

``sample_params`` draws with albumentations 2.x's distributions (measured conventions in
../shared/notes/parity-facts.md):
- flip, shift-scale-rotate and dropout each applied with their own probability;
- angle ~ U(lo, hi) degrees; scale x and y drawn separately from their ranges;
- shifts ``int(U(lo, hi) * size)``: whole pixels, truncated toward 0, x and y separately;
- the number of holes uniform on its range, each hole's height and width uniform on theirs (whole pixels), or
  ``int(U(lo, hi) * size)`` for fractions; each hole's top-left uniform on {0..H-h} x {0..W-w} (never partly
  outside); holes beyond a sample's number have size 0.

``forward_matrix`` is albumentations' Affine matrix M = C(c) T(tx, ty) R S C(-c) with c the pixel
centre (W/2 - 0.5, H/2 - 0.5) and R = [[cos, sin], [-sin, cos]]; OpenCV warps with its inverse.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from pipeline.policy import AugmentPolicy


@dataclass
class Params:
    flip: torch.Tensor      # (n,) bool
    ssr: torch.Tensor       # (n,) bool: shift-scale-rotate applied
    angle: torch.Tensor     # (n,) float32, degrees
    scale_x: torch.Tensor   # (n,) float32
    scale_y: torch.Tensor   # (n,) float32
    shift_x: torch.Tensor   # (n,) int64 pixels
    shift_y: torch.Tensor   # (n,) int64 pixels
    dropout: torch.Tensor   # (n,) bool
    hole_y: torch.Tensor    # (n, max holes) int64, top-left row
    hole_x: torch.Tensor    # (n, max holes) int64, top-left column
    hole_h: torch.Tensor    # (n, max holes) int64 height; 0 for the holes beyond the sample's drawn number
    hole_w: torch.Tensor    # (n, max holes) int64 width; 0 likewise

    def __len__(self) -> int:
        return len(self.flip)

    def to(self, device) -> "Params":
        return Params(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, idx) -> "Params":
        return Params(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).cpu().numpy() for f in fields(self)}


def sample_params(n: int, policy: AugmentPolicy, generator: torch.Generator | None = None,
                  device=None) -> Params:
    """Draw ``n`` samples' parameters on ``device`` (default: the generator's device)."""
    device = torch.device(device or (generator.device if generator is not None else "cpu"))
    size = policy.image_size
    s, d = policy.ssr, policy.dropout

    def u(lo, hi, shape=(n,)):
        return torch.rand(shape, generator=generator, device=device) * (hi - lo) + lo

    def whole(lo, hi, shape):       # uniform on lo..hi
        return torch.randint(lo, hi + 1, shape, generator=generator, device=device)

    flip = torch.rand(n, generator=generator, device=device) < policy.flip.p
    ssr = torch.rand(n, generator=generator, device=device) < s.p
    angle = u(*s.rotate)
    scale_x = u(*s.scale_x)
    scale_y = u(*s.scale_y)
    shift_x = torch.trunc(u(*s.shift_x) * size).long()
    shift_y = torch.trunc(u(*s.shift_y) * size).long()
    dropout = torch.rand(n, generator=generator, device=device) < d.p
    holes = (n, d.max_holes)
    if d.in_pixels:
        hole_h, hole_w = whole(*d.hole_height, holes), whole(*d.hole_width, holes)
    else:
        hole_h = torch.trunc(u(*d.hole_height, holes) * size).long()
        hole_w = torch.trunc(u(*d.hole_width, holes) * size).long()
    count = whole(*d.num_holes, (n, 1))
    present = torch.arange(d.max_holes, device=device).view(1, -1) < count
    hole_h, hole_w = hole_h * present, hole_w * present
    # top-left uniform on 0..size - h: floor(U * (size - h + 1)), kept below the top should U round up to 1
    hole_y = torch.minimum((u(0, 1, holes) * (size - hole_h + 1)).long(), size - hole_h)
    hole_x = torch.minimum((u(0, 1, holes) * (size - hole_w + 1)).long(), size - hole_w)
    return Params(flip, ssr, angle, scale_x, scale_y, shift_x, shift_y, dropout, hole_y, hole_x, hole_h, hole_w)


def forward_matrix(params: Params, size: int = 32) -> torch.Tensor:
    """(n, 3, 3) float64: albumentations' Affine matrix, pixel coordinates, input -> output."""
    n = len(params)
    dev = params.angle.device
    rad = torch.deg2rad(params.angle.double() % 360)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx, sy = params.scale_x.double(), params.scale_y.double()
    a = torch.stack([torch.stack([cos * sx, sin * sy], -1), torch.stack([-sin * sx, cos * sy], -1)], -2)
    c = torch.full((n, 2, 1), size / 2 - 0.5, dtype=torch.float64, device=dev)
    t = torch.stack([params.shift_x, params.shift_y], -1).double().unsqueeze(-1)
    m = torch.zeros(n, 3, 3, dtype=torch.float64, device=dev)
    m[:, :2, :2] = a
    m[:, :2, 2:] = c + t - a @ c
    m[:, 2, 2] = 1
    return m


def grid_sample_theta(params: Params, size: int = 32) -> torch.Tensor:
    """(n, 2, 3) float32 theta for ``affine_grid(..., align_corners=False)`` that samples the input where
    OpenCV's warpAffine with the forward matrix would: N · M^-1 · N^-1, with N the pixel -> normalized map."""
    # inv_ex: linalg.inv would check every matrix for singularity, a read back that makes the host wait for the
    # GPU at each batch; the policy keeps the scales above 0 (scale_limit < 1), so every matrix is invertible
    minv = torch.linalg.inv_ex(forward_matrix(params, size)).inverse
    norm, norm_inv = pixel_to_normalized(size, minv.device)
    return (norm @ minv @ norm_inv)[:, :2].float()


@functools.lru_cache(maxsize=8)
def pixel_to_normalized(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """N and N^-1 (float64, on ``device``), made once per size and device: a new tensor from host values is a
    copy that waits for the GPU to finish its queued work, once per batch if made there."""
    norm = torch.tensor([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]],
                        dtype=torch.float64, device=device)
    return norm, torch.linalg.inv(norm)


def ssr_fill(policy: AugmentPolicy) -> tuple[float, float, float]:
    """The border value of the warp: OpenCV turns the float fill into the image's type first (uint8,
    rounded half-to-even), and interpolates between pixels and that whole value."""
    return tuple(float(v) for v in np.round(np.asarray(policy.ssr_fill, dtype=np.float64)))


def dropout_fill(policy: AugmentPolicy) -> tuple[int, int, int]:
    """The hole value: albumentations converts the fill with ``np.array(fill, dtype=uint8)``, which truncates."""
    return tuple(int(math.trunc(v)) for v in policy.dropout_fill)


def hole_boxes(params: Params) -> list[np.ndarray]:
    """Per sample, its (holes, 4) [x1, y1, x2, y2] half-open, as albumentations' CoarseDropout holds them (the
    holes beyond the sample's drawn number left out)."""
    p = params.numpy()
    boxes = np.stack([p["hole_x"], p["hole_y"], p["hole_x"] + p["hole_w"], p["hole_y"] + p["hole_h"]], -1)
    present = (p["hole_h"] > 0) | (p["hole_w"] > 0)
    return [b[k] for b, k in zip(boxes, present)]
