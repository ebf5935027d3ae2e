"""OneOf: one of its transforms, with albumentations' semantics.

albumentations 2.0.8 (core/composition.py): with probability ``p``, one child is picked with probability
proportional to its own ``p`` (the ps normalized to weights) and applied with ``force_apply=True``: its own p does
not decide again. The engines apply every child to the same input and keep, per sample, the picked one's output (a
fixed number of passes however many images a chunk holds); all children must give images of one size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.transforms import Transform, TransformError, coin, where


@dataclass(frozen=True, kw_only=True)
class OneOf(Transform):
    name = "OneOf"
    transforms: tuple = ()
    p: float = 0.5

    def check(self):
        children = tuple(self.transforms)
        if not children or not all(isinstance(t, Transform) for t in children):
            raise TransformError("OneOf needs a list of one or more transforms.")
        if sum(t.p for t in children) <= 0:
            raise TransformError("OneOf: every transform in it has p = 0, so none can be picked.")
        object.__setattr__(self, "transforms", children)

    @property
    def weights(self) -> list[float]:
        total = sum(t.p for t in self.transforms)
        return [t.p / total for t in self.transforms]

    def out_size(self, size):
        sizes = {tuple(t.out_size(size)) for t in self.transforms}
        if len(sizes) > 1:
            raise TransformError(f"OneOf's transforms give images of different sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}): "
                                 f"a batch holds images of one size.")
        out = sizes.pop()
        if out != tuple(size) and self.p != 1.0:
            raise TransformError(f"OneOf(p={self.p}) changes the image size when it applies, which would leave images "
                                 f"of two sizes in one batch: set p=1.")
        return out

    def sample(self, n, size, gen):
        on = coin(self.p, n, gen)
        weights = torch.tensor(self.weights, dtype=torch.float64, device=gen.device)
        choice = torch.multinomial(weights.expand(n, -1), 1, replacement=True, generator=gen).view(n)
        children = {}
        for k, t in enumerate(self.transforms):
            child = t.sample(n, size, gen)
            child["on"] = torch.ones_like(on)            # force_apply: the child's own p does not decide again
            children[str(k)] = child
        return {"on": on, "choice": choice, "children": children}

    def apply(self, x, params, fills):
        outs = [t.apply(x, params["children"][str(k)], fills) for k, t in enumerate(self.transforms)]
        out = x if outs[0].shape == x.shape else outs[0]      # a size-changing OneOf applies to every image
        for k, y in enumerate(outs):
            out = where(params["on"] & (params["choice"] == k), y, out)
        return out

    def _child_params(self, params, k: int) -> dict:
        """Child ``k``'s parameters, applied where it is the one picked (and the OneOf applies)."""
        return {**params["children"][str(k)], "on": params["on"] & (params["choice"] == k)}

    def dali_params(self, params, size):
        out = {}
        for k, t in enumerate(self.transforms):
            out.update({f"{k}.{key}": v for key, v in t.dali_params(self._child_params(params, k), size).items()})
        return out

    def dali(self, x, params, fills, size):
        """Each child in turn, each an exact identity where it is not the one picked (a warp's identity matrix, a
        flip of 0, an empty hole...)."""
        for k, t in enumerate(self.transforms):
            prefix = f"{k}."
            x = t.dali(x, {key[len(prefix):]: v for key, v in params.items() if key.startswith(prefix)}, fills, size)
        return x

    def dali_refusal(self, size):
        from pipeline.policy import dali_refusal
        for t in self.transforms:
            if tuple(t.out_size(size)) != tuple(size):
                return f"DALI runs OneOf's transforms one after another, which needs transforms that keep the " \
                       f"size, and {t.name} changes it"
            reason = dali_refusal(t, size)
            if reason:
                return f"{t.name} in it: {reason}"
        return None

    def albumentations(self, fills):
        import albumentations as A
        return A.OneOf([t.albumentations(fills) for t in self.transforms], p=self.p)

    def to_dict(self):
        return {"name": self.name, "transforms": [t.to_dict() for t in self.transforms], "p": self.p}
