"""AugmentPolicy: the one description of the augmentations, plain data with a JSON round trip.

A policy is an ordered list of transforms (``pipeline.transforms``: any order, a transform may appear more than once,
``OneOf`` with albumentations' semantics) plus the dataset's mean and std (pixel units 0..255, from the converted
data's meta.json, or an albumentations Normalize) and the image size. Every engine (albumentations reference, gpu,
dali, ffcv) is built from this object, none is configured by hand; engines loop over the list and never name a
transform.

    policy.sample(n, gen)         the per-sample parameters of n images (PolicyParams), on gen's device
    policy.apply(images, params)  uint8 (B, H, W, 3) -> float32 (B, 3, H, W) channels-last whole pixel values
    policy.to_albumentations()    the reference Compose (with Normalize)

JSON: ``{"format_version": 2, "mean", "std", "image_size", "transforms": [{"name": "HorizontalFlip", "p": 0.5},
...]}``, each transform with albumentations 2.0.8's argument names; the version-1 form (fields ``flip``, ``ssr``,
``dropout``, which checkpoints of earlier runs hold) still reads, as the same three transforms.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pipeline.transforms import Fills, Transform, TransformError, number
from pipeline.transforms.affine import Affine, Rotate, ShiftScaleRotate
from pipeline.transforms.colour import (ColorJitter, HueSaturationValue, RandomBrightnessContrast, Solarize,
                                        ToGray)
from pipeline.transforms.crops import CenterCrop, PadIfNeeded, RandomCrop, RandomResizedCrop
from pipeline.transforms.erasing import CoarseDropout, Erasing
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip
from pipeline.transforms.noise import GaussNoise
from pipeline.transforms.one_of import OneOf

FORMAT_VERSION = 2
KINDS: dict[str, type[Transform]] = {t.name: t for t in (
    HorizontalFlip, VerticalFlip, Affine, ShiftScaleRotate, Rotate, PadIfNeeded, RandomCrop, CenterCrop,
    RandomResizedCrop, CoarseDropout, Erasing, RandomBrightnessContrast, ColorJitter, HueSaturationValue, ToGray,
    GaussNoise, Solarize, OneOf)}


def _hash_by_json(t) -> int:
    return hash(json.dumps(t.to_dict(), sort_keys=True))


for _kind in KINDS.values():    # a transform's {"x", "y"} ranges are dicts: it hashes by its JSON form
    _kind.__hash__ = _hash_by_json


def default_transforms() -> tuple[Transform, ...]:
    """The project's policy: flip, a shift-scale-rotate (Affine, no shear) with the mean border, one 16x16 hole of the
    mean."""
    return (HorizontalFlip(p=0.5),
            Affine(scale={"x": (0.9, 1.1), "y": (0.9, 1.1)}, translate_percent={"x": (-0.1, 0.1), "y": (-0.1, 0.1)},
                   rotate=(-15.0, 15.0), fill="mean", p=0.5),
            CoarseDropout(num_holes_range=(1, 1), hole_height_range=(16, 16), hole_width_range=(16, 16), fill="mean",
                          p=0.5))


class PolicyParams:
    """The per-sample parameters of a policy's ``n`` samples: one dict of (n, ...) tensors per transform (OneOf:
    nested dicts)."""

    def __init__(self, items: list[dict], n: int):
        self.items, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def select(self, idx) -> "PolicyParams":
        n = int(torch.arange(self.n)[idx.cpu() if torch.is_tensor(idx) else idx].numel())
        return PolicyParams([_tree_map(lambda t: t[idx], d) for d in self.items], n)

    def to(self, device) -> "PolicyParams":
        return PolicyParams([_tree_map(lambda t: t.to(device), d) for d in self.items], self.n)

    def numpy(self) -> list[dict]:
        return [_tree_map(lambda t: t.cpu().numpy(), d) for d in self.items]


def _tree_map(fn, d):
    return {k: _tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


@dataclass(frozen=True)
class AugmentPolicy:
    """``mean``/``std`` None: the converted data's, filled in where the loader meets the data (``for_data``)."""
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    transforms: tuple = field(default_factory=default_transforms)
    image_size: int = 32

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("give the policy's mean and std both, or neither (then the data's are used).")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
                raise ValueError(f"{name} needs one number per channel (3), not {values!r}.")
            object.__setattr__(self, name, tuple(number(v, name) for v in values))
        if self.mean is not None and not all(0 <= m <= 255 for m in self.mean):
            raise ValueError(f"mean {self.mean} must lie in 0..255 (pixel units).")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive.")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not 1 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be a whole number of pixels, not {self.image_size!r}.")
        transforms = tuple(self.transforms)
        if not all(isinstance(t, Transform) for t in transforms):
            raise ValueError("transforms must be pipeline.transforms objects (AugmentPolicy.from_dict reads JSON).")
        object.__setattr__(self, "transforms", transforms)
        self.sizes()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> "AugmentPolicy":
        """The project's policy with the mean/std of a converted dataset (its meta.json)."""
        return cls(mean=tuple(meta["mean"]), std=tuple(meta["std"]), **overrides)

    def with_stats(self, meta: dict) -> "AugmentPolicy":
        """This policy with a converted dataset's mean and std (a user's policy meets the data it trains on)."""
        return replace(self, mean=tuple(meta["mean"]), std=tuple(meta["std"]))

    def for_data(self, meta: dict) -> "AugmentPolicy":
        """This policy with the data's mean and std where it has none of its own."""
        return self.with_stats(meta) if self.mean is None else self

    def with_transforms(self, *transforms: Transform) -> "AugmentPolicy":
        return replace(self, transforms=tuple(transforms))

    def without_augmentation(self) -> "AugmentPolicy":
        return replace(self, transforms=())

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "image_size": self.image_size, "transforms": [t.to_dict() for t in self.transforms]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentPolicy":
        """From ``to_dict``'s form, or the version-1 form of earlier runs (``flip``/``ssr``/``dropout``, and the
        symmetric ``shift_limit``... of the versions before it)."""
        if not isinstance(d, dict):
            raise ValueError("not an augmentation policy: not an object.")
        d = dict(d)
        version = d.pop("format_version", 1)
        try:
            if version == 1 or any(k in d for k in ("flip", "ssr", "dropout")):
                d["transforms"] = _version_1(d.pop("flip", None), d.pop("ssr", None), d.pop("dropout", None))
            elif version != FORMAT_VERSION:
                raise ValueError(f"format_version {version!r}: this version reads policies of version 1 and "
                                 f"{FORMAT_VERSION}.")
            else:
                items = d.get("transforms", [])
                if not isinstance(items, list):
                    raise ValueError("'transforms' must be a list of transforms.")
                d["transforms"] = tuple(transform_from_dict(t) for t in items)
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"not an augmentation policy: {e}.") from None

    @classmethod
    def from_json(cls, text: str) -> "AugmentPolicy":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}.") from None
        return cls.from_dict(d)

    @classmethod
    def from_albumentations(cls, compose, *, mean=None, std=None, strict: bool = False,
                            image_size: int = 32) -> "AugmentPolicy":
        """The policy an albumentations ``A.Compose`` describes (``pipeline.albu_import``): its Normalize gives
        mean and std, else ``mean``/``std`` (pixel units, e.g. the converted data's), else None: the loader takes
        the converted data's from its meta.json."""
        from pipeline.albu_import import from_albumentations
        return from_albumentations(compose, mean=mean, std=std, strict=strict, image_size=image_size)[0]

    def to_albumentations(self, with_normalize: bool = True):
        """The albumentations 2.x Compose of this policy (the reference every engine is checked against)."""
        import albumentations as A
        self._stats_known()
        last = [A.Normalize(mean=tuple(m / 255 for m in self.mean), std=tuple(v / 255 for v in self.std),
                            max_pixel_value=255.0, p=1.0, strict=True)] if with_normalize else []
        return A.Compose([t.albumentations(self.fills) for t in self.transforms] + last, strict=True)

    # -- what every engine shares ----------------------------------------------------------------
    def _stats_known(self) -> None:
        if self.mean is None:
            raise ValueError("the policy has no mean and std of its own: give it the data's (policy.for_data(meta)).")

    @property
    def fills(self) -> Fills:
        self._stats_known()
        return Fills(self.mean)

    def sizes(self) -> list[tuple[int, int]]:
        """The image size before each transform and after the last; ValueError with a sentence where a transform does
        not fit the size it is given, or the last size is not the image size."""
        size = (self.image_size, self.image_size)
        out = [size]
        for t in self.transforms:
            try:
                size = tuple(t.out_size(size))
            except TransformError as e:
                raise ValueError(str(e)) from None
            out.append(size)
        if size != (self.image_size, self.image_size):
            raise ValueError(f"the policy turns {self.image_size}x{self.image_size} images into {size[0]}x{size[1]} "
                             f"ones: its last size must be the images' own (crop or resize back to "
                             f"{self.image_size}x{self.image_size}).")
        return out

    def sample(self, n: int, gen: torch.Generator) -> PolicyParams:
        """The per-sample parameters of ``n`` images, drawn on the generator's device."""
        return PolicyParams([t.sample(n, size, gen) for t, size in zip(self.transforms, self.sizes())], n)

    def apply(self, images: torch.Tensor, params: PolicyParams) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) channels-last, whole pixel values 0..255 (each transform rounds
        its output as albumentations does)."""
        x = images.permute(0, 3, 1, 2).float()      # channels-last view of the NHWC batch
        fills = self.fills
        for t, p in zip(self.transforms, params.items):
            x = t.apply(x, p, fills)
        return x.contiguous(memory_format=torch.channels_last)

    def replay(self, images: torch.Tensor, params: PolicyParams) -> torch.Tensor:
        """For the parity harness: uint8 (B, H, W, 3) in and out."""
        return self.apply(images, params.to(images.device)).to(torch.uint8).permute(0, 2, 3, 1)

    def check_fits(self, image_size: int, where) -> None:
        """ValueError with a sentence unless this policy was made for images of ``image_size`` pixels a side (the
        data in ``where``): shifts, crops and holes are drawn in pixels of the policy's size."""
        if self.image_size != image_size:
            raise ValueError(f"the policy is made for {self.image_size}x{self.image_size} images, but {where} holds "
                             f"{image_size}x{image_size} ones: set the policy's image_size to {image_size} (and its "
                             f"sizes within it).")

    def unreproduced(self, engine: str) -> str | None:
        """None if ``engine`` reproduces every transform of the policy, else one sentence naming the first one it
        cannot and the engines that can (gpu, torch and ffcv run every transform's torch op or albumentations)."""
        if engine != "dali":
            return None
        for t, size in zip(self.transforms, self.sizes()):
            reason = dali_refusal(t, size)
            if reason:
                return (f"the dali engine cannot reproduce {t.name} ({reason}): run this policy with --loader gpu, "
                        f"torch or ffcv.")
        return None


