"""AugmentPolicy: the one description of the augmentations, plain data with a JSON round trip.

Every engine (albumentations reference, gpu, dali, ffcv) is built from this object; none is
configured by hand. Mean and std come from the converted data's meta.json, in pixel units (0..255):
the mean is also the fill of the rotation border and of the dropout hole.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class HorizontalFlip:
    p: float = 0.5


@dataclass(frozen=True)
class ShiftScaleRotate:
    p: float = 0.5
    shift_limit: float = 0.1      # shift ~ U(-s, s) * size, x and y drawn separately, whole pixels
    scale_limit: float = 0.1      # scale ~ U(1 - c, 1 + c), x and y drawn separately
    rotate_limit: float = 15.0    # degrees, angle ~ U(-r, r)
    interpolation: str = "bilinear"
    border: str = "constant"      # filled with the dataset mean


@dataclass(frozen=True)
class CoarseDropout:
    p: float = 0.5
    num_holes: int = 1
    hole_height: int = 16
    hole_width: int = 16          # filled with the dataset mean


@dataclass(frozen=True)
class AugmentPolicy:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: HorizontalFlip = field(default_factory=HorizontalFlip)
    ssr: ShiftScaleRotate = field(default_factory=ShiftScaleRotate)
    dropout: CoarseDropout = field(default_factory=CoarseDropout)
    image_size: int = 32

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        self.validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> "AugmentPolicy":
        """The project's policy with the mean/std of a converted dataset (its meta.json)."""
        return cls(mean=tuple(meta["mean"]), std=tuple(meta["std"]), **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentPolicy":
        try:
            d = dict(d)
            parts = {"flip": HorizontalFlip, "ssr": ShiftScaleRotate, "dropout": CoarseDropout}
            for key, kind in parts.items():
                if key in d:
                    d[key] = kind(**d[key])
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise ValueError(f"not an augmentation policy: {e}.") from None

    @classmethod
    def from_json(cls, text: str) -> "AugmentPolicy":
        return cls.from_dict(json.loads(text))

    def without_augmentation(self) -> "AugmentPolicy":
        return replace(self, flip=replace(self.flip, p=0.0), ssr=replace(self.ssr, p=0.0),
                       dropout=replace(self.dropout, p=0.0))

    # -- derived values every engine shares ----------------------------------------------------
    @property
    def fill(self) -> tuple[float, float, float]:
        """Border and hole fill: the dataset mean in pixel units (each engine rounds it as
        albumentations does: see pipeline/params.py)."""
        return self.mean

    def validate(self) -> None:
        def check(cond, msg):
            if not cond:
                raise ValueError(msg)
        check(len(self.mean) == 3 and len(self.std) == 3, "mean and std need one value per channel (3).")
        check(all(0 <= m <= 255 for m in self.mean), f"mean {self.mean} must lie in 0..255 (pixel units).")
        check(all(s > 0 and math.isfinite(s) for s in self.std), f"std {self.std} must be positive.")
        for name, p in (("flip", self.flip.p), ("ssr", self.ssr.p), ("dropout", self.dropout.p)):
            check(0.0 <= p <= 1.0, f"{name}.p = {p} must lie in [0, 1].")
        check(0 <= self.ssr.shift_limit < 1, f"ssr.shift_limit = {self.ssr.shift_limit} must lie in [0, 1).")
        check(0 <= self.ssr.scale_limit < 1, f"ssr.scale_limit = {self.ssr.scale_limit} must lie in [0, 1).")
        check(0 <= self.ssr.rotate_limit <= 180, f"ssr.rotate_limit = {self.ssr.rotate_limit} must lie in [0, 180].")
        check(self.ssr.interpolation == "bilinear", "ssr.interpolation: only 'bilinear' is implemented by every engine.")
        check(self.ssr.border == "constant", "ssr.border: only 'constant' (mean fill) is implemented by every engine.")
        check(self.dropout.num_holes >= 0, "dropout.num_holes must be >= 0.")
        check(1 <= self.dropout.hole_height <= self.image_size and 1 <= self.dropout.hole_width <= self.image_size,
              f"dropout hole {self.dropout.hole_height}x{self.dropout.hole_width} must fit a "
              f"{self.image_size}x{self.image_size} image.")
