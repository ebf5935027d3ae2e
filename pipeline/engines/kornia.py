"""The ``kornia`` engine: a peer to compare against, not one of cifarflow's own reproductions of the policy.

The same device-resident dataset and epoch as the ``gpu`` engine (this loader is the gpu loader with another
augmentation), augmented the way a kornia user would write it: ``kornia.augmentation`` modules with the policy's
probabilities and ranges, on float images in [0, 1], batch by batch (``chunk`` defaults to the batch size), each
module drawing its own per-sample parameters. It is *not* the albumentations policy pixel for pixel:

- RandomAffine shifts by any fraction of a pixel in a symmetric range (albumentations: whole pixels, ranges of
  their own per side), rotates about kornia's centre, and rounds nothing;
- RandomErasing draws one box by area and aspect ratio, and fills it with one grey (the mean of the policy's
  fill), where CoarseDropout draws height and width and fills each channel with its own value.

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


def kornia_augmentation(policy: AugmentPolicy) -> torch.nn.Sequential:
    """The policy as kornia modules for float (B, 3, H, W) images in [0, 1]; ValueError with a sentence for what
    kornia's transforms cannot express."""
    import kornia.augmentation as K

    f, s, d, size = policy.flip, policy.ssr, policy.dropout, policy.image_size
    steps = []
    if f.p > 0:
        steps.append(K.RandomHorizontalFlip(p=f.p))
    if s.p > 0:
        for name, (lo, hi) in (("shift_x", s.shift_x), ("shift_y", s.shift_y)):
            if lo != -hi:
                raise ValueError(f"ssr.{name} = {(lo, hi)}: kornia's RandomAffine translates in a symmetric range "
                                 f"only; the kornia engine takes policies whose shift ranges are (-a, a).")
        fill = torch.tensor(policy.ssr_fill, dtype=torch.float32) / 255
        steps.append(K.RandomAffine(degrees=s.rotate, translate=(s.shift_x[1], s.shift_y[1]),
                                    scale=(*s.scale_x, *s.scale_y), padding_mode="fill", fill_value=fill, p=s.p))
    if d.p > 0:
        if d.num_holes != (1, 1):
            raise ValueError(f"dropout.num_holes = {d.num_holes}: kornia's RandomErasing erases one box; the kornia "
                             f"engine takes policies with exactly one hole.")
        scale = 1 if d.in_pixels else size        # hole sides in pixels
        (h_lo, h_hi), (w_lo, w_hi) = ((lo * scale, hi * scale) for lo, hi in (d.hole_height, d.hole_width))
        steps.append(K.RandomErasing(scale=(h_lo * w_lo / size ** 2, h_hi * w_hi / size ** 2),
                                     ratio=(h_lo / w_hi, h_hi / w_lo),
                                     value=sum(policy.dropout_fill) / 3 / 255, p=d.p))
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