def seed_albumentations(compose, seed: int) -> None:
    """Seed an albumentations Compose so that its transforms draw independently, reproducibly from ``seed``.

    albumentations 2.0.8's ``Compose(seed=s)`` and ``set_random_seed(s)`` hand the same seed to every transform:
    each then draws the same sequence, and transforms that draw alike decide alike (a CoarseDropout and a
    HorizontalFlip of the same p were applied together, image after image). Here the Compose keeps ``seed`` and
    each transform, OneOf children included, gets a seed of its own from (seed, its place in the tree)."""
    from albumentations.core.composition import BaseCompose
    compose.set_random_seed(seed)

    def walk(transforms, path):
        for k, t in enumerate(transforms):
            place = (*path, k + 1)          # from 1: SeedSequence reads [s, 2] and [s, 2, 0] as one entropy
            t.set_random_seed(int(np.random.SeedSequence([seed, *place]).generate_state(1)[0]))
            if isinstance(t, BaseCompose):      # a OneOf's children (ColorJitter's .transforms are functions)
                walk(t.transforms, place)
    walk(compose.transforms, ())


def dali_refusal(t: Transform, size) -> str | None:
    """None where ``t`` has a DALI expression for its arguments on images of ``size``, else why not."""
    if type(t).dali is Transform.dali:
        return "DALI has no operator of its semantics here"
    return t.dali_refusal(size)


