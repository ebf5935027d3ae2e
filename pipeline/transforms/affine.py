"""Affine, ShiftScaleRotate and Rotate: one warp, bilinear, with a constant border.

albumentations 2.0.8 (geometric/transforms.py, functional.create_affine_transformation_matrix), measured on
cifar10-mini:
- the angle ~ U(rotate) degrees; scales x and y ~ U(scale["x"]), U(scale["y"]) drawn apart (``keep_ratio``: y = x);
  shears ~ U(shear["x"]), U(shear["y"]) degrees, then negated; shifts ``int(U(translate_percent) * side)`` whole
  pixels (truncated toward 0) or ``randint(translate_px)`` (both ends included);
- the forward matrix M = C(c) T(tx, ty) Sh R S C(-c), c = (W/2 - 0.5, H/2 - 0.5), R = [[cos, sin], [-sin, cos]],
  Sh = [[1, tan sx], [tan sy, 1]]; applied as ``cv2.warpAffine(img, M[:2], (W, H), INTER_LINEAR, BORDER_CONSTANT,
  fill)``; the uint8 border fill is rounded half to even, and the identity returns the image untouched;
- ``ShiftScaleRotate(shift_limit, scale_limit, rotate_limit)`` is that Affine with translate_percent = the shift
  limits, scale = 1 + scale_limit (one range for x and y, drawn apart), no shear;
- ``Rotate(limit)`` is that Affine with the angle alone (``crop_border`` is refused).

The batched op: ``affine_grid`` + ``grid_sample`` (bilinear, align_corners=False) with theta = N M^-1 N^-1 (N the
pixel -> normalized map of each axis), sampling ``x - fill`` with zero padding and adding the fill back, rounded to
whole values as OpenCV's uint8 output is: at most 1 grey level from OpenCV 5, on a few values in 10^4.
DALI: ``fn.warp_affine`` with M^-1, its translation moved by ``0.5 - 0.5 * row sum`` (DALI samples at pixel centres),
the per-channel fill made by subtracting it, warping with 0 and adding it back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.transforms import (CV2_BORDERS, CV2_INTERPOLATIONS, Transform, TransformError, channel_constant,
                                 coin, device_constant, fill_value, integers, opencv_fill, pair, uniform, where)


def _xy(value, where: str, symmetric=False, bias=0.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """albumentations' {"x": range, "y": range}, or one range (or number) for both."""
    if isinstance(value, dict):
        return pair(value["x"], f"{where}['x']", symmetric, bias), pair(value["y"], f"{where}['y']", symmetric, bias)
    r = pair(value, where, symmetric, bias)
    return r, r


