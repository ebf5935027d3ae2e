"""CoarseDropout and Erasing: rectangles set to a constant.

albumentations 2.0.8 (dropout/coarse_dropout.py, dropout/functional.py), measured on cifar10-mini:
- CoarseDropout: the number of holes ``randint(num_holes_range)`` (both ends included); each hole's height and width
  whole pixels uniform on their ranges when the height range's top is 1 or more, else ``int(U(range) * side)``; its
  top-left uniform on {0..H-h} x {0..W-w} (never partly outside); holes ``[x1, y1, x2, y2]`` half-open;
- Erasing: one rectangle of area ~ U(scale[0], the largest that fits) x H W and aspect ratio ~ U over the ratios that
  fit that area, sides ``round(sqrt(area / ratio))`` high and ``round(sqrt(area * ratio))`` wide, top-left
  ``randint(0, H - h)``, ``randint(0, W - w)``; none where no area fits;
- the fill is converted with ``np.array(fill, dtype=uint8)``: truncated (125.7 -> 125).

The batched op is a mask of every hole of each sample filled with the truncated fill: exact on every engine (DALI:
``fn.erase`` with (y, x) anchors and (h, w) shapes, 0 for a hole not drawn).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.transforms import (Transform, TransformError, channel_constant, coin, fill_value, fraction_index,
                                 integers, pair, truncated_fill, uniform, whole)


def hole_mask(x: torch.Tensor, params: dict) -> torch.Tensor:
    """(B, 1, H, W) bool: inside one of the sample's holes, where the transform is applied."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    hy, hx = params["hole_y"].view(b, -1, 1, 1), params["hole_x"].view(b, -1, 1, 1)
    hh, hw = params["hole_h"].view(b, -1, 1, 1), params["hole_w"].view(b, -1, 1, 1)
    inside = ((rows >= hy) & (rows < hy + hh) & (cols >= hx) & (cols < hx + hw)).any(1)
    return (inside & params["on"].view(-1, 1, 1)).unsqueeze(1)


def holes_from_albumentations(applied: dict, most: int) -> dict:
    holes = [list(map(int, hole)) for hole in (applied.get("holes") if applied.get("holes") is not None else [])]
    holes += [[0, 0, 0, 0]] * (most - len(holes))
    return {"hole_x": [x1 for x1, _, _, _ in holes], "hole_y": [y1 for _, y1, _, _ in holes],
            "hole_w": [x2 - x1 for x1, _, x2, _ in holes], "hole_h": [y2 - y1 for _, y1, _, y2 in holes]}


class _Holes(Transform):
    def apply(self, x, params, fills):
        value = channel_constant(tuple(float(v) for v in truncated_fill(fills.of(self.fill))), x.device)
        return torch.where(hole_mask(x, params), value, x)

    def dali_params(self, params, size) -> dict:
        on = params["on"].float().view(-1, 1)
        anchor = torch.stack([params["hole_y"], params["hole_x"]], -1).reshape(len(on), -1).float()
        shape = torch.stack([params["hole_h"] * on, params["hole_w"] * on], -1).reshape(len(on), -1).float()
        if anchor.shape[1] == 0:            # no hole can be drawn: one empty region
            anchor = shape = torch.zeros(len(on), 2)
        return {"anchor": anchor, "shape": shape}

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        return fn.erase(x, anchor=params["anchor"], shape=params["shape"], axis_names="HW",
                        fill_value=[float(v) for v in truncated_fill(fills.of(self.fill))])