def transform_from_dict(d) -> Transform:
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(f"a transform must be an object with its 'name', not {d!r}.")
    d = dict(d)
    name = d.pop("name")
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown transform {name!r}: the engines reproduce {', '.join(KINDS)}.")
    if kind is OneOf:
        d["transforms"] = tuple(transform_from_dict(t) for t in d.get("transforms", []))
    try:
        return kind(**d)
    except TypeError as e:
        raise ValueError(f"{name}: {e}.") from None
    except TransformError as e:
        raise ValueError(str(e)) from None


def _symmetric(limit):
    return (-float(limit), float(limit))


def _version_1(flip, ssr, dropout) -> tuple[Transform, ...]:
    """The three transforms of a version-1 policy (its fields, or their older symmetric spellings)."""
    out = []
    if flip is not None:
        out.append(HorizontalFlip(p=flip.get("p", 0.5)))
    if ssr is not None:
        s = dict(ssr)
        if "shift_limit" in s:
            s["shift_x"] = s["shift_y"] = _symmetric(s.pop("shift_limit"))
        if "scale_limit" in s:
            v = s.pop("scale_limit")
            s["scale_x"] = s["scale_y"] = (1 - v, 1 + v)
        if "rotate_limit" in s:
            s["rotate"] = _symmetric(s.pop("rotate_limit"))
        for key, fixed in (("interpolation", "bilinear"), ("border", "constant")):
            if s.get(key, fixed) != fixed:
                raise ValueError(f"ssr.{key} {s[key]!r}: only {fixed!r} is reproduced.")
        out.append(Affine(scale={"x": tuple(s.get("scale_x", (0.9, 1.1))), "y": tuple(s.get("scale_y", (0.9, 1.1)))},
                          translate_percent={"x": tuple(s.get("shift_x", (-0.1, 0.1))),
                                             "y": tuple(s.get("shift_y", (-0.1, 0.1)))},
                          rotate=tuple(s.get("rotate", (-15.0, 15.0))), fill=s.get("fill", "mean"), p=s.get("p", 0.5)))
    if dropout is not None:
        d = dict(dropout)
        holes = d.get("num_holes", (1, 1))
        size = lambda v: (v, v) if isinstance(v, (int, float)) else tuple(v)      # noqa: E731
        out.append(CoarseDropout(num_holes_range=(holes, holes) if isinstance(holes, int) else tuple(holes),
                                 hole_height_range=size(d.get("hole_height", (16, 16))),
                                 hole_width_range=size(d.get("hole_width", (16, 16))), fill=d.get("fill", "mean"),
                                 p=d.get("p", 0.5)))
    return tuple(out)

