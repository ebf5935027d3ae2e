"""The parity harness every engine is judged by, against the albumentations 2.x reference.

Pixel parity (engines that can **replay** parameters, ``module.replay``): the same per-sample
parameters go through the engine and through albumentations' own transforms (their ``apply`` with
fixed parameters) on real images; flip and dropout must be exact, shift-scale-rotate within 1 grey
level with under 0.1% of values differing.

Statistical parity (engines that draw their own random numbers): over an epoch, the rate of each
transform, the distributions of angle, scale, shift and hole position (two-sample KS tests against
albumentations' own sampled parameters, for engines exposing ``module.sampled_params``), the share
of mean-filled pixels and the mean augmented image (paired by source image, in standard errors), each
within a stated tolerance of the reference.

    python -m pipeline.parity --loader gpu --data-dir DIR [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline import albu, engine_module
from pipeline.params import Params, dropout_fill, forward_matrix, hole_boxes, sample_params
from pipeline.policy import AugmentPolicy

SSR_MAX_DIFF = 1            # grey levels
SSR_MAX_SHARE = 1e-3        # of values that may differ
KS_MIN_P = 1e-3
RATE_SIGMAS = 4.0           # binomial standard deviations allowed around the policy's p
FILL_SHARE_TOL = 0.01       # absolute, share of pixels equal to the hole fill
MEAN_IMAGE_Z_TOL = 1.5      # RMS over pixels of the mean paired difference in standard errors (about 1 if equal)
MEAN_CHANNEL_TOL = 1.0      # grey levels, per-channel mean difference


@dataclass
class Check:
    group: str
    name: str
    passed: bool
    figures: str

    def row(self) -> str:
        return f"  {'PASS' if self.passed else 'FAIL'}  {self.name:<34} {self.figures}"


# ---------------------------------------------------------------------------------------------
# pixel parity
# ---------------------------------------------------------------------------------------------

def reference_replay(images: np.ndarray, params: Params, policy: AugmentPolicy) -> np.ndarray:
    """albumentations' transforms, in the policy's order, with the given parameters."""
    flip, affine, dropout = albu.flip(policy), albu.affine(policy), albu.dropout(policy)
    m = forward_matrix(params, policy.image_size).cpu().numpy()
    boxes = hole_boxes(params)
    p = params.numpy()
    out = np.empty_like(images)
    size = (policy.image_size, policy.image_size)
    for i, img in enumerate(images):
        if p["flip"][i]:
            img = flip.apply(img)
        if p["ssr"][i]:
            img = affine.apply(img, matrix=m[i], output_shape=size)
        if p["dropout"][i]:
            img = dropout.apply(img, holes=boxes[i], seed=0)
        out[i] = img
    return out


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    diff = np.abs(ref.astype(np.int16) - out.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"max_diff": int(diff.max()), "share": float((diff > 0).mean()),
            "psnr": math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)}


def _only(params: Params, which: str) -> Params:
    """The same parameters with only ``which`` applied, to every sample."""
    on, off = torch.ones_like(params.flip), torch.zeros_like(params.flip)
    return replace(params, flip=on if which == "flip" else off, ssr=on if which == "ssr" else off,
                   dropout=on if which == "dropout" else off)


def replay_parity(engine: str, images: np.ndarray, policy: AugmentPolicy, seed: int = 0, device="cpu"):
    """Returns (checks, (reference, engine output) of the whole policy) on uint8 NHWC ``images``."""
    module = engine_module(engine)
    if not hasattr(module, "replay"):
        return [Check("pixel", f"{engine} cannot replay parameters", True, "pixel parity not applicable")], None
    params = sample_params(len(images), policy, torch.Generator().manual_seed(seed))
    batch = torch.from_numpy(np.array(images)).to(device)
    checks, full = [], None
    for which in ("flip", "ssr", "dropout", "policy"):
        p = params if which == "policy" else _only(params, which)
        ref = reference_replay(images, p, policy)
        out = module.replay(batch, p, policy).cpu().numpy()
        c = compare(ref, out)
        if which in ("flip", "dropout"):
            passed, rule = c["max_diff"] == 0, "exact"
        else:
            passed = c["max_diff"] <= SSR_MAX_DIFF and c["share"] < SSR_MAX_SHARE
            rule = f"<= {SSR_MAX_DIFF} level, < {100 * SSR_MAX_SHARE:g}% differ"
        name = {"flip": "HorizontalFlip", "ssr": "ShiftScaleRotate", "dropout": "CoarseDropout",
                "policy": "whole policy (p as drawn)"}[which]
        checks.append(Check("pixel", name, passed,
                            f"max diff {c['max_diff']}, {100 * c['share']:.4f}% differ, PSNR {c['psnr']:.1f} dB "
                            f"({rule}, {len(images)} images)"))
        if which == "policy":
            full = (ref, out)
    return checks, full


def device_difference(engine: str, images: np.ndarray, policy: AugmentPolicy, device, seed: int = 0) -> Check:
    """The engine's output on ``device`` against its own output on the CPU, for the same parameters: where a
    GPU's operators round differently from the CPU's (DALI's warp may), by how much. A figure, not a rule."""
    module = engine_module(engine)
    params = sample_params(len(images), policy, torch.Generator().manual_seed(seed))
    batch = torch.from_numpy(np.array(images))
    on_device = module.replay(batch.to(device), params, policy).cpu().numpy()
    on_cpu = module.replay(batch, params, policy).numpy()
    c = compare(on_cpu, on_device)
    return Check("pixel", f"{torch.device(device).type} against CPU", True,
                 f"max diff {c['max_diff']}, {100 * c['share']:.4f}% of values differ ({len(images)} images, the "
                 f"same parameters; a figure)")


# ---------------------------------------------------------------------------------------------
# statistical parity
# ---------------------------------------------------------------------------------------------

def albumentations_params(images: np.ndarray, policy: AugmentPolicy, seed: int) -> dict[str, np.ndarray]:
    """The parameters albumentations itself draws over ``images`` (one Compose, saved applied params)."""
    compose = albu.build_compose(policy, seed=seed, save_applied_params=True)
    c = policy.image_size / 2 - 0.5
    rec = {k: [] for k in ("flip", "ssr", "dropout", "angle", "scale_x", "scale_y", "shift_x", "shift_y",
                           "hole_x", "hole_y", "hole_h", "hole_w", "holes")}
    for img in images:
        applied = dict(compose(image=img)["applied_transforms"])
        rec["flip"].append("HorizontalFlip" in applied)
        rec["ssr"].append("Affine" in applied)
        rec["dropout"].append("CoarseDropout" in applied)
        if "Affine" in applied:
            a = applied["Affine"]
            m = np.asarray(a["matrix"])
            t = m[:2, 2] - c + m[:2, :2] @ np.array([c, c])   # M = C T A C^-1  ->  t
            rec["angle"].append(a["rotate"])
            rec["scale_x"].append(a["scale"]["x"])
            rec["scale_y"].append(a["scale"]["y"])
            rec["shift_x"].append(round(t[0]))
            rec["shift_y"].append(round(t[1]))
        if "CoarseDropout" in applied:
            holes = np.asarray(applied["CoarseDropout"]["holes"]).reshape(-1, 4)
            rec["holes"].append(len(holes))
            for x1, y1, x2, y2 in holes:
                rec["hole_x"].append(x1)
                rec["hole_y"].append(y1)
                rec["hole_h"].append(y2 - y1)
                rec["hole_w"].append(x2 - x1)
    return {k: np.asarray(v) for k, v in rec.items()}


def _rate_check(name, rate, ref_rate, p, n):
    tol = RATE_SIGMAS * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return Check("statistical", f"{name} rate", abs(rate - p) <= tol and abs(ref_rate - p) <= tol,
                 f"engine {rate:.4f}, albumentations {ref_rate:.4f}, policy {p} (± {tol:.4f}, n={n})")


def _epoch(loader) -> tuple[np.ndarray, np.ndarray]:
    xs, idx = [], []
    for x, _, i in loader:
        xs.append(x.permute(0, 2, 3, 1).cpu().numpy())
        idx.append(i.cpu().numpy())
    return np.concatenate(xs), np.concatenate(idx)


def mean_image_difference(eng: np.ndarray, ref: np.ndarray, chunk: int = 4096):
    """The two epochs' outputs, row i of each from the same source image: (RMS over pixels of the mean
    difference divided by its standard error, RMS of the mean difference in grey levels, per-channel mean
    difference). The pairing removes the images' own variety, so the first figure is about 1 whenever the
    engines agree, on real or generated pictures alike and at any epoch size; a fixed grey-level tolerance
    is not (smooth real images and blocky generated ones move very differently under the same warp)."""
    n = len(eng)
    s1, s2 = np.zeros(eng.shape[1:]), np.zeros(eng.shape[1:])
    for i in range(0, n, chunk):            # float64 sums in chunks: a full epoch would take gigabytes at once
        d = eng[i:i + chunk].astype(np.float64) - ref[i:i + chunk]
        s1 += d.sum(0)
        s2 += (d * d).sum(0)
    mean = s1 / n
    var = np.maximum(s2 / n - mean ** 2, 0.0) * n / max(n - 1, 1)
    se = np.sqrt(var / n)
    z = np.divide(mean, se, out=np.where(mean == 0, 0.0, np.inf), where=se > 0)
    return float(np.sqrt(np.mean(z ** 2))), float(np.sqrt(np.mean(mean ** 2))), np.abs(mean.mean((0, 1)))


def statistical_parity(engine: str, data_dir, policy: AugmentPolicy, seed: int = 0, device="cpu",
                       batch_size: int = 512, options: dict | None = None):
    """``options`` go to the engine's loader (e.g. ``{"mode": "numba"}``); parameter distributions are
    compared only when the engine exposes ``sampled_params`` and no options change how it draws."""
    from scipy.stats import ks_2samp

    from pipeline import build_loader
    from pipeline.format import load_split

    module = engine_module(engine)
    split, _ = load_split(data_dir, "train")
    source = np.asarray(split.images)
    n = len(source)
    ref_p = albumentations_params(source, policy, seed + 1)
    checks = []

    def run(name, pol, s=seed):
        extra = (options or {}) if name == engine else {}
        loader = build_loader(name, data_dir, "train", batch_size, device=device, seed=s, normalize=False,
                              return_index=True, policy=pol, **extra)
        return _epoch(loader)

    off = policy.without_augmentation()
    # rates, measured on the engine's output with one transform at a time
    out, idx = run(engine, replace(off, flip=policy.flip))
    src = source[idx]
    same = np.all(out == src, axis=(1, 2, 3))
    mirrored = np.all(out == src[:, :, ::-1], axis=(1, 2, 3))
    sym = same & mirrored
    checks.append(Check("statistical", "flip output is source or mirror", bool(np.all(same | mirrored)),
                        f"{int((~(same | mirrored)).sum())} other images"))
    checks.append(_rate_check("HorizontalFlip", float(mirrored[~sym].mean()), float(ref_p["flip"].mean()),
                              policy.flip.p, int((~sym).sum())))
    out, idx = run(engine, replace(off, ssr=policy.ssr))
    changed = np.any(out != source[idx], axis=(1, 2, 3))
    checks.append(_rate_check("ShiftScaleRotate", float(changed.mean()), float(ref_p["ssr"].mean()), policy.ssr.p, n))
    out, idx = run(engine, replace(off, dropout=policy.dropout))
    changed = np.any(out != source[idx], axis=(1, 2, 3))
    checks.append(_rate_check("CoarseDropout", float(changed.mean()), float(ref_p["dropout"].mean()),
                              policy.dropout.p, n))

    # parameter distributions, where the engine exposes what it draws
    if hasattr(module, "sampled_params") and not options:
        ours = module.sampled_params(n, policy, seed, device).numpy()
        present = (ours["hole_h"] > 0) | (ours["hole_w"] > 0)
        ours["holes"] = present.sum(1)
        keys = ["angle", "scale_x", "scale_y", "shift_x", "shift_y"] if policy.ssr.p > 0 else []
        if policy.dropout.p > 0:
            keys += ["hole_x", "hole_y", "hole_h", "hole_w", "holes"]
        for key in keys:
            if key == "holes":
                mine = ours[key][ours["dropout"]]
            elif key.startswith("hole"):      # every hole drawn, of the samples with dropout applied
                mine = ours[key][ours["dropout"][:, None] & present]
            else:
                mine = ours[key][ours["ssr"]]
            mine = mine.ravel()
            if len(mine) == 0 or len(ref_p[key]) == 0:
                checks.append(Check("statistical", f"{key} distribution (KS)", len(mine) == len(ref_p[key]),
                                    f"engine drew {len(mine)}, albumentations {len(ref_p[key])} values"))
                continue
            if np.ptp(mine) == 0 and np.ptp(ref_p[key]) == 0:      # a fixed value: the same one, or not
                checks.append(Check("statistical", f"{key} distribution", mine[0] == ref_p[key][0],
                                    f"fixed: engine {mine[0]:.4g}, albumentations {ref_p[key][0]:.4g}"))
                continue
            ks = ks_2samp(mine, ref_p[key])
            checks.append(Check("statistical", f"{key} distribution (KS)", ks.pvalue > KS_MIN_P,
                                f"D {ks.statistic:.4f}, p {ks.pvalue:.3g} (> {KS_MIN_P:g}); engine "
                                f"{mine.min():.3g}..{mine.max():.3g}, albumentations {ref_p[key].min():.3g}.."
                                f"{ref_p[key].max():.3g}"))
    else:
        checks.append(Check("statistical", "parameter distributions (KS)", True,
                            f"not applicable: {engine}{f' {options}' if options else ''} does not expose its sampled "
                            f"parameters"))

    # the whole policy: share of hole-filled pixels and the mean augmented image
    eng, idx_e = run(engine, policy)
    ref, idx_r = run("torch", policy, seed + 1)
    fill = np.array(dropout_fill(policy), np.uint8)
    share_e = float(np.all(eng == fill, axis=-1).mean())
    share_r = float(np.all(ref == fill, axis=-1).mean())
    checks.append(Check("statistical", "share of mean-filled pixels", abs(share_e - share_r) <= FILL_SHARE_TOL,
                        f"engine {share_e:.4f}, albumentations {share_r:.4f} (± {FILL_SHARE_TOL})"))
    order_e, order_r = np.argsort(idx_e, kind="stable"), np.argsort(idx_r, kind="stable")
    if not np.array_equal(idx_e[order_e], idx_r[order_r]):
        raise ValueError(f"{engine}'s epoch and the reference's cover different images: compare whole epochs")
    z, rms, ch = mean_image_difference(eng[order_e], ref[order_r])
    checks.append(Check("statistical", "mean augmented image",
                        z <= MEAN_IMAGE_Z_TOL and float(ch.max()) <= MEAN_CHANNEL_TOL,
                        f"{z:.2f} standard errors RMS (<= {MEAN_IMAGE_Z_TOL}; RMS diff {rms:.3f} grey levels), "
                        f"channel means differ by {', '.join(f'{v:.3f}' for v in ch)} (<= {MEAN_CHANNEL_TOL})"))
    return checks


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def save_comparison(path, images, ref, out, count=8, amplify=32):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    count = min(count, len(ref))
    fig, axes = plt.subplots(count, 4, figsize=(6.4, 1.6 * count), squeeze=False)
    for k in range(count):
        diff = np.clip(np.abs(ref[k].astype(int) - out[k].astype(int)) * amplify, 0, 255).astype(np.uint8)
        for j, (img, title) in enumerate(((images[k], "source"), (ref[k], "albumentations"), (out[k], "engine"),
                                          (diff, f"|diff| x{amplify}"))):
            axes[k][j].imshow(img, interpolation="nearest")
            axes[k][j].axis("off")
            if k == 0:
                axes[k][j].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from pipeline import known_loaders
    from pipeline.albu_import import add_policy_arguments, policy_for
    from pipeline.cli import run_main
    from pipeline.format import load_split
    from pipeline.output import resolve_device

    ap = argparse.ArgumentParser(prog="python -m pipeline.parity",
                                 description="Check an engine against the albumentations reference: pixel parity "
                                             "with replayed parameters (where the engine can replay them) and "
                                             "statistical parity over an epoch. Exit code 1 on any failure.")
    ap.add_argument("--loader", required=True, help=f"engine: {', '.join(known_loaders())}")
    ap.add_argument("--data-dir", default="data/cifar10", help="converted data (cifar10-mini is plenty)")
    ap.add_argument("--out", default=None, help="folder for parity-<loader>.png (default: no picture)")
    ap.add_argument("--images", type=int, default=2000, help="images for pixel parity (default 2000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against-cpu", action="store_true",
                    help="with a GPU --device, also say how far the engine's GPU output is from its own CPU output "
                         "for the same parameters (engines that replay them)")
    add_policy_arguments(ap)
    args = ap.parse_args(argv)
    if args.images < 1:
        ap.error("--images must be at least 1")

    def body():
        device = resolve_device(args.device)
        split, meta = load_split(args.data_dir, "train")
        policy, notes = policy_for(meta, args.policy, strict=args.strict_policy)
        for note in notes:
            print(f"note: {note}")
        images = np.asarray(split.images[:args.images])
        pixel, full = replay_parity(args.loader, images, policy, args.seed, device)
        if args.against_cpu and device.type != "cpu" and full is not None:
            pixel.append(device_difference(args.loader, images, policy, device, args.seed))
        stats = statistical_parity(args.loader, args.data_dir, policy, args.seed, device)
        ok = True
        for title, checks in (("pixel parity (replayed parameters)", pixel),
                              ("statistical parity (one epoch)", stats)):
            print(f"{args.loader}: {title}")
            for c in checks:
                print(c.row())
                ok &= c.passed
        if args.out and full is not None:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            path = Path(args.out) / f"parity-{args.loader}.png"
            save_comparison(path, images, *full)
            print(f"wrote {path}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