@dataclass(frozen=True, kw_only=True)
class Affine(Transform):
    """albumentations' Affine: scale, translate (fractions of the side, or pixels), rotate, shear; bilinear, constant
    border (``fill``: pixel values, or "mean"), the output in the same frame."""
    name = "Affine"
    tolerance = (1, 1e-3)       # grey levels, share of values: OpenCV 5's float warp against grid_sample
    scale: object = (1.0, 1.0)              # a range, or {"x": range, "y": range}
    translate_percent: object = None        # a range or {"x", "y"} of fractions of the side; None: translate_px
    translate_px: object = None             # a range or {"x", "y"} of whole pixels
    rotate: object = 0.0                    # degrees
    shear: object = (0.0, 0.0)              # degrees, a range or {"x", "y"}
    keep_ratio: bool = False
    fill: object = 0.0
    p: float = 0.5

    def check(self):
        w = self.name
        set_ = lambda k, v: object.__setattr__(self, k, v)     # noqa: E731
        sx, sy = _xy(self.scale, f"{w}.scale")
        if sx[0] <= 0 or sy[0] <= 0:
            raise TransformError(f"{w}.scale = {self.scale!r} must be positive scales.")
        set_("scale", {"x": sx, "y": sy})
        if self.translate_percent is not None and self.translate_px is not None:
            raise TransformError(f"{w}: give translate_percent or translate_px, not both.")
        if self.translate_px is not None:
            tx, ty = _xy(self.translate_px, f"{w}.translate_px")
            if not all(float(v).is_integer() for v in (*tx, *ty)):
                raise TransformError(f"{w}.translate_px = {self.translate_px!r} must be whole pixels.")
            set_("translate_px", {"x": tuple(int(v) for v in tx), "y": tuple(int(v) for v in ty)})
        else:
            tx, ty = _xy(self.translate_percent if self.translate_percent is not None else 0.0,
                         f"{w}.translate_percent")
            if not all(-1 <= v <= 1 for v in (*tx, *ty)):
                raise TransformError(f"{w}.translate_percent = {self.translate_percent!r} must lie within [-1, 1].")
            set_("translate_percent", {"x": tx, "y": ty})
        rot = pair(self.rotate, f"{w}.rotate", symmetric=False)
        if not -360 <= rot[0] <= rot[1] <= 360:
            raise TransformError(f"{w}.rotate = {self.rotate!r} must lie within [-360, 360] degrees.")
        set_("rotate", rot)
        hx, hy = _xy(self.shear, f"{w}.shear")
        if not all(-89 <= v <= 89 for v in (*hx, *hy)):
            raise TransformError(f"{w}.shear = {self.shear!r} must lie within (-90, 90) degrees.")
        set_("shear", {"x": hx, "y": hy})
        if not isinstance(self.keep_ratio, bool):
            raise TransformError(f"{w}.keep_ratio must be true or false.")
        set_("fill", fill_value(self.fill, f"{w}.fill"))

    # the one warp every engine does -----------------------------------------------------------
    def sample(self, n, size, gen):
        h, w = size
        s, t = self.scale, self.translate_percent
        params = {"on": coin(self.p, n, gen), "angle": uniform(*self.rotate, n, gen)}
        params["scale_x"] = uniform(*s["x"], n, gen)
        params["scale_y"] = params["scale_x"].clone() if self.keep_ratio else uniform(*s["y"], n, gen)
        params["shear_x"] = -uniform(*self.shear["x"], n, gen)
        params["shear_y"] = -uniform(*self.shear["y"], n, gen)
        if self.translate_px is not None:
            params["shift_x"] = integers(*self.translate_px["x"], n, gen)
            params["shift_y"] = integers(*self.translate_px["y"], n, gen)
        else:
            params["shift_x"] = torch.trunc(uniform(*t["x"], n, gen) * w).long()
            params["shift_y"] = torch.trunc(uniform(*t["y"], n, gen) * h).long()
        return params

    def apply(self, x, params, fills):
        b, _, h, w = x.shape
        fill = channel_constant(opencv_fill(fills.of(self.fill)), x.device)
        minv = torch.linalg.inv_ex(forward_matrix(params, (h, w))).inverse     # inv_ex: no check, no host wait
        norm, norm_inv = pixel_to_normalized((h, w), x.device)
        theta = (norm @ minv @ norm_inv)[:, :2].float()
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
        warped = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
        return where(params["on"], warped.round_().clamp_(0, 255), x)

    def dali_params(self, params, size) -> dict:
        """The per-sample inputs of ``dali``: DALI's (n, 2, 3) inverse map, the identity where not applied."""
        forward = forward_matrix(params, size).double()
        forward[~params["on"]] = torch.eye(3, dtype=torch.float64, device=forward.device)
        inv = torch.linalg.inv(forward)[:, :2]
        inv[:, :, 2] += 0.5 - 0.5 * inv[:, :, :2].sum(-1)
        return {"matrix": inv.float()}

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        fill = list(opencv_fill(fills.of(self.fill)))
        xf = fn.crop_mirror_normalize(x, mean=fill, std=[1.0] * 3, dtype=types.FLOAT, output_layout="HWC")
        xf = fn.warp_affine(xf, matrix=params["matrix"], fill_value=0.0, interp_type=types.INTERP_LINEAR,
                            inverse_map=True)
        xf = fn.crop_mirror_normalize(xf, mean=[-v for v in fill], std=[1.0] * 3, dtype=types.FLOAT,
                                      output_layout="HWC")
        return fn.cast(xf, dtype=types.UINT8)        # rounds to nearest, saturates

    # albumentations ----------------------------------------------------------------------------
    def albumentations(self, fills):
        import albumentations as A
        import cv2
        translate = ({"translate_px": self.translate_px} if self.translate_px is not None else
                     {"translate_percent": self.translate_percent})
        return A.Affine(scale=self.scale, **translate, rotate=self.rotate, shear=self.shear,
                        keep_ratio=self.keep_ratio, fit_output=False, rotate_method="largest_box",
                        interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=fills.of(self.fill),
                        p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        h, w = size
        m = torch.tensor(applied["matrix"], dtype=torch.float64)
        angle, sx, sy = float(applied["rotate"]), float(applied["scale"]["x"]), float(applied["scale"]["y"])
        c = torch.tensor([w / 2 - 0.5, h / 2 - 0.5], dtype=torch.float64)
        t = m[:2, 2] - c + m[:2, :2] @ c                # M = C T A C^-1
        rad = math.radians(angle % 360)
        r = torch.tensor([[math.cos(rad), math.sin(rad)], [-math.sin(rad), math.cos(rad)]], dtype=torch.float64)
        shear = m[:2, :2] @ torch.linalg.inv(r @ torch.diag(torch.tensor([sx, sy], dtype=torch.float64)))
        return {"angle": angle, "scale_x": sx, "scale_y": sy, "shift_x": int(round(float(t[0]))),
                "shift_y": int(round(float(t[1]))),     # (the decomposition's float noise rounded off)
                "shear_x": round(math.degrees(math.atan(float(shear[0, 1]))), 9),
                "shear_y": round(math.degrees(math.atan(float(shear[1, 0]))), 9)}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "Affine":
        refuse_warp_options(a, ctx)
        fixed_px = a.get("translate_px")
        translate = {"translate_px": fixed_px} if fixed_px is not None and any(
            tuple(v) != (0, 0) for v in fixed_px.values()) else {"translate_percent": a.get("translate_percent")}
        if a.get("balanced_scale"):
            ctx.refuse("balanced_scale=True", "the engines draw scales uniformly on the range; leave it False")
        return cls(scale=a["scale"], **translate, rotate=a["rotate"], shear=a["shear"],
                   keep_ratio=bool(a.get("keep_ratio")), fill=ctx.fill(a["fill"]), p=a["p"])


def refuse_warp_options(a: dict, ctx) -> None:
    """What no engine's warp reproduces: another interpolation than bilinear, another border than a constant, an
    output frame fitted to the warp."""
    if a.get("fit_output"):
        ctx.refuse("fit_output=True", "the engines warp into the same frame; leave it False")
    if a["interpolation"] != 1:
        ctx.refuse(f"interpolation={a['interpolation']} ({CV2_INTERPOLATIONS.get(a['interpolation'], '?')})",
                   "the engines interpolate bilinearly (cv2.INTER_LINEAR)")
    if a["border_mode"] != 0:
        ctx.refuse(f"border_mode={a['border_mode']} ({CV2_BORDERS.get(a['border_mode'], '?')})",
                   "the engines' warp fills its border with a constant (cv2.BORDER_CONSTANT)")


def forward_matrix(params, size) -> torch.Tensor:
    """(n, 3, 3) float64: albumentations' Affine matrix in pixel coordinates, input -> output."""
    h, w = size
    rad = torch.deg2rad(params["angle"].double() % 360)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx, sy = params["scale_x"].double(), params["scale_y"].double()
    hx, hy = torch.tan(torch.deg2rad(params["shear_x"].double())), torch.tan(torch.deg2rad(params["shear_y"].double()))
    rs = torch.stack([torch.stack([cos * sx, sin * sy], -1), torch.stack([-sin * sx, cos * sy], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones_like(hx), hx], -1), torch.stack([hy, torch.ones_like(hy)], -1)], -2)
    a = shear @ rs
    n = len(rad)
    c = image_centre(size, rad.device).expand(n, 2, 1)
    t = torch.stack([params["shift_x"], params["shift_y"]], -1).double().unsqueeze(-1)
    m = torch.zeros(n, 3, 3, dtype=torch.float64, device=rad.device)
    m[:, :2, :2] = a
    m[:, :2, 2:] = c + t - a @ c
    m[:, 2, 2] = 1
    return m


