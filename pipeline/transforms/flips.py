"""HorizontalFlip and VerticalFlip.

albumentations 2.0.8: ``HorizontalFlip`` is ``img[:, ::-1]``, ``VerticalFlip`` is ``img[::-1]``, each applied with
probability ``p`` (``py_random.random() < p``): exact on every engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.transforms import Transform, where


@dataclass(frozen=True, kw_only=True)
class HorizontalFlip(Transform):
    name = "HorizontalFlip"
    p: float = 0.5
    axis = 3            # of (B, 3, H, W)

    def apply(self, x, params, fills):
        return where(params["on"], x.flip(self.axis), x)

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        return fn.flip(x, horizontal=params["on"], vertical=0)   # (horizontal defaults to 1 when not given)

    def albumentations(self, fills):
        import albumentations as A
        return A.HorizontalFlip(p=self.p, strict=True)

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "HorizontalFlip":
        return cls(p=a["p"])


@dataclass(frozen=True, kw_only=True)
class VerticalFlip(HorizontalFlip):
    name = "VerticalFlip"
    p: float = 0.5
    axis = 2

    def dali(self, x, params, fills, size):
        import nvidia.dali.fn as fn
        return fn.flip(x, horizontal=0, vertical=params["on"])

    def albumentations(self, fills):
        import albumentations as A
        return A.VerticalFlip(p=self.p, strict=True)
