"""Colour: RandomBrightnessContrast, ColorJitter, HueSaturationValue, ToGray and Solarize.

albumentations 2.0.8 (pixel/transforms.py, pixel/functional.py, albucore), measured on cifar10-mini; each works on
uint8 images and returns uint8 (so each op below ends in whole values):
- RandomBrightnessContrast: alpha = 1 + U(contrast_limit), beta = U(brightness_limit) x 255 (``brightness_by_max``)
  or x the image's mean; the image becomes ``trunc(clip(x * alpha + beta, 0, 255))`` (a float32 look-up table);
- ToGray (``weighted_average``): OpenCV 5's RGB2GRAY in fixed point, (9798 R + 19235 G + 3735 B + 16384) >> 15, in
  each of the three channels;
- Solarize: threshold ~ U(threshold_range); a value v >= threshold x 255 becomes 255 - v;
- HueSaturationValue: shifts ~ U(limits) in OpenCV's uint8 HSV (H in 0..179): H' = trunc((H + dh) mod 180),
  S' = clip(S + trunc(ds)) and V' = clip(V + trunc(dv)) (albucore's add_constant truncates the shift; a grey pixel
  keeps S = 0), through OpenCV's fixed-point RGB2HSV and float HSV2RGB (truncated in its vector blocks of a row,
  rounded in the rest: ``opencv_row_blocks``);
- ColorJitter: brightness, contrast, saturation ~ U(ranges) and hue ~ U(hue), applied in an order drawn as a
  permutation: brightness ``trunc(clip(x * b))``; contrast ``trunc(clip(x * c + m (1 - c)))`` with m the mean of the
  grey image; saturation ``round(clip(x * s + grey (1 - s)))`` (cv2.addWeighted); hue H' = trunc((H + 180 h) mod
  180) through HSV as above.

The batched ops compute the same in float32/float64 on the device; OpenCV's HSV round trip is reproduced step by
step, down to the fused multiply-adds its compiler makes of HSV2RGB's vector code and the truncation there (measured
exact on 1,000 cifar10-mini images for both transforms, and on random rows of 16 to 100 pixels; ColorJitter, whose
steps chain four roundings, within 2 levels on 0.0005% of values with another seed).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pipeline.transforms import Transform, TransformError, coin, device_constant, pair, uniform, where


def _trunc_clip(y: torch.Tensor) -> torch.Tensor:
    return y.clamp_(0, 255).trunc_()


def gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): OpenCV 5's uint8 RGB2GRAY, (9798 R + 19235 G + 3735 B + 16384) >> 15 (measured equal on 2
    million random pixels; OpenCV 4's 14-bit weights differ on 0.27% of them), exact in float32."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 9798 + g * 19235 + b * 3735 + 16384) / 32768)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean((1, 2, 3)).view(-1, 1, 1, 1)


@dataclass(frozen=True, kw_only=True)
class RandomBrightnessContrast(Transform):
    """albumentations' RandomBrightnessContrast (see the module docstring)."""
    name = "RandomBrightnessContrast"
    brightness_limit: object = (-0.2, 0.2)
    contrast_limit: object = (-0.2, 0.2)
    brightness_by_max: bool = True
    p: float = 0.5

    def check(self):
        for k in ("brightness_limit", "contrast_limit"):
            object.__setattr__(self, k, pair(getattr(self, k), f"{self.name}.{k}", symmetric=True))
        if not isinstance(self.brightness_by_max, bool):
            raise TransformError(f"{self.name}.brightness_by_max must be true or false.")

    def sample(self, n, size, gen):
        params = {"on": coin(self.p, n, gen), "alpha": 1.0 + uniform(*self.contrast_limit, n, gen),
                  "beta": uniform(*self.brightness_limit, n, gen)}
        if self.brightness_by_max:          # albumentations' applied beta: beta x 255 (else x each image's mean)
            params["beta_scaled"] = params["beta"] * 255
        return params

    def apply(self, x, params, fills):
        alpha = params["alpha"].view(-1, 1, 1, 1)
        if self.brightness_by_max:          # python floats meet a float32 table: float32 arithmetic
            y = x * alpha.float() + params["beta_scaled"].view(-1, 1, 1, 1).float()
        else:                               # np.mean is a float64: the table is computed in float64
            beta = params["beta_scaled"].view(-1, 1, 1, 1) if "beta_scaled" in params else \
                params["beta"].view(-1, 1, 1, 1) * _mean(x)     # (replayed: albumentations' own product)
            y = (x.double() * alpha + beta).float()
        return where(params["on"], _trunc_clip(y), x)

    def dali_params(self, params, size):
        return {"alpha": params["alpha"].float(), "beta": params["beta_scaled"].float(), "on": params["on"]}

    def dali_refusal(self, size):
        if not self.brightness_by_max:
            return "brightness_by_max=False scales by each image's mean, which its DALI expression does not take"
        return None

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        on = fn.cast(params["on"], dtype=types.FLOAT)
        alpha = params["alpha"] * on + (1.0 - on)
        beta = params["beta"] * on
        y = fn.cast(x, dtype=types.FLOAT) * alpha + beta
        return fn.cast(dmath.floor(dmath.clamp(y, 0.0, 255.0)), dtype=types.UINT8)

    def albumentations(self, fills):
        import albumentations as A
        return A.RandomBrightnessContrast(brightness_limit=self.brightness_limit, contrast_limit=self.contrast_limit,
                                          brightness_by_max=self.brightness_by_max, p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return {"alpha": applied["alpha"], "beta_scaled": applied["beta"]}     # beta x 255, or x the image's mean

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "RandomBrightnessContrast":
        if a.get("ensure_safe_range"):
            ctx.refuse("ensure_safe_range=True", "the engines draw alpha and beta as given; leave it False")
        return cls(brightness_limit=a["brightness_limit"], contrast_limit=a["contrast_limit"],
                   brightness_by_max=a["brightness_by_max"], p=a["p"])


@dataclass(frozen=True, kw_only=True)
class ToGray(Transform):
    """albumentations' ToGray, weighted_average, three channels out."""
    name = "ToGray"
    p: float = 0.5

    def apply(self, x, params, fills):
        return where(params["on"], gray(x).expand_as(x), x)

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        xf = fn.cast(x, dtype=types.FLOAT)
        y = dmath.floor((xf[:, :, 0] * 9798.0 + xf[:, :, 1] * 19235.0 + xf[:, :, 2] * 3735.0 + 16384.0) / 32768.0)
        on = fn.cast(params["on"], dtype=types.FLOAT)
        grey = fn.stack(y, y, y, axis=2)
        return fn.cast(grey * on + xf * (1.0 - on), dtype=types.UINT8)

    def albumentations(self, fills):
        import albumentations as A
        return A.ToGray(num_output_channels=3, method="weighted_average", p=self.p, strict=True)

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "ToGray":
        if a.get("num_output_channels", 3) != 3:
            ctx.refuse(f"num_output_channels={a['num_output_channels']}", "the engines give three channels")
        if a.get("method", "weighted_average") != "weighted_average":
            ctx.refuse(f"method={a['method']!r}", "the engines reproduce 'weighted_average' (OpenCV's RGB2GRAY)")
        return cls(p=a["p"])


@dataclass(frozen=True, kw_only=True)
class Solarize(Transform):
    """albumentations' Solarize: values at or above threshold x 255 inverted."""
    name = "Solarize"
    threshold_range: object = (0.5, 0.5)
    p: float = 0.5

    def check(self):
        r = pair(self.threshold_range, f"{self.name}.threshold_range")
        if not 0 <= r[0] and r[1] <= 1:
            raise TransformError(f"{self.name}.threshold_range = {self.threshold_range!r} must lie in [0, 1].")
        object.__setattr__(self, "threshold_range", r)

    def sample(self, n, size, gen):
        return {"on": coin(self.p, n, gen), "threshold": uniform(*self.threshold_range, n, gen)}

    def apply(self, x, params, fills):
        limit = (params["threshold"] * 255).view(-1, 1, 1, 1)
        return where(params["on"], torch.where(x.double() >= limit, 255 - x, x), x)

    def dali_params(self, params, size):
        # where it does not apply, a limit above every value: nothing is inverted
        return {"limit": torch.where(params["on"], params["threshold"] * 255, torch.full_like(params["threshold"], 256))}

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        xf = fn.cast(x, dtype=types.FLOAT)
        inverted = fn.cast(xf >= params["limit"], dtype=types.FLOAT)
        return fn.cast(xf + inverted * (255.0 - 2.0 * xf), dtype=types.UINT8)

    def albumentations(self, fills):
        import albumentations as A
        return A.Solarize(threshold_range=self.threshold_range, p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return {"threshold": applied["threshold"]}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "Solarize":
        return cls(threshold_range=a["threshold_range"], p=a["p"])


# ---------------------------------------------------------------------------------------------
# OpenCV's uint8 HSV, step by step
# ---------------------------------------------------------------------------------------------

_SHIFT = 12


@device_constant
def _tables(device):
    i = torch.arange(256, dtype=torch.float64, device=device)
    sdiv = torch.where(i > 0, torch.round((255 << _SHIFT) / i.clamp(min=1)), torch.zeros_like(i))
    hdiv = torch.where(i > 0, torch.round((180 << _SHIFT) / (6 * i.clamp(min=1))), torch.zeros_like(i))
    return sdiv.long(), hdiv.long()


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's RGB2HSV for uint8 (H in 0..179), from whole pixel values; int64 (B, 1, H, W) each."""
    sdiv, hdiv = _tables(x.device)
    r, g, b = (x[:, k:k + 1].long() for k in range(3))
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    s = (diff * sdiv[v] + half) >> _SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff] + half) >> _SHIFT
    h = torch.where(h < 0, h + 180, h)
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """OpenCV's HSV2RGB for uint8: float32 from H (0..179), S and V / 255, back to whole values. OpenCV converts a
    row's pixels in blocks of its vector width and truncates them there, and rounds the pixels left over at the row's
    end (``opencv_row_blocks``): 32-pixel rows are all blocks on x86 and ARM."""
    rgb = _hsv_to_rgb_255(h, s, v)
    width = rgb.shape[-1]
    in_blocks = torch.arange(width, device=rgb.device) < width // opencv_row_blocks() * opencv_row_blocks()
    return torch.where(in_blocks, torch.trunc(rgb), torch.round(rgb)).clamp_(0, 255)


