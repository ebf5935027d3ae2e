"""AugmentPolicy: the one description of the augmentations, plain data with a JSON round trip.

Every engine (albumentations reference, gpu, dali, ffcv) is built from this object; none is configured by hand.
The ranges are albumentations 2.x's, drawn as albumentations draws them (pipeline/params.py):

- HorizontalFlip with probability ``flip.p``;
- ShiftScaleRotate (albumentations' Affine without shear): shifts ``int(U(lo, hi) * size)`` whole pixels, x and
  y separately; scales x and y drawn separately; the angle in degrees; bilinear; a constant border;
- CoarseDropout: ``num_holes`` holes (a whole number drawn from the range), each of a height and width drawn from
  their ranges: whole pixels when the range's top is 1 or more, else fractions of the side (``int(U(lo, hi) *
  size)``), as albumentations decides; each hole wholly inside the image.

Fills are ``"mean"`` (the dataset mean, from meta.json, in pixel units 0..255) or three constants. Mean and std
come from the converted data's meta.json, or from an albumentations Normalize (``pipeline.albu_import``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

Range = tuple[float, float]


def _number(value, name: str) -> float:
    """A real, finite number (not true/false, not text): what every numeric field of the policy holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}.")
    return float(value)


def _probability(value, name: str) -> float:
    p = _number(value, name)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} = {value!r} must lie in [0, 1].")
    return p


def _pair(value, name: str, kind=float) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, not {value!r}.") from None
    lo, hi = _number(lo, name), _number(hi, name)
    try:
        return kind(lo), kind(hi)
    except ValueError:
        raise ValueError(f"{name} must be a (low, high) pair of whole numbers, not {value!r}.") from None


def _fill(value, name: str):
    if value == "mean":
        return "mean"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        values = tuple(_number(v, name) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"{name} must be 'mean' or a constant in 0..255 (one value, or one per channel), "
                         f"not {value!r}.")
    return values


@dataclass(frozen=True)
class HorizontalFlip:
    p: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "p", _probability(self.p, "flip.p"))


@dataclass(frozen=True)
class ShiftScaleRotate:
    p: float = 0.5
    shift_x: Range = (-0.1, 0.1)      # a fraction of the width: shift = int(U(lo, hi) * width) whole pixels
    shift_y: Range = (-0.1, 0.1)
    scale_x: Range = (0.9, 1.1)       # x and y drawn separately
    scale_y: Range = (0.9, 1.1)
    rotate: Range = (-15.0, 15.0)     # degrees
    interpolation: str = "bilinear"
    border: str = "constant"
    fill: object = "mean"             # the border: "mean" or (r, g, b)

    def __post_init__(self):
        object.__setattr__(self, "p", _probability(self.p, "ssr.p"))
        for name in ("shift_x", "shift_y", "scale_x", "scale_y", "rotate"):
            object.__setattr__(self, name, _pair(getattr(self, name), f"ssr.{name}"))
        object.__setattr__(self, "fill", _fill(self.fill, "ssr.fill"))


@dataclass(frozen=True)
class CoarseDropout:
    p: float = 0.5
    num_holes: tuple[int, int] = (1, 1)
    hole_height: Range = (16, 16)     # whole pixels when the top is >= 1, else fractions of the side
    hole_width: Range = (16, 16)
    fill: object = "mean"             # the hole: "mean" or (r, g, b)

    def __post_init__(self):
        object.__setattr__(self, "p", _probability(self.p, "dropout.p"))
        object.__setattr__(self, "num_holes", _pair(self.num_holes, "dropout.num_holes", _whole))
        pixels = _pair(self.hole_height, "dropout.hole_height")[1] >= 1     # as albumentations decides
        sizes = {name: _pair(getattr(self, name), f"dropout.{name}") for name in ("hole_height", "hole_width")}
        if pixels and not all(float(v).is_integer() for pair in sizes.values() for v in pair):
            raise ValueError(f"dropout.hole_height = {sizes['hole_height']}, hole_width = {sizes['hole_width']}: with "
                             f"a height of 1 or more both ranges are whole pixels; give fractions below 1 for both, or "
                             f"whole pixels for both.")
        for name, pair in sizes.items():
            object.__setattr__(self, name, tuple(int(v) for v in pair) if pixels else pair)
        object.__setattr__(self, "fill", _fill(self.fill, "dropout.fill"))

    @property
    def in_pixels(self) -> bool:
        """Hole sizes in whole pixels (else fractions of the side): albumentations decides by the height's top."""
        return self.hole_height[1] >= 1

    @property
    def max_holes(self) -> int:
        return self.num_holes[1]


