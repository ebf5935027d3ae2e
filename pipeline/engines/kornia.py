"""The ``kornia`` engine: a peer to compare against, not one of cifarflow's own reproductions of the policy.

The same device-resident dataset and epoch as the ``gpu`` engine (this loader is the gpu loader with another
augmentation), augmented the way a kornia user would write it: ``kornia.augmentation`` modules with the policy's
probabilities and ranges, on float images in [0, 1], batch by batch (``chunk`` defaults to the batch size), each
module drawing its own per-sample parameters. It is *not* the albumentations policy pixel for pixel:

- RandomAffine shifts by any fraction of a pixel in a symmetric range (albumentations: whole pixels, ranges of
  their own per side), rotates about kornia's centre, and rounds nothing;
- RandomErasing draws one box by area and aspect ratio, and fills it with one grey (the mean of the policy's
  fill), where CoarseDropout draws height and width and fills each channel with its own value;
- ColorJitter's brightness and contrast factors, and their order, are kornia's own; RandomCrop pads inside itself.

How far it lands from albumentations is measured by the statistical parity harness (``bench`` reports it for
this engine as figures). kornia draws on the CPU's global generator; each epoch runs on a generator state of
its own, seeded by (seed, epoch) and restored around every chunk, so the same seed (and chunk size: kornia's
draws follow its calls) gives the same epoch, and the caller's random state is left as it was.
"""
from __future__ import annotations

import torch

from pipeline.engines.gpu import GpuLoader
from pipeline.output import epoch_seed
from pipeline.policy import AugmentPolicy
from pipeline.transforms import opencv_fill, truncated_fill
from pipeline.transforms.affine import Affine
from pipeline.transforms.colour import RandomBrightnessContrast, ToGray
from pipeline.transforms.crops import CenterCrop, PadIfNeeded, RandomCrop
from pipeline.transforms.erasing import CoarseDropout
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip


