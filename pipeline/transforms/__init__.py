"""The transforms a policy is a list of: each one albumentations 2.0.8 transform, reproduced, in one unit.

A transform is a frozen dataclass of albumentations' own arguments (its 2.0.8 names and meanings) that owns, for
itself alone:

- ``name``: its albumentations class name; ``from_albumentations(args)`` reads a transform object's arguments and
  refuses, with one sentence naming it, every argument no engine reproduces;
- ``sample(n, size, gen)``: the per-sample parameters of ``n`` images of ``size`` (h, w), drawn on the generator's
  device as albumentations 2.0.8 draws them (each transform's docstring says how), always with ``on``: whether the
  transform is applied to the sample;
- ``apply(x, params, fills)``: the batched torch op on float32 (B, 3, H, W) whole pixel values, deterministic given the
  parameters, rounding as albumentations rounds its uint8 result, so that transforms chain as albumentations chains
  them (``fills`` holds the dataset mean, for a fill written "mean");
- ``dali(x, params, fills)``: its DALI expression on uint8 HWC (the parameters arrive as per-sample DALI inputs), or
  ``NotOnEngine`` with the sentence saying why;
- ``albumentations()``: the reference transform; ``params_from_albumentations(applied)``: albumentations' applied
  parameters of one image, as ours (for replay parity and the samplers' KS tests).

The FFCV engine decodes with FFCV and runs the same torch ops (``apply``) after ToDevice: a transform with ``apply``
runs there. Engines loop over the policy's list (``pipeline.policy``); no engine names a transform.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch

Size = tuple[int, int]
Params = dict          # str -> tensor (n, ...) or, for OneOf, nested dicts


class NotOnEngine(Exception):
    """A transform an engine cannot reproduce; the message says why (the policy names the engines that can)."""


class TransformError(ValueError):
    """A transform argument no engine reproduces, or a value out of range: one sentence naming it."""


# ---------------------------------------------------------------------------------------------
# checks of arguments (each a sentence naming the transform and the argument)
# ---------------------------------------------------------------------------------------------

def number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TransformError(f"{where} must be a finite number, not {value!r}.")
    return float(value)


def probability(value, where: str) -> float:
    p = number(value, where)
    if not 0.0 <= p <= 1.0:
        raise TransformError(f"{where} = {value!r} must lie in [0, 1].")
    return p


def pair(value, where: str, symmetric: bool = False, bias: float = 0.0) -> tuple[float, float]:
    """A (low, high) range; a single number ``v`` means (-v, v) where albumentations reads it so (``symmetric``),
    else (v, v); ``bias`` is added to both ends (ShiftScaleRotate's scale_limit is around 1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = number(value, where)
        lo, hi = (-v, v) if symmetric else (v, v)
    else:
        try:
            lo, hi = value
        except (TypeError, ValueError):
            raise TransformError(f"{where} must be a number or a (low, high) pair, not {value!r}.") from None
        lo, hi = number(lo, where), number(hi, where)
    if lo > hi:
        raise TransformError(f"{where} = {value!r}: the low end is above the high end.")
    return lo + bias, hi + bias


def whole(value, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise TransformError(f"{where} must be a whole number, not {value!r}.")
    if low is not None and int(value) < low:
        raise TransformError(f"{where} = {value!r} must be at least {low}.")
    return int(value)


def fill_value(value, where: str):
    """A constant fill as three pixel values (one per channel), or "mean" (the dataset mean)."""
    if value == "mean":
        return "mean"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        values = tuple(number(v, where) for v in value)
    except (TypeError, TransformError):
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise TransformError(f"{where} must be 'mean' or a constant in 0..255 (one value, or one per channel), "
                             f"not {value!r}.")
    return values


CV2_BORDERS = {0: "constant", 1: "replicate", 2: "reflect", 3: "wrap", 4: "reflect_101"}
CV2_INTERPOLATIONS = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos4", 5: "linear_exact",
                      6: "nearest_exact"}


# ---------------------------------------------------------------------------------------------
# the base of every transform
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Transform:
    """One albumentations transform (see the module docstring for what each subclass owns)."""
    name: ClassVar[str] = ""
    p: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "p", probability(self.p, f"{self.name}.p"))
        self.check()

    def check(self) -> None:
        """Normalize and check the arguments (TransformError with a sentence)."""

    # -- geometry and sampling --------------------------------------------------------------
    def out_size(self, size: Size) -> Size:
        return size

    def sample(self, n: int, size: Size, gen: torch.Generator) -> Params:
        return {"on": coin(self.p, n, gen)}

    def apply(self, x: torch.Tensor, params: Params, fills: "Fills") -> torch.Tensor:
        raise NotImplementedError

    def dali(self, x, params, fills: "Fills", size: Size):
        raise NotOnEngine(f"{self.name} has no DALI expression")

    def dali_params(self, params: Params, size: Size) -> dict:
        """The per-sample inputs of ``dali`` (tensors (n, ...)), from ``sample``'s parameters of images of ``size``."""
        return dict(params)

    def dali_refusal(self, size: Size) -> str | None:
        """Why ``dali`` cannot reproduce these arguments on images of ``size``, or None."""
        return None

    # -- albumentations -----------------------------------------------------------------------
    def albumentations(self, fills: "Fills"):
        """The albumentations 2.0.8 transform this one reproduces (``fills`` turns "mean" into pixel values)."""
        raise NotImplementedError

    def params_from_albumentations(self, applied: dict, size: Size) -> dict:
        """albumentations' applied parameters of one image (its ``applied_transforms`` entry), as ours: one value
        per parameter key of ``sample`` (besides ``on``)."""
        return {}

    @property
    def applied_name(self) -> str:
        """The class name albumentations records for it in ``applied_transforms``."""
        return self.name

    def to_dict(self) -> dict:
        return {"name": self.name, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


def _plain(v):
    return list(_plain(x) for x in v) if isinstance(v, tuple) else v


@dataclass(frozen=True)
class Fills:
    """The dataset mean in pixel units, for the fills written "mean"."""
    mean: tuple[float, float, float]

    def of(self, fill) -> tuple[float, float, float]:
        return tuple(self.mean) if fill == "mean" else tuple(fill)


# ---------------------------------------------------------------------------------------------
# drawing and applying, shared by the transforms
# ---------------------------------------------------------------------------------------------

def uniform(lo: float, hi: float, shape, gen: torch.Generator) -> torch.Tensor:
    """U(lo, hi) in float64 (albumentations draws in Python floats)."""
    return torch.rand(shape, generator=gen, device=gen.device, dtype=torch.float64) * (hi - lo) + lo


def coin(p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device) < p


def integers(lo: int, hi: int, shape, gen: torch.Generator) -> torch.Tensor:
    """Uniform on lo..hi, both included (Python's random.randint)."""
    return torch.randint(int(lo), int(hi) + 1, shape if isinstance(shape, tuple) else (shape,), generator=gen,
                         device=gen.device)


def fraction_index(u: torch.Tensor, count) -> torch.Tensor:
    """int(u * count) for u in [0, 1): a start drawn as albumentations draws crop and hole positions."""
    return torch.floor(u * count).long()


def where(on: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(on.view(-1, *([1] * (a.dim() - 1))), a, b)


def device_constant(make):
    """``make(*args)`` (a constant tensor built from host values) made once per arguments and device: a tensor made
    from host values at each batch is a copy that waits for the GPU; callers must not modify it. Under
    ``torch.compile`` the call is traced instead, its result a constant of the graph (a cache is not traced)."""
    cached = functools.lru_cache(maxsize=64)(make)

    @functools.wraps(make)
    def constant(*args):
        return make(*args) if torch.compiler.is_compiling() else cached(*args)
    constant.cache_info = cached.cache_info         # how often each was made (the tests read it)
    return constant


@device_constant
def channel_constant(values: tuple, device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) float32 on ``device``."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def opencv_fill(fill) -> tuple[float, float, float]:
    """A float fill as OpenCV gives it to a uint8 image: rounded half to even (numpy's round, as saturate_cast)."""
    return tuple(float(v) for v in np.clip(np.round(np.asarray(fill, dtype=np.float64)), 0, 255))


def truncated_fill(fill) -> tuple[int, int, int]:
    """A fill as albumentations' dropout converts it for uint8: ``np.array(fill, dtype=uint8)`` truncates."""
    return tuple(int(math.trunc(v)) for v in fill)