@device_constant
def image_centre(size, device: torch.device) -> torch.Tensor:
    """(2, 1) float64 on ``device``: the centre (x, y) of an (h, w) image in pixel coordinates, the warp's pivot."""
    h, w = size
    return torch.tensor([[w / 2 - 0.5], [h / 2 - 0.5]], dtype=torch.float64, device=device)


@device_constant
def pixel_to_normalized(size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """N and N^-1 (float64, on ``device``) for (h, w)."""
    h, w = size
    norm = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64, device=device)
    return norm, torch.linalg.inv(norm)


@dataclass(frozen=True, kw_only=True)
class ShiftScaleRotate(Affine):
    """albumentations' ShiftScaleRotate, which is an Affine (see the module docstring); held with its own arguments,
    built as the Affine it stands for (warning-free)."""
    name = "ShiftScaleRotate"
    shift_limit_x: object = (-0.0625, 0.0625)
    shift_limit_y: object = (-0.0625, 0.0625)
    scale_limit: object = (-0.1, 0.1)
    rotate_limit: object = (-45.0, 45.0)
    p: float = 0.5

    def check(self):
        w = self.name
        set_ = lambda k, v: object.__setattr__(self, k, v)     # noqa: E731
        set_("shift_limit_x", pair(self.shift_limit_x, f"{w}.shift_limit_x", symmetric=True))
        set_("shift_limit_y", pair(self.shift_limit_y, f"{w}.shift_limit_y", symmetric=True))
        set_("scale_limit", pair(self.scale_limit, f"{w}.scale_limit", symmetric=True))
        set_("rotate_limit", pair(self.rotate_limit, f"{w}.rotate_limit", symmetric=True))
        set_("scale", tuple(1 + v for v in self.scale_limit))
        set_("translate_percent", {"x": self.shift_limit_x, "y": self.shift_limit_y})
        set_("translate_px", None)
        set_("rotate", self.rotate_limit)
        set_("shear", (0.0, 0.0))
        set_("keep_ratio", False)
        super().check()

    def to_dict(self):
        return {"name": self.name, "shift_limit_x": list(self.shift_limit_x), "shift_limit_y": list(self.shift_limit_y),
                "scale_limit": list(self.scale_limit), "rotate_limit": list(self.rotate_limit),
                "fill": self.fill if self.fill == "mean" else list(self.fill), "p": self.p}

    @property
    def applied_name(self) -> str:
        return "Affine"             # built as the Affine it stands for

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "ShiftScaleRotate":
        refuse_warp_options(a, ctx)
        return cls(shift_limit_x=a["shift_limit_x"], shift_limit_y=a["shift_limit_y"],
                   scale_limit=tuple(round(v - 1, 12) for v in a["scale_limit"]), rotate_limit=a["rotate_limit"],
                   fill=ctx.fill(a["fill"]), p=a["p"])


