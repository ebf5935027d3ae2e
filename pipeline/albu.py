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
        scale=(1 - s.scale_limit, 1 + s.scale_limit),
        translate_percent={"x": (-s.shift_limit, s.shift_limit), "y": (-s.shift_limit, s.shift_limit)},
        rotate=(-s.rotate_limit, s.rotate_limit),
        shear=(0.0, 0.0),
        keep_ratio=False,
        fit_output=False,
        rotate_method="largest_box",
        interpolation=_INTERPOLATION[s.interpolation],
        border_mode=_BORDER[s.border],
        fill=policy.fill,
        p=s.p,
        strict=True,
    )


def shift_scale_rotate_legacy(policy: AugmentPolicy) -> A.ShiftScaleRotate:
    """albumentations' own ShiftScaleRotate for the same policy (warns: for the equality test only)."""
    s = policy.ssr
    return A.ShiftScaleRotate(
        shift_limit=s.shift_limit, scale_limit=s.scale_limit, rotate_limit=s.rotate_limit,
        interpolation=_INTERPOLATION[s.interpolation], border_mode=_BORDER[s.border],
        fill=policy.fill, p=s.p, strict=True)


def flip(policy: AugmentPolicy) -> A.HorizontalFlip:
    return A.HorizontalFlip(p=policy.flip.p, strict=True)


def dropout(policy: AugmentPolicy) -> A.CoarseDropout:
    d = policy.dropout
    return A.CoarseDropout(
        num_holes_range=(d.num_holes, d.num_holes),
        hole_height_range=(d.hole_height, d.hole_height),
        hole_width_range=(d.hole_width, d.hole_width),
        fill=policy.fill,
        p=d.p,
        strict=True,
    )


def build_compose(policy: AugmentPolicy, seed: int | None = None, save_applied_params: bool = False,
                  legacy_ssr: bool = False) -> A.Compose:
    """HorizontalFlip -> ShiftScaleRotate (as Affine) -> CoarseDropout, on uint8 HWC images."""
    ssr = shift_scale_rotate_legacy(policy) if legacy_ssr else affine(policy)
    return A.Compose([flip(policy), ssr, dropout(policy)], seed=seed,
                     save_applied_params=save_applied_params, strict=True)
