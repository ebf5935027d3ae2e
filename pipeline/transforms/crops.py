"""PadIfNeeded, RandomCrop, CenterCrop and RandomResizedCrop: the transforms that move the frame.

albumentations 2.0.8 (geometric/pad.py, crops/transforms.py, crops/functional.py), measured on cifar10-mini:
- padding to ``min_height`` splits the missing rows ``int(missing / 2.0)`` above, the rest below (``pad_height_divisor``:
  ``total // 2`` above); ``position="random"`` draws the rows above uniformly on 0..missing (both included), the
  corners put all of it on one side; the border is OpenCV's: constant (the fill rounded to whole values), replicate
  (aaa|abc), reflect (cba|abc), reflect_101 (cb|abc) or wrap (bc|abc), for pads of any size;
- a random crop of h x w starts at row ``int((H - h + 1) * U)`` and column ``int((W - w + 1) * U)``, U ~ U(0, 1);
  with ``pad_if_needed`` an image smaller than the crop is padded first, as PadIfNeeded to (h, w) at
  ``pad_position``; a centre crop starts at ``(H - h) // 2``;
- RandomResizedCrop tries ten times an area ~ U(scale) x H W and an aspect ratio exp(U(log ratio)), sides
  ``round(sqrt(area * ratio))`` wide and ``round(sqrt(area / ratio))`` high, placed as a random crop; the first that
  fits is kept, else a central crop of the ratio's nearest end; the crop is resized with ``cv2.resize``
  (INTER_LINEAR: source = (dst + 0.5) * in / out - 0.5, clamped to the crop).

The batched ops gather: each output pixel reads one source pixel (pads and crops are exact on every engine), or, for
the resize, four (bilinear, separable; OpenCV computes with 11-bit fixed-point weights: within 1 grey level).
A transform that changes the size must apply to every image (``p`` = 1): a batch holds images of one size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.transforms import (CV2_BORDERS, CV2_INTERPOLATIONS, Transform, TransformError, channel_constant,
                                 coin, fill_value, fraction_index, integers, opencv_fill, pair, uniform, where,
                                 whole)

BORDERS = ("constant", "replicate", "reflect", "reflect_101", "wrap")
POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right", "random")


def border_index(i: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """The source index OpenCV's border mode reads for index ``i`` of a side of ``n`` (constant: clamped; the caller
    masks what lies outside)."""
    if border in ("constant", "replicate"):
        return i.clamp(0, n - 1)
    if border == "wrap":
        return i.remainder(n)
    if border == "reflect":
        m = i.remainder(2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    if n == 1:                      # reflect_101 of a single pixel
        return torch.zeros_like(i)
    m = i.remainder(2 * n - 2)
    return torch.where(m < n, m, 2 * n - 2 - m)


def pad_gather(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, out: tuple[int, int], border: str,
               fill) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, out_h, out_w): the image placed at (top, left) (per sample) in a frame of ``out``, the
    rest from the border mode (``fill``: three whole pixel values for "constant")."""
    b, c, h, w = x.shape
    oh, ow = out
    rows = torch.arange(oh, device=x.device).view(1, oh) - top.view(b, 1)        # source row of each output row
    cols = torch.arange(ow, device=x.device).view(1, ow) - left.view(b, 1)
    src = border_index(rows, h, border).view(b, oh, 1) * w + border_index(cols, w, border).view(b, 1, ow)
    y = x.flatten(2).gather(2, src.view(b, 1, -1).expand(b, c, -1)).view(b, c, oh, ow)
    if border == "constant":
        inside = ((rows >= 0) & (rows < h)).view(b, 1, oh, 1) & ((cols >= 0) & (cols < w)).view(b, 1, 1, ow)
        y = torch.where(inside, y, channel_constant(tuple(fill), x.device))
    return y