@dataclass(frozen=True, kw_only=True)
class Rotate(Affine):
    """albumentations' Rotate: the angle ~ U(limit), about the centre, in the same frame (see the module docstring)."""
    name = "Rotate"
    limit: object = (-90.0, 90.0)
    p: float = 0.5

    def check(self):
        object.__setattr__(self, "limit", pair(self.limit, f"{self.name}.limit", symmetric=True))
        for k, v in (("scale", (1.0, 1.0)), ("translate_percent", (0.0, 0.0)), ("translate_px", None),
                     ("rotate", self.limit), ("shear", (0.0, 0.0)), ("keep_ratio", False)):
            object.__setattr__(self, k, v)
        super().check()

    def to_dict(self):
        return {"name": self.name, "limit": list(self.limit), "fill": self.fill if self.fill == "mean" else
                list(self.fill), "p": self.p}

    def albumentations(self, fills):
        import albumentations as A
        import cv2
        return A.Rotate(limit=self.limit, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT,
                        crop_border=False, fill=fills.of(self.fill), p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        h, w = size
        m = torch.tensor(applied["matrix"], dtype=torch.float64)
        angle = math.degrees(math.atan2(float(m[0, 1]), float(m[0, 0])))
        return {"angle": angle, "scale_x": 1.0, "scale_y": 1.0, "shift_x": 0, "shift_y": 0, "shear_x": 0.0,
                "shear_y": 0.0}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "Rotate":
        refuse_warp_options(a, ctx)
        if a.get("crop_border"):
            ctx.refuse("crop_border=True", "the engines rotate in the same frame, without cropping; leave it False")
        return cls(limit=a["limit"], fill=ctx.fill(a["fill"]), p=a["p"])
