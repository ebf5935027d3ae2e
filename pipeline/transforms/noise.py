"""GaussNoise: additive Gaussian noise, per pixel and channel (or shared by the channels).

albumentations 2.0.8 (pixel/transforms.py, pixel/functional.generate_noise): sigma ~ U(std_range) and mean ~
U(mean_range) per image, both fractions of 255; the noise N(mean x 255, sigma x 255) per pixel (and channel, with
``per_channel``); albucore's ``add`` truncates the noise toward zero, adds it to the uint8 image and clips to 0..255
(measured: ``clip(x + trunc(noise))`` on every value of a random image; ``trunc(x + noise)`` differs on 44%)
(``noise_scale_factor`` other than 1 is refused).

The engines draw the noise from each sample's own seed with a counter-based generator (splitmix64, Box-Muller): a
sample's noise depends only on its parameters, so a chunk of any size gives the same epoch. Replay parity takes
albumentations' own noise map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.transforms import Transform, TransformError, coin, number, pair, uniform, where

_M = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _M
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def standard_normal(seed: torch.Tensor, count: int, shape) -> torch.Tensor:
    """(B, count) float32 N(0, 1) from each sample's int64 ``seed``, reshaped to (B, *shape)."""
    idx = torch.arange(count, device=seed.device, dtype=torch.int64).view(1, -1)
    base = splitmix64(seed.view(-1, 1) * 2 + 1) ^ (idx * 2)
    u1 = (_shr(splitmix64(base), 11).double() + 0.5) / 2.0 ** 53
    u2 = (_shr(splitmix64(base + 1), 11).double() + 0.5) / 2.0 ** 53
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.float().view(len(seed), *shape)


@dataclass(frozen=True, kw_only=True)
class GaussNoise(Transform):
    """albumentations' GaussNoise (see the module docstring)."""
    name = "GaussNoise"
    std_range: object = (0.2, 0.44)
    mean_range: object = (0.0, 0.0)
    per_channel: bool = True
    p: float = 0.5

    def check(self):
        std = pair(self.std_range, f"{self.name}.std_range")
        if not 0 <= std[0] and std[1] <= 1:
            raise TransformError(f"{self.name}.std_range = {self.std_range!r} must lie in [0, 1].")
        object.__setattr__(self, "std_range", std)
        object.__setattr__(self, "mean_range", pair(self.mean_range, f"{self.name}.mean_range"))
        if not isinstance(self.per_channel, bool):
            raise TransformError(f"{self.name}.per_channel must be true or false.")

    def sample(self, n, size, gen):
        return {"on": coin(self.p, n, gen), "std": uniform(*self.std_range, n, gen),
                "mean": uniform(*self.mean_range, n, gen),
                "seed": torch.randint(0, 1 << 62, (n,), generator=gen, device=gen.device)}

    def noise(self, params, shape) -> torch.Tensor:
        """(B, 3, H, W) float32: the noise in grey levels, from the given map (replay) or each sample's seed."""
        if "noise" in params:
            return params["noise"]
        c, h, w = shape
        z = standard_normal(params["seed"], (c if self.per_channel else 1) * h * w,
                            (c if self.per_channel else 1, h, w))
        scale = (params["std"] * 255).float().view(-1, 1, 1, 1)
        return (z * scale + (params["mean"] * 255).float().view(-1, 1, 1, 1)).expand(-1, c, h, w)

    def apply(self, x, params, fills):
        y = (x + self.noise(params, x.shape[1:]).trunc()).clamp_(0, 255)
        return where(params["on"], y, x)

    def albumentations(self, fills):
        import albumentations as A
        return A.GaussNoise(std_range=self.std_range, mean_range=self.mean_range, per_channel=self.per_channel,
                            noise_scale_factor=1, p=self.p, strict=True)

    def params_from_albumentations(self, applied, size):
        m = applied["noise_map"]
        return {"noise": m}           # (its sigma and mean are not recorded: the noise map is compared)

    @classmethod
    def from_albumentations(cls, a: dict, ctx) -> "GaussNoise":
        if number(a.get("noise_scale_factor", 1), "GaussNoise.noise_scale_factor") != 1:
            ctx.refuse(f"noise_scale_factor={a['noise_scale_factor']}", "the engines draw the noise at full "
                                                                        "resolution; leave it 1")
        return cls(std_range=a["std_range"], mean_range=a["mean_range"], per_channel=a["per_channel"], p=a["p"])