def _hsv_to_rgb_255(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float32 R, G, B x 255 of OpenCV's float HSV2RGB, before it makes them whole."""
    hf = h.float() * (6.0 / 180.0)
    sf, vf = s.float() * (1.0 / 255.0), v.float() * (1.0 / 255.0)
    hf = torch.where(hf >= 6, hf - 6, hf)
    sector = torch.floor(hf)
    frac = hf - sector
    sector = sector.long().clamp(0, 5)
    tab = torch.stack([vf, vf * (1 - sf), vf * _one_minus_fused(sf, frac), vf * _one_minus_fused(sf, 1 - frac)])
    pick = _sector_order(h.device)[sector.squeeze(1)]     # (B, H, W, 3): b, g, r rows of the table
    out = torch.gather(tab.squeeze(2).permute(1, 2, 3, 0), 3, pick)    # b, g, r
    rgb = out.flip(-1).permute(0, 3, 1, 2)
    return torch.where(s == 0, vf.expand_as(rgb), rgb) * 255


@device_constant
def _sector_order(device):
    """(6, 3): for each sector of the hue circle, the rows of HSV2RGB's table that give b, g and r."""
    return torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]], device=device)


def _one_minus_fused(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 1 - a b rounded once, as the fused multiply-add OpenCV's compiler makes of its vector code: the
    product of two float32 is exact in float64."""
    return (1 - a.double() * b.double()).float()


@functools.lru_cache(maxsize=None)
def opencv_row_blocks() -> int:
    """The pixels of a row OpenCV's uint8 HSV2RGB converts per vector block on this machine (32 with AVX2, 16 with
    SSE or NEON; a huge number where it has no vector path), read from OpenCV itself: it truncates within its blocks
    and rounds the rest of a row (its scalar path's saturate_cast), on 127-pixel rows whose values tell the two
    apart (a column is truncated where truncation agrees with more of its values than rounding)."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    hsv = np.stack([rng.integers(0, 180, (64, 127)), rng.integers(1, 256, (64, 127)), rng.integers(0, 256, (64, 127))],
                   -1).astype(np.uint8)
    got = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    t = torch.from_numpy(hsv.astype(np.int64)).permute(2, 0, 1)[None]
    rgb = _hsv_to_rgb_255(t[:, 0:1], t[:, 1:2], t[:, 2:3])[0].permute(1, 2, 0)
    agree = lambda y: (y.numpy() == got).mean(axis=(0, 2))        # noqa: E731  (per column)
    truncated = agree(torch.trunc(rgb)) > agree(torch.round(rgb))
    leading = int(np.argmin(truncated)) if not truncated.all() else 127
    return next((b for b in (64, 32, 16, 8, 4) if 127 // b * b == leading), 1 << 30)


def shift_hsv(x, dh, ds, dv) -> torch.Tensor:
    """albumentations' shift_hsv for uint8 with per-sample (B, 1, 1, 1) shifts (None: no shift)."""
    h, s, v = rgb_to_hsv(x)
    if dh is not None:
        h = torch.remainder(h.double() + dh, 180).long()
    if ds is not None:      # albucore's add_constant on uint8: the shift truncated to a whole number first
        grey = s == 0
        s = torch.where(grey, s, (s + torch.trunc(ds).long()).clamp(0, 255))
    if dv is not None:
        v = (v + torch.trunc(dv).long()).clamp(0, 255)
    return hsv_to_rgb(h, s, v)


@dataclass(frozen=True, kw_only=True)
class HueSaturationValue(Transform):
    """albumentations' HueSaturationValue (see the module docstring)."""
    name = "HueSaturationValue"
    hue_shift_limit: object = (-20.0, 20.0)
    sat_shift_limit: object = (-30.0, 30.0)
    val_shift_limit: object = (-20.0, 20.0)
    p: float = 0.5

    def check(self):
        for k in ("hue_shift_limit", "sat_shift_limit", "val_shift_limit"):
            object.__setattr__(self, k, pair(getattr(self, k), f"{self.name}.{k}", symmetric=True))

    def sample(self, n, size, gen):
        return {"on": coin(self.p, n, gen), "hue_shift": uniform(*self.hue_shift_limit, n, gen),
                "sat_shift": uniform(*self.sat_shift_limit, n, gen),
                "val_shift": uniform(*self.val_shift_limit, n, gen)}

    def apply(self, x, params, fills):
        view = lambda k: params[k].view(-1, 1, 1, 1)           # noqa: E731
        y = shift_hsv(x, view("hue_shift"), view("sat_shift"), view("val_shift"))
        unchanged = (params["hue_shift"] == 0) & (params["sat_shift"] == 0) & (params["val_shift"] == 0)
        return where(params["on"] & ~unchanged, y, x)

    def albumentations(self, fills):
        import albumentations as A
        return A.HueSaturationValue(hue_shift_limit=self.hue_shift_limit, sat_shift_limit=self.sat_shift_limit,
                                    val_shift_limit=self.val_shift_limit, p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return {k: applied[k] for k in ("hue_shift", "sat_shift", "val_shift")}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "HueSaturationValue":
        return cls(hue_shift_limit=a["hue_shift_limit"], sat_shift_limit=a["sat_shift_limit"],
                   val_shift_limit=a["val_shift_limit"], p=a["p"])


def _factor_range(value, where: str, around_one: bool):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        return (max(0.0, 1 - v), 1 + v) if around_one else (-v, v)
    return pair(value, where)


@dataclass(frozen=True, kw_only=True)
class ColorJitter(Transform):
    """albumentations' ColorJitter (torchvision's, on uint8 as albumentations computes it: see the module
    docstring)."""
    # measured: exact on 1,000 cifar10-mini images with one seed; with another, 3 pixels of one image in 600 off by
    # up to 2 levels (a rounding tie in one of its four steps, which a contrast step after it doubles)
    tolerance = (2, 1e-4)
    name = "ColorJitter"
    brightness: object = (0.8, 1.2)
    contrast: object = (0.8, 1.2)
    saturation: object = (0.8, 1.2)
    hue: object = (-0.5, 0.5)
    p: float = 0.5

    def check(self):
        for k in ("brightness", "contrast", "saturation"):
            r = _factor_range(getattr(self, k), f"{self.name}.{k}", around_one=True)
            if r[0] < 0:
                raise TransformError(f"{self.name}.{k} = {getattr(self, k)!r} must not be negative.")
            object.__setattr__(self, k, r)
        hue = _factor_range(self.hue, f"{self.name}.hue", around_one=False)
        if not -0.5 <= hue[0] and hue[1] <= 0.5:
            raise TransformError(f"{self.name}.hue = {self.hue!r} must lie within [-0.5, 0.5].")
        object.__setattr__(self, "hue", hue)

    def sample(self, n, size, gen):
        order = torch.argsort(torch.rand((n, 4), generator=gen, device=gen.device), dim=1)   # a permutation each
        return {"on": coin(self.p, n, gen), "brightness": uniform(*self.brightness, n, gen),
                "contrast": uniform(*self.contrast, n, gen), "saturation": uniform(*self.saturation, n, gen),
                "hue": uniform(*self.hue, n, gen), "order": order}

    def apply(self, x, params, fills):
        view = lambda k: params[k].view(-1, 1, 1, 1)           # noqa: E731
        y = x
        for step in range(4):
            which = params["order"][:, step]
            for k, op in enumerate((self._brightness, self._contrast, self._saturation, self._hue)):
                y = where(which == k, op(y, view(("brightness", "contrast", "saturation", "hue")[k])), y)
        return where(params["on"], y, x)

    @staticmethod
    def _brightness(x, f):
        return torch.where(f == 1, x, _trunc_clip(x * f.float()))

    @staticmethod
    def _contrast(x, f):
        m = gray(x).double().mean((1, 2, 3)).view(-1, 1, 1, 1)
        return torch.where(f == 1, x, _trunc_clip((x.double() * f + m * (1 - f)).float()))

    @staticmethod
    def _saturation(x, f):
        grey = gray(x)
        return torch.where(f == 1, x, torch.round((x.double() * f + grey.double() * (1 - f)).float()).clamp_(0, 255))

    @staticmethod
    def _hue(x, f):
        return torch.where(f == 0, x, shift_hsv(x, 180 * f, None, None))

    def albumentations(self, fills):
        import albumentations as A
        return A.ColorJitter(brightness=self.brightness, contrast=self.contrast, saturation=self.saturation,
                             hue=self.hue, p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return {k: applied[k] for k in ("brightness", "contrast", "saturation", "hue")} | {
            "order": list(applied["order"])}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "ColorJitter":
        return cls(brightness=a["brightness"], contrast=a["contrast"], saturation=a["saturation"], hue=a["hue"],
                   p=a["p"])