def crop_gather(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> the (out_h, out_w) window at (top, left) of each sample (inside the image)."""
    b, c, h, w = x.shape
    oh, ow = out
    rows = top.view(b, 1) + torch.arange(oh, device=x.device).view(1, oh)
    cols = left.view(b, 1) + torch.arange(ow, device=x.device).view(1, ow)
    src = rows.view(b, oh, 1) * w + cols.view(b, 1, ow)
    return x.flatten(2).gather(2, src.view(b, 1, -1).expand(b, c, -1)).view(b, c, oh, ow)


def dali_border(x, n: int, m: int, axis: str, border: str):
    """DALI: ``x`` with ``m`` < ``n`` pixels of OpenCV's ``border`` on both ends of ``axis`` ("H" or "W", of length
    ``n``), from slices of the image: reflect_101 cb|abc|ba, reflect ba|ab..., replicate aa|a, wrap bc|abc|ab."""
    import nvidia.dali.fn as fn
    if m == 0:
        return x

    def part(start, length, flip):
        y = fn.slice(x, start=[start], shape=[length], axis_names=axis)
        if flip:
            y = fn.flip(y, horizontal=int(axis == "W"), vertical=int(axis == "H"))
        return y
    if border == "reflect_101":
        before, after = part(1, m, True), part(n - 1 - m, m, True)
    elif border == "reflect":
        before, after = part(0, m, True), part(n - m, m, True)
    elif border == "wrap":
        before, after = part(n - m, m, False), part(0, m, False)
    else:                               # replicate
        before, after = fn.cat(*[part(0, 1, False)] * m, axis_name=axis), fn.cat(*[part(n - 1, 1, False)] * m,
                                                                                   axis_name=axis)
    return fn.cat(before, x, after, axis_name=axis)


# the corners that put the whole pad after the image, on each axis (the other corners put it before)
_PAD_AFTER = {"rows": ("bottom_left", "bottom_right"), "columns": ("top_right", "bottom_right")}


def split_padding(missing: int, position: str, n: int, gen, axis: str) -> torch.Tensor:
    """The pad before the image, per sample, of ``missing`` rows or columns (``axis``) in all, as albumentations
    places it."""
    if position == "random":
        return integers(0, missing, n, gen)
    before = int(missing / 2.0) if position == "center" else missing if position in _PAD_AFTER[axis] else 0
    return torch.full((n,), before, dtype=torch.long, device=gen.device)


def check_border(t, border_mode):
    border = CV2_BORDERS.get(border_mode, border_mode) if isinstance(border_mode, int) else border_mode
    if border not in BORDERS:
        raise TransformError(f"{t.name}.border_mode = {border_mode!r}: the engines pad with one of "
                             f"{', '.join(BORDERS)} (cv2.BORDER_CONSTANT, _REPLICATE, _REFLECT, _REFLECT_101, _WRAP).")
    return border


def needs_every_image(t) -> None:
    if t.p != 1.0:
        raise TransformError(f"{t.name}(p={t.p}) changes the image size, which would leave images of two sizes in one "
                             f"batch: the engines apply size-changing transforms to every image: set p=1.")


def cv2_border(border: str) -> int:
    return {v: k for k, v in CV2_BORDERS.items()}[border]


@dataclass(frozen=True, kw_only=True)
class PadIfNeeded(Transform):
    """albumentations' PadIfNeeded: pads to at least min_height x min_width (or to multiples of the divisors)."""
    name = "PadIfNeeded"
    min_height: object = 1024
    min_width: object = 1024
    pad_height_divisor: object = None
    pad_width_divisor: object = None
    position: str = "center"
    border_mode: object = "constant"
    fill: object = 0.0
    p: float = 1.0

    def check(self):
        w = self.name
        for k in ("min_height", "min_width", "pad_height_divisor", "pad_width_divisor"):
            v = getattr(self, k)
            if v is not None:
                object.__setattr__(self, k, whole(v, f"{w}.{k}", low=1))
        if (self.min_height is None) == (self.pad_height_divisor is None) or \
                (self.min_width is None) == (self.pad_width_divisor is None):
            raise TransformError(f"{w}: give min_height or pad_height_divisor (and min_width or pad_width_divisor), "
                                 f"one of each.")
        if self.position not in POSITIONS:
            raise TransformError(f"{w}.position = {self.position!r} must be one of {', '.join(POSITIONS)}.")
        object.__setattr__(self, "border_mode", check_border(self, self.border_mode))
        object.__setattr__(self, "fill", fill_value(self.fill, f"{w}.fill"))

    def _missing(self, size) -> tuple[int, int]:
        def one(n, least, divisor):
            if least is not None:
                return max(least - n, 0)
            return (divisor - n % divisor) % divisor
        return one(size[0], self.min_height, self.pad_height_divisor), one(size[1], self.min_width,
                                                                             self.pad_width_divisor)

    def out_size(self, size):
        mh, mw = self._missing(size)
        if (mh or mw) and self.p != 1.0:
            needs_every_image(self)
        return size[0] + mh, size[1] + mw

    def sample(self, n, size, gen):
        mh, mw = self._missing(size)
        top = split_padding(mh, self.position, n, gen, "rows")
        left = split_padding(mw, self.position, n, gen, "columns")
        return {"on": coin(self.p, n, gen), "pad_top": top, "pad_left": left}

    def apply(self, x, params, fills):
        out = self.out_size(tuple(x.shape[2:]))
        if out == tuple(x.shape[2:]):
            return x
        return pad_gather(x, params["pad_top"], params["pad_left"], out, self.border_mode,
                          opencv_fill(fills.of(self.fill)))

    def dali_params(self, params, size):
        mh, mw = self._missing(size)
        n = len(params["pad_top"])
        # where the padded image's window starts: in the image's own frame (a constant border, read out of bounds),
        # or in the frame padded by the whole missing amount on every side (the other borders)
        frame = (0, 0) if self.border_mode == "constant" else (mh, mw)
        return {"pad_anchor": torch.stack([frame[0] - params["pad_top"], frame[1] - params["pad_left"]], -1).float(),
                "pad_shape": torch.tensor([size[0] + mh, size[1] + mw], dtype=torch.float32).expand(n, 2)}

    def dali_refusal(self, size):
        mh, mw = self._missing(size)
        if self.border_mode != "constant" and (mh >= size[0] or mw >= size[1]):
            return (f"DALI pads with a {self.border_mode} border by less than the image's side, not by {mh} rows "
                    f"and {mw} columns of a {size[0]}x{size[1]} image")
        return None

    def dali(self, x, params, fills, size):
        """A constant border: DALI's slice of a window larger than the image, padded with the fill; the other
        borders: a frame padded on every side, built from slices of the image (flipped where the border reflects),
        cut to each sample's window."""
        import nvidia.dali.fn as fn
        if self.out_size(size) == tuple(size):
            return x
        if self.border_mode == "constant":
            return fn.slice(x, params["pad_anchor"], params["pad_shape"], axis_names="HW",
                            normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="pad", fill_values=list(opencv_fill(fills.of(self.fill))))
        mh, mw = self._missing(size)
        frame = dali_border(dali_border(x, size[1], mw, "W", self.border_mode), size[0], mh, "H", self.border_mode)
        return fn.slice(frame, params["pad_anchor"], params["pad_shape"], axis_names="HW",
                        normalized_anchor=False, normalized_shape=False)

    def albumentations(self, fills):
        import albumentations as A
        return A.PadIfNeeded(min_height=self.min_height, min_width=self.min_width,
                             pad_height_divisor=self.pad_height_divisor, pad_width_divisor=self.pad_width_divisor,
                             position=self.position, border_mode=cv2_border(self.border_mode),
                             fill=fills.of(self.fill), p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        return {"pad_top": applied["pad_top"], "pad_left": applied["pad_left"]}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "PadIfNeeded":
        return cls(min_height=a["min_height"], min_width=a["min_width"], pad_height_divisor=a["pad_height_divisor"],
                   pad_width_divisor=a["pad_width_divisor"], position=a["position"], border_mode=a["border_mode"],
                   fill=ctx.fill(a["fill"]), p=a["p"])


@dataclass(frozen=True, kw_only=True)
class RandomCrop(Transform):
    """albumentations' RandomCrop: a height x width window at a random place (padded first, with pad_if_needed)."""
    name = "RandomCrop"
    height: object = 32
    width: object = 32
    pad_if_needed: bool = False
    pad_position: str = "center"
    border_mode: object = "constant"
    fill: object = 0.0
    p: float = 1.0

    def check(self):
        w = self.name
        object.__setattr__(self, "height", whole(self.height, f"{w}.height", low=1))
        object.__setattr__(self, "width", whole(self.width, f"{w}.width", low=1))
        if not isinstance(self.pad_if_needed, bool):
            raise TransformError(f"{w}.pad_if_needed must be true or false.")
        if self.pad_position not in POSITIONS:
            raise TransformError(f"{w}.pad_position = {self.pad_position!r} must be one of {', '.join(POSITIONS)}.")
        object.__setattr__(self, "border_mode", check_border(self, self.border_mode))
        object.__setattr__(self, "fill", fill_value(self.fill, f"{w}.fill"))

    def _padding(self) -> PadIfNeeded:
        return PadIfNeeded(min_height=self.height, min_width=self.width, position=self.pad_position,
                           border_mode=self.border_mode, fill=self.fill, p=1.0)

    def out_size(self, size):
        if not self.pad_if_needed and (self.height > size[0] or self.width > size[1]):
            raise TransformError(f"{self.name}({self.height}, {self.width}) is larger than the {size[0]}x{size[1]} "
                                 f"images it is given: pass pad_if_needed=True, or a smaller crop.")
        out = (self.height, self.width)
        if out != tuple(size) and self.p != 1.0:
            needs_every_image(self)
        return out

    def _starts(self, n, size, gen):
        """(top, left) of each crop in the (padded) image of ``size``."""
        top = fraction_index(uniform(0, 1, n, gen), size[0] - self.height + 1)
        left = fraction_index(uniform(0, 1, n, gen), size[1] - self.width + 1)
        return top, left

    def sample(self, n, size, gen):
        params = {}
        if self.pad_if_needed:
            pad = self._padding()
            params.update({k: v for k, v in pad.sample(n, size, gen).items() if k != "on"})
            size = pad.out_size(size)
        params["on"] = coin(self.p, n, gen)
        params["crop_top"], params["crop_left"] = self._starts(n, size, gen)
        return params

    def apply(self, x, params, fills):
        if self.pad_if_needed:
            x = self._padding().apply(x, params, fills)
        y = crop_gather(x, params["crop_top"], params["crop_left"], (self.height, self.width))
        if y.shape == x.shape:
            return where(params["on"], y, x)
        return y

    def dali_params(self, params, size):
        out = {}
        if self.pad_if_needed:
            out = self._padding().dali_params(params, size)
        n = len(params["crop_top"])
        out["crop_anchor"] = torch.stack([params["crop_top"], params["crop_left"]], -1).float()
        out["crop_shape"] = torch.tensor([self.height, self.width], dtype=torch.float32).expand(n, 2)
        return out

    def dali_refusal(self, size):
        return self._padding().dali_refusal(size) if self.pad_if_needed else None

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        if self.pad_if_needed:
            x = self._padding().dali(x, params, fills, size)
        return fn.slice(x, params["crop_anchor"], params["crop_shape"], axis_names="HW",
                        normalized_anchor=False, normalized_shape=False)

    def albumentations(self, fills):
        import albumentations as A
        return A.RandomCrop(height=self.height, width=self.width, pad_if_needed=self.pad_if_needed,
                            pad_position=self.pad_position, border_mode=cv2_border(self.border_mode),
                            fill=fills.of(self.fill), p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        x1, y1, _, _ = applied["crop_coords"]
        out = {"crop_top": y1, "crop_left": x1}
        if self.pad_if_needed:
            pad = applied.get("pad_params") or {"pad_top": 0, "pad_left": 0}
            out.update(pad_top=pad["pad_top"], pad_left=pad["pad_left"])
        return out

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "RandomCrop":
        return cls(height=a["height"], width=a["width"], pad_if_needed=a["pad_if_needed"],
                   pad_position=a["pad_position"], border_mode=a["border_mode"], fill=ctx.fill(a["fill"]), p=a["p"])


@dataclass(frozen=True, kw_only=True)
class CenterCrop(RandomCrop):
    """albumentations' CenterCrop: the height x width window at ((H - h) // 2, (W - w) // 2)."""
    name = "CenterCrop"
    height: object = 32
    width: object = 32
    p: float = 1.0

    def _starts(self, n, size, gen):
        full = lambda v: torch.full((n,), v, dtype=torch.long, device=gen.device)   # noqa: E731
        return full((size[0] - self.height) // 2), full((size[1] - self.width) // 2)

    def albumentations(self, fills):
        import albumentations as A
        return A.CenterCrop(height=self.height, width=self.width, pad_if_needed=self.pad_if_needed,
                            pad_position=self.pad_position, border_mode=cv2_border(self.border_mode),
                            fill=fills.of(self.fill), p=self.p, strict=True)


@dataclass(frozen=True, kw_only=True)
class RandomResizedCrop(Transform):
    """albumentations' RandomResizedCrop, resized back to ``size`` (which must be the image's own: the policy's
    output is one size)."""
    tolerance = (1, 1e-2)       # measured: <= 1 level on 0.75% of values (OpenCV's fixed-point resize, emulated)
    name = "RandomResizedCrop"
    size: object = (32, 32)
    scale: object = (0.08, 1.0)
    ratio: object = (0.75, 1.3333333333333333)
    p: float = 1.0
    ATTEMPTS = 10

    def check(self):
        w = self.name
        try:
            h_, w_ = self.size
        except (TypeError, ValueError):
            raise TransformError(f"{w}.size must be (height, width), not {self.size!r}.") from None
        object.__setattr__(self, "size", (whole(h_, f"{w}.size", 1), whole(w_, f"{w}.size", 1)))
        scale = pair(self.scale, f"{w}.scale")
        ratio = pair(self.ratio, f"{w}.ratio")
        if not 0 < scale[0] and scale[1] <= 1 or ratio[0] <= 0:
            raise TransformError(f"{w}: scale {self.scale!r} must lie in (0, 1] and ratio {self.ratio!r} be positive.")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)

    def out_size(self, size):
        if tuple(self.size) != tuple(size) and self.p != 1.0:
            needs_every_image(self)
        return tuple(self.size)

    def sample(self, n, size, gen):
        h, w = size
        area = h * w
        target = uniform(self.scale[0] * area, self.scale[1] * area, (n, self.ATTEMPTS), gen)
        ratio = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (n, self.ATTEMPTS), gen))
        cw = torch.round(torch.sqrt(target * ratio)).long()
        ch = torch.round(torch.sqrt(target / ratio)).long()
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.argmax(fits.int(), 1, keepdim=True)          # the first attempt that fits
        found = fits.any(1)
        cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
        fw, fh = self._fallback(h, w)
        cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
        top = torch.where(found, fraction_index(uniform(0, 1, n, gen), h - ch + 1), (h - ch) // 2)
        left = torch.where(found, fraction_index(uniform(0, 1, n, gen), w - cw + 1), (w - cw) // 2)
        return {"on": coin(self.p, n, gen), "top": top, "left": left, "crop_h": ch, "crop_w": cw}

    def _fallback(self, h, w) -> tuple[int, int]:
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            return w, round(w / self.ratio[0])
        if in_ratio > self.ratio[1]:
            return round(h * self.ratio[1]), h
        return w, h

    def apply(self, x, params, fills):
        y = resize_windows(x, params["top"], params["left"], params["crop_h"], params["crop_w"], self.size)
        return where(params["on"], y, x) if y.shape == x.shape else y

    def albumentations(self, fills):
        import albumentations as A
        return A.RandomResizedCrop(size=self.size, scale=self.scale, ratio=self.ratio, interpolation=1, p=self.p,
                                   strict=True)

    def params_from_albumentations(self, applied, size):
        x1, y1, x2, y2 = applied["crop_coords"]
        return {"top": y1, "left": x1, "crop_h": y2 - y1, "crop_w": x2 - x1}

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "RandomResizedCrop":
        if a["interpolation"] != 1:
            ctx.refuse(f"interpolation={a['interpolation']} ({CV2_INTERPOLATIONS.get(a['interpolation'], '?')})",
                       "the engines resize bilinearly (cv2.INTER_LINEAR)")
        if a.get("area_for_downscale"):
            ctx.refuse(f"area_for_downscale={a['area_for_downscale']!r}", "the engines resize bilinearly; leave it None")
        return cls(size=a["size"], scale=a["scale"], ratio=a["ratio"], p=a["p"])


COEF_BITS = 11          # OpenCV's INTER_RESIZE_COEF_BITS: the weights of its uint8 bilinear resize


def resize_windows(x, top, left, ch, cw, out) -> torch.Tensor:
    """Each sample's window (top, left, ch x cw) resized to ``out`` as cv2.resize(INTER_LINEAR) resizes uint8:
    source coordinate (dst + 0.5) * in / out - 0.5 in float32, clamped to the window; weights rounded to 11 bits;
    a horizontal pass in integers, then the vertical one as OpenCV's SIMD path computes it:
    ((H0 >> 4) b0 >> 16) + ((H1 >> 4) b1 >> 16), then (+ 2) >> 2."""
    b, c, h, w = x.shape
    oh, ow = out
    scale = 1 << COEF_BITS

    def axis(start, length, n_out):
        length = length.clamp(min=1).view(b, 1)
        dst = torch.arange(n_out, device=x.device, dtype=torch.float64).view(1, n_out)
        src = ((dst + 0.5) * (length.double() / n_out) - 0.5).float()
        i0 = torch.floor(src)
        frac = src - i0
        i0 = i0.long()
        low, high = i0 < 0, i0 >= length - 1
        frac = torch.where(low | high, torch.zeros_like(frac), frac)
        i0 = torch.where(low, torch.zeros_like(i0), torch.where(high, length - 1, i0))
        w0 = torch.round((1 - frac) * scale).long()
        i1 = torch.minimum(i0 + 1, length - 1)
        return start.view(b, 1) + i0, start.view(b, 1) + i1, w0, scale - w0

    r0, r1, b0, b1 = axis(top, ch, oh)
    c0, c1, a0, a1 = axis(left, cw, ow)
    flat = x.long().flatten(2)

    def at(rows, cols):
        src = rows.view(b, oh, 1) * w + cols.view(b, 1, ow)
        return flat.gather(2, src.view(b, 1, -1).expand(b, c, -1)).view(b, c, oh, ow)
    a0, a1 = a0.view(b, 1, 1, ow), a1.view(b, 1, 1, ow)
    h0 = at(r0, c0) * a0 + at(r0, c1) * a1
    h1 = at(r1, c0) * a0 + at(r1, c1) * a1
    v = (((h0 >> 4) * b0.view(b, 1, oh, 1)) >> 16) + (((h1 >> 4) * b1.view(b, 1, oh, 1)) >> 16)
    return ((v + 2) >> 2).clamp_(0, 255).float()