def _whole(v) -> int:
    if isinstance(v, bool) or float(v) != int(float(v)):
        raise ValueError
    return int(float(v))


@dataclass(frozen=True)
class AugmentPolicy:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: HorizontalFlip = field(default_factory=HorizontalFlip)
    ssr: ShiftScaleRotate = field(default_factory=ShiftScaleRotate)
    dropout: CoarseDropout = field(default_factory=CoarseDropout)
    image_size: int = 32

    def __post_init__(self):
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
                raise ValueError(f"{name} needs one number per channel (3), not {values!r}.")
            object.__setattr__(self, name, tuple(_number(v, name) for v in values))
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not 1 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be a whole number of pixels, not {self.image_size!r}.")
        self.validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> "AugmentPolicy":
        """The project's policy with the mean/std of a converted dataset (its meta.json)."""
        return cls(mean=tuple(meta["mean"]), std=tuple(meta["std"]), **overrides)

    def with_stats(self, meta: dict) -> "AugmentPolicy":
        """This policy with a converted dataset's mean and std (a user's policy meets the data it trains on)."""
        return replace(self, mean=tuple(meta["mean"]), std=tuple(meta["std"]))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentPolicy":
        """From ``to_dict``'s form; also reads the symmetric form of earlier versions (``shift_limit``,
        ``scale_limit``, ``rotate_limit``, one ``num_holes`` and one hole size), which checkpoints hold."""
        try:
            d = dict(d)
            parts = {"flip": (HorizontalFlip, {}), "ssr": (ShiftScaleRotate, _SSR_V1), "dropout": (CoarseDropout, _DROPOUT_V1)}
            for key, (kind, older) in parts.items():
                if key in d:
                    fields_ = dict(d[key])
                    for name, convert in older.items():
                        if name in fields_:
                            fields_.update(convert(fields_.pop(name)))
                    d[key] = kind(**fields_)
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise ValueError(f"not an augmentation policy: {e}.") from None

    @classmethod
    def from_json(cls, text: str) -> "AugmentPolicy":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}.") from None
        if not isinstance(d, dict):
            raise ValueError("not an augmentation policy: the JSON is not an object.")
        return cls.from_dict(d)

    @classmethod
    def from_albumentations(cls, compose, *, mean=None, std=None, strict: bool = False) -> "AugmentPolicy":
        """The policy an albumentations ``A.Compose`` describes (``pipeline.albu_import``): its Normalize gives
        mean and std, else ``mean``/``std`` (pixel units) must be given; what no engine reproduces is refused."""
        from pipeline.albu_import import from_albumentations
        return from_albumentations(compose, mean=mean, std=std, strict=strict)[0]

    def to_albumentations(self):
        """The albumentations 2.x Compose of this policy: flip, the shift-scale-rotate as Affine, CoarseDropout,
        Normalize (``pipeline.albu``, the reference every engine is checked against)."""
        from pipeline import albu
        return albu.build_compose(self, with_normalize=True)

    def check_fits(self, image_size: int, where) -> None:
        """ValueError with a sentence unless this policy was made for images of ``image_size`` pixels a side (the
        data in ``where``): shifts and holes are drawn in pixels of the policy's size."""
        if self.image_size != image_size:
            raise ValueError(f"the policy is made for {self.image_size}x{self.image_size} images, but {where} holds "
                             f"{image_size}x{image_size} ones: set the policy's image_size to {image_size} (and its "
                             f"hole sizes within it).")

    def without_augmentation(self) -> "AugmentPolicy":
        return replace(self, flip=replace(self.flip, p=0.0), ssr=replace(self.ssr, p=0.0),
                       dropout=replace(self.dropout, p=0.0))

    # -- derived values every engine shares ----------------------------------------------------
    @property
    def ssr_fill(self) -> tuple[float, float, float]:
        """The warp's border in pixel units (each engine rounds it as OpenCV does: see pipeline/params.py)."""
        return self.mean if self.ssr.fill == "mean" else self.ssr.fill

    @property
    def dropout_fill(self) -> tuple[float, float, float]:
        """The hole's value in pixel units (truncated as albumentations does: see pipeline/params.py)."""
        return self.mean if self.dropout.fill == "mean" else self.dropout.fill

    def validate(self) -> None:
        def check(cond, msg):
            if not cond:
                raise ValueError(msg)
        s, d, size = self.ssr, self.dropout, self.image_size
        check(len(self.mean) == 3 and len(self.std) == 3, "mean and std need one value per channel (3).")
        check(all(0 <= m <= 255 for m in self.mean), f"mean {self.mean} must lie in 0..255 (pixel units).")
        check(all(s_ > 0 and math.isfinite(s_) for s_ in self.std), f"std {self.std} must be positive.")
        for name, (lo, hi), bound in (("shift_x", s.shift_x, 1), ("shift_y", s.shift_y, 1)):
            check(-bound <= lo <= hi <= bound, f"ssr.{name} = {(lo, hi)} must be a range within [-1, 1].")
        for name, (lo, hi) in (("scale_x", s.scale_x), ("scale_y", s.scale_y)):
            check(0 < lo <= hi and math.isfinite(hi), f"ssr.{name} = {(lo, hi)} must be a range of positive scales.")
        check(-360 <= s.rotate[0] <= s.rotate[1] <= 360, f"ssr.rotate = {s.rotate} must be a range within [-360, 360] degrees.")
        check(s.interpolation == "bilinear", "ssr.interpolation: only 'bilinear' is implemented by every engine.")
        check(s.border == "constant", "ssr.border: only 'constant' is implemented by every engine.")
        check(0 <= d.num_holes[0] <= d.num_holes[1] <= 64,
              f"dropout.num_holes = {d.num_holes} must be a range of whole numbers within 0..64.")
        for name, (lo, hi) in (("hole_height", d.hole_height), ("hole_width", d.hole_width)):
            if d.in_pixels:
                check(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= size,
                      f"dropout.{name} = {(lo, hi)} must be whole pixels within 1..{size} (fractions of the side "
                      f"for both height and width, or pixels for both).")
            else:
                check(0 < lo <= hi < 1, f"dropout.{name} = {(lo, hi)} must be fractions of the side in (0, 1) "
                                        f"(or whole pixels for both height and width).")


def _symmetric(limit):
    return (-float(limit), float(limit))


_SSR_V1 = {"shift_limit": lambda v: {"shift_x": _symmetric(v), "shift_y": _symmetric(v)},
           "scale_limit": lambda v: {"scale_x": (1 - v, 1 + v), "scale_y": (1 - v, 1 + v)},
           "rotate_limit": lambda v: {"rotate": _symmetric(v)}}
_DROPOUT_V1 = {"num_holes": lambda v: {"num_holes": (v, v) if isinstance(v, int) else v},
               "hole_height": lambda v: {"hole_height": (v, v) if isinstance(v, (int, float)) else v},
               "hole_width": lambda v: {"hole_width": (v, v) if isinstance(v, (int, float)) else v}}