def kornia_augmentation(policy: AugmentPolicy) -> torch.nn.Sequential:
    """The policy as kornia modules for float (B, 3, H, W) images in [0, 1], as a kornia user would write them;
    ValueError with a sentence for a transform kornia's modules cannot express (the peer covers the classic CIFAR
    set: flips, Affine/ShiftScaleRotate, pad-and-crop, brightness-contrast, grey, one cutout)."""
    import kornia.augmentation as K

    steps, pending_pad = [], None
    size = policy.image_size
    for t in policy.transforms:
        if t.p == 0:
            continue
        if isinstance(t, PadIfNeeded) and t.position == "center":
            pending_pad = t                 # kornia pads inside its RandomCrop
            continue
        if isinstance(t, RandomCrop) and not isinstance(t, CenterCrop) and not t.pad_if_needed:
            pad = pending_pad
            mh, mw = pad._missing((size, size)) if pad else (0, 0)
            mode = {"constant": "constant", "reflect_101": "reflect", "replicate": "replicate"}.get(
                pad.border_mode if pad else "constant")
            if mode is None:
                raise ValueError(f"kornia's RandomCrop pads with a constant, reflect_101 or replicate border, not "
                                 f"{pad.border_mode}.")
            fill = sum(opencv_fill(policy.fills.of(pad.fill))) / 3 / 255 if pad else 0.0
            steps.append(K.RandomCrop((t.height, t.width), padding=(mw // 2, mh // 2, mw - mw // 2, mh - mh // 2),
                                      fill=fill, padding_mode=mode, p=1.0))
            pending_pad = None
            continue
        if pending_pad is not None:
            raise ValueError("the kornia engine takes PadIfNeeded only before a RandomCrop (kornia pads inside "
                             "RandomCrop).")
        if type(t) is HorizontalFlip:
            steps.append(K.RandomHorizontalFlip(p=t.p))
        elif type(t) is VerticalFlip:
            steps.append(K.RandomVerticalFlip(p=t.p))
        elif isinstance(t, Affine) and t.translate_px is None:
            tx, ty = t.translate_percent["x"], t.translate_percent["y"]
            if tx[0] != -tx[1] or ty[0] != -ty[1]:
                raise ValueError(f"{t.name}'s translation {tx}, {ty}: kornia's RandomAffine translates in a symmetric "
                                 f"range only; the kornia engine takes ranges (-a, a).")
            fill = torch.tensor(opencv_fill(policy.fills.of(t.fill)), dtype=torch.float32) / 255
            steps.append(K.RandomAffine(degrees=t.rotate, translate=(tx[1], ty[1]), scale=(*t.scale["x"], *t.scale["y"]),
                                        shear=(*t.shear["x"], *t.shear["y"]), padding_mode="fill", fill_value=fill, p=t.p))
        elif type(t) is RandomBrightnessContrast and t.brightness_by_max:
            steps.append(K.ColorJitter(brightness=tuple(1 + v for v in t.brightness_limit),
                                       contrast=tuple(1 + v for v in t.contrast_limit), p=t.p))
        elif type(t) is ToGray:
            steps.append(K.RandomGrayscale(p=t.p))
        elif type(t) is CoarseDropout and t.num_holes_range == (1, 1):
            (h_lo, h_hi), (w_lo, w_hi) = ((lo * f, hi * f) for (lo, hi), f in
                                          ((t.hole_height_range, 1 if t.in_pixels(t.hole_height_range) else size),
                                           (t.hole_width_range, 1 if t.in_pixels(t.hole_height_range) else size)))
            steps.append(K.RandomErasing(scale=(h_lo * w_lo / size ** 2, h_hi * w_hi / size ** 2),
                                         ratio=(h_lo / w_hi, h_hi / w_lo),
                                         value=sum(truncated_fill(policy.fills.of(t.fill))) / 3 / 255, p=t.p))
        else:
            raise ValueError(f"the kornia engine (a peer for comparison) has no counterpart for {t.name} with these "
                             f"arguments; it takes flips, Affine/ShiftScaleRotate with symmetric shifts, PadIfNeeded "
                             f"+ RandomCrop, RandomBrightnessContrast, ToGray and one-hole CoarseDropout.")
    if pending_pad is not None:
        raise ValueError("the kornia engine takes PadIfNeeded only before a RandomCrop (kornia pads inside RandomCrop).")
    return torch.nn.Sequential(*steps)


class KorniaLoader(GpuLoader):
    """One epoch per ``iter()``, as the gpu loader; the augmentation is kornia's."""

    def __init__(self, data_dir, split, batch_size, *, device, policy: AugmentPolicy, augment, seed, normalize,
                 return_index, shuffle=None, drop_last=False, shard=(0, 1), chunk: int | None = None):
        self.augmentation = kornia_augmentation(policy)      # refuses what kornia cannot express, before loading
        super().__init__(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                         normalize=normalize, return_index=return_index, shuffle=shuffle, drop_last=drop_last,
                         shard=shard, chunk=batch_size if chunk is None else chunk)
        self.summary = f"kornia.augmentation on {device}, {self.chunk} images per call, batches of {batch_size}"

    def epoch_params(self, n: int, gen: torch.Generator, epoch: int) -> dict:
        """kornia draws its own parameters: the epoch holds the state of the CPU generator it draws them with."""
        return {"rng": torch.Generator().manual_seed(epoch_seed(self.seed, epoch)).get_state()}

    def augment_chunk(self, images: torch.Tensor, params: dict, start: int) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255)
        held = torch.get_rng_state()
        torch.set_rng_state(params["rng"])
        try:
            x = self.augmentation(x)
            params["rng"] = torch.get_rng_state()
        finally:
            torch.set_rng_state(held)
        x = x.mul_(255)
        if not self.output.normalize:         # uint8 out: round, as the other engines' whole pixel values
            x = x.round_().clamp_(0, 255)
        return x.contiguous(memory_format=torch.channels_last)


LOADER = KorniaLoader


def build(data_dir, split, batch_size, *, device, policy, augment, seed, normalize, return_index, **options):
    return KorniaLoader(data_dir, split, batch_size, device=device, policy=policy, augment=augment, seed=seed,
                        normalize=normalize, return_index=return_index, **options)
