"""The albumentations 2.x pipeline built from the policy: the reference every engine is checked against.

``ShiftScaleRotate`` is a special case of ``Affine`` in albumentations 2.x and warns on construction,
so the reference builds the ``Affine`` it stands for; ``shift_scale_rotate_legacy`` builds the
``ShiftScaleRotate`` itself, only so a test can prove the two give identical pixels.
Each transform is built with ``strict=True``: a misspelt or 1.x keyword (``max_holes``, ``fill_value``,
``value``...) is an error here instead of a warning that silently falls back to defaults.
"""
from __future__ import annotations

import albumentations as A
import cv2

from pipeline.policy import AugmentPolicy

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR}
_BORDER = {"constant": cv2.BORDER_CONSTANT}


def affine(policy: AugmentPolicy) -> A.Affine:
    s = policy.ssr
    return A.Affine(
        scale={"x": s.scale_x, "y": s.scale_y},
        translate_percent={"x": s.shift_x, "y": s.shift_y},
        rotate=s.rotate,
        shear=(0.0, 0.0),
        keep_ratio=False,
        fit_output=False,
        rotate_method="largest_box",
        interpolation=_INTERPOLATION[s.interpolation],
        border_mode=_BORDER[s.border],
        fill=policy.ssr_fill,
        p=s.p,
        strict=True,
    )


def shift_scale_rotate_legacy(policy: AugmentPolicy) -> A.ShiftScaleRotate:
    """albumentations' own ShiftScaleRotate for the same policy (warns: for the equality test only; its scale is
    one range for x and y, so the policy's must be the same)."""
    s = policy.ssr
    if s.scale_x != s.scale_y:
        raise ValueError("ShiftScaleRotate has one scale range for x and y; this policy has two.")
    return A.ShiftScaleRotate(
        shift_limit_x=s.shift_x, shift_limit_y=s.shift_y, scale_limit=(s.scale_x[0] - 1, s.scale_x[1] - 1),
        rotate_limit=s.rotate, interpolation=_INTERPOLATION[s.interpolation], border_mode=_BORDER[s.border],
        fill=policy.ssr_fill, p=s.p, strict=True)


def flip(policy: AugmentPolicy) -> A.HorizontalFlip:
    return A.HorizontalFlip(p=policy.flip.p, strict=True)


def dropout(policy: AugmentPolicy) -> A.CoarseDropout:
    d = policy.dropout
    return A.CoarseDropout(
        num_holes_range=d.num_holes,
        hole_height_range=d.hole_height,
        hole_width_range=d.hole_width,
        fill=policy.dropout_fill,
        p=d.p,
        strict=True,
    )


def normalize(policy: AugmentPolicy) -> A.Normalize:
    """The normalization every engine applies last, as albumentations spells it (for to_albumentations)."""
    return A.Normalize(mean=tuple(m / 255 for m in policy.mean), std=tuple(v / 255 for v in policy.std),
                       max_pixel_value=255.0, p=1.0, strict=True)


def build_compose(policy: AugmentPolicy, seed: int | None = None, save_applied_params: bool = False,
                  legacy_ssr: bool = False, with_normalize: bool = False) -> A.Compose:
    """HorizontalFlip -> ShiftScaleRotate (as Affine) -> CoarseDropout, on uint8 HWC images (-> Normalize)."""
    ssr = shift_scale_rotate_legacy(policy) if legacy_ssr else affine(policy)
    last = [normalize(policy)] if with_normalize else []
    return A.Compose([flip(policy), ssr, dropout(policy), *last], seed=seed,
                     save_applied_params=save_applied_params, strict=True)