@dataclass(frozen=True, kw_only=True)
class CoarseDropout(_Holes):
    """albumentations' CoarseDropout (sizes in whole pixels or fractions of the side; fill constant or "mean")."""
    name = "CoarseDropout"
    num_holes_range: object = (1, 2)
    hole_height_range: object = (0.1, 0.2)
    hole_width_range: object = (0.1, 0.2)
    fill: object = 0.0
    p: float = 0.5

    def check(self):
        w = self.name
        lo, hi = pair(self.num_holes_range, f"{w}.num_holes_range")
        holes = (whole(lo, f"{w}.num_holes_range", 0), whole(hi, f"{w}.num_holes_range", 0))
        if holes[1] > 64:
            raise TransformError(f"{w}.num_holes_range = {self.num_holes_range!r}: at most 64 holes.")
        object.__setattr__(self, "num_holes_range", holes)
        sizes = {k: pair(getattr(self, k), f"{w}.{k}") for k in ("hole_height_range", "hole_width_range")}
        if self.in_pixels(sizes["hole_height_range"]):
            if not all(float(v).is_integer() and v >= 1 for r in sizes.values() for v in r):
                raise TransformError(f"{w}: hole_height_range = {sizes['hole_height_range']}, hole_width_range = "
                                     f"{sizes['hole_width_range']}: with a height of 1 or more both ranges are whole "
                                     f"pixels; give fractions below 1 for both, or whole pixels for both.")
            sizes = {k: tuple(int(v) for v in r) for k, r in sizes.items()}
        elif not all(0 < v < 1 for r in sizes.values() for v in r):
            raise TransformError(f"{w}: hole sizes {sizes['hole_height_range']}, {sizes['hole_width_range']} must be "
                                 f"fractions of the side in (0, 1), or whole pixels for both.")
        for k, r in sizes.items():
            object.__setattr__(self, k, r)
        object.__setattr__(self, "fill", fill_value(self.fill, f"{w}.fill"))

    @staticmethod
    def in_pixels(height_range) -> bool:
        """Hole sizes in whole pixels (else fractions of the side): albumentations decides by the height's top."""
        return height_range[1] >= 1

    def out_size(self, size):
        if self.in_pixels(self.hole_height_range) and (self.hole_height_range[1] > size[0] or
                                                       self.hole_width_range[1] > size[1]):
            raise TransformError(f"{self.name}: holes up to {self.hole_height_range[1]}x{self.hole_width_range[1]} do "
                                 f"not fit the {size[0]}x{size[1]} images they are given.")
        return size

    def sample(self, n, size, gen):
        h, w = size
        most = self.num_holes_range[1]
        shape = (n, most)
        if self.in_pixels(self.hole_height_range):
            hh, hw = integers(*self.hole_height_range, shape, gen), integers(*self.hole_width_range, shape, gen)
        else:
            hh = torch.trunc(uniform(*self.hole_height_range, shape, gen) * h).long()
            hw = torch.trunc(uniform(*self.hole_width_range, shape, gen) * w).long()
        count = integers(*self.num_holes_range, (n, 1), gen)
        present = torch.arange(most, device=gen.device).view(1, -1) < count
        hh, hw = hh * present, hw * present
        # top-left uniform on 0..H - h: floor(U * (H - h + 1)), kept below the top should U round up to 1
        hy = torch.minimum(fraction_index(uniform(0, 1, shape, gen), h - hh + 1), h - hh)
        hx = torch.minimum(fraction_index(uniform(0, 1, shape, gen), w - hw + 1), w - hw)
        return {"on": coin(self.p, n, gen), "hole_y": hy, "hole_x": hx, "hole_h": hh, "hole_w": hw}

    def albumentations(self, fills):
        import albumentations as A
        return A.CoarseDropout(num_holes_range=self.num_holes_range, hole_height_range=self.hole_height_range,
                               hole_width_range=self.hole_width_range, fill=fills.of(self.fill), p=self.p,
                               strict=True)

    def params_from_albumentations(self, applied, size):
        return holes_from_albumentations(applied, self.num_holes_range[1])

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "CoarseDropout":
        return cls(num_holes_range=tuple(a["num_holes_range"]), hole_height_range=a["hole_height_range"],
                   hole_width_range=a["hole_width_range"], fill=ctx.fill(a["fill"]), p=a["p"])


@dataclass(frozen=True, kw_only=True)
class Erasing(_Holes):
    """albumentations' Erasing (random erasing, Zhong et al.): one rectangle of a random area and aspect ratio."""
    name = "Erasing"
    scale: object = (0.02, 0.33)
    ratio: object = (0.3, 3.3)
    fill: object = 0.0
    p: float = 0.5

    def check(self):
        w = self.name
        scale, ratio = pair(self.scale, f"{w}.scale"), pair(self.ratio, f"{w}.ratio")
        if not (0 <= scale[0] and scale[1] <= 1 and ratio[0] > 0):
            raise TransformError(f"{w}: scale {self.scale!r} must lie in [0, 1] and ratio {self.ratio!r} be positive.")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "fill", fill_value(self.fill, f"{w}.fill"))

    def sample(self, n, size, gen):
        h, w = size
        total = h * w
        lo, hi = self.ratio
        max_valid = min(total * self.scale[1], lo * h * h, hi * h * h, w * w / lo, w * w / hi)
        min_area = total * self.scale[0]
        area = uniform(min_area, max(max_valid, min_area), n, gen)
        max_r = torch.clamp(w * w / area, max=hi)
        min_r = torch.clamp(area / (h * h), min=lo)
        ratio = uniform(0, 1, n, gen) * (max_r - min_r) + min_r
        drawn = (min_r <= max_r) & (max_valid >= min_area)
        hh = torch.round(torch.sqrt(area / ratio)).long() * drawn
        hw = torch.round(torch.sqrt(area * ratio)).long() * drawn
        hy = fraction_index(uniform(0, 1, n, gen), h - hh + 1)
        hx = fraction_index(uniform(0, 1, n, gen), w - hw + 1)
        return {"on": coin(self.p, n, gen), "hole_y": hy.view(n, 1), "hole_x": hx.view(n, 1),
                "hole_h": hh.view(n, 1), "hole_w": hw.view(n, 1)}

    def albumentations(self, fills):
        import albumentations as A
        return A.Erasing(scale=self.scale, ratio=self.ratio, fill=fills.of(self.fill), p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return holes_from_albumentations(applied, 1)

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "Erasing":
        return cls(scale=a["scale"], ratio=a["ratio"], fill=ctx.fill(a["fill"]), p=a["p"])
