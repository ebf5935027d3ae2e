"""The parity harness every engine is judged by, against albumentations 2.0.8 running the same Compose.

Replay parity (engines that replay parameters, ``module.replay``): albumentations runs the policy's Compose on real
images and records the parameters it applied (``save_applied_params``); the engine is handed those same parameters
(``params_from_albumentations``) and must give the same pixels, within each transform's written tolerance. Checked
for every transform (or, for transforms that move the frame, the group that brings the size back), then for the
whole policy.

Sampler parity: each transform's sampler against albumentations' own draws over the same images (two-sample KS
tests per parameter, or the same fixed value), and the rate at which each transform applies.

Statistical parity (every engine, one epoch, its own random numbers): the engine's epoch against albumentations'
epoch of the same images: the share of images left unchanged, of grey images, of pixels equal to each hole fill,
per-image brightness and contrast (KS), and the mean augmented image (paired by source image, in standard errors).

    python -m pipeline.parity --loader gpu --data-dir DIR [--policy FILE] [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import engine_module
from pipeline.policy import AugmentPolicy, PolicyParams, seed_albumentations
from pipeline.transforms import Transform
from pipeline.transforms.erasing import _Holes
from pipeline.transforms.one_of import OneOf

KS_MIN_P = 1e-3
RATE_SIGMAS = 4.0           # binomial standard deviations allowed around the policy's p
SHARE_TOL = 0.01            # absolute, for shares of images or pixels
MEAN_IMAGE_Z_TOL = 1.5      # RMS over pixels of the mean paired difference in standard errors (about 1 if equal)
WHOLE_POLICY_FACTOR = 4     # a composed pipeline's share of differing values: up to this times its parts' sum


@dataclass
class Check:
    group: str
    name: str
    passed: bool
    figures: str

    def __post_init__(self):        # numpy's bool from a comparison would not serialize (bench's and the CLI's JSON)
        object.__setattr__(self, "passed", bool(self.passed))

    def row(self) -> str:
        return f"  {'PASS' if self.passed else 'FAIL'}  {self.name:<40} {self.figures}"


def tolerance(t: Transform) -> tuple[int, float]:
    """(grey levels, share of values) a replay of ``t`` may differ by: the transform's own ``tolerance``."""
    if isinstance(t, OneOf):
        parts = [tolerance(c) for c in t.transforms]
        return max(p[0] for p in parts), sum(p[1] for p in parts)
    return getattr(t, "tolerance", (0, 0.0))


# ---------------------------------------------------------------------------------------------
# albumentations' own run, and its parameters as ours
# ---------------------------------------------------------------------------------------------

def albumentations_run(images: np.ndarray, policy: AugmentPolicy, seed: int):
    """(outputs, per image the list of (name, params) albumentations applied), the Compose seeded once, each
    transform with a seed of its own (``seed_albumentations``)."""
    import albumentations as A
    compose = A.Compose([t.albumentations(policy.fills) for t in policy.transforms], save_applied_params=True,
                        strict=True)
    seed_albumentations(compose, seed)
    outs, applied = [], []
    for img in images:
        r = compose(image=img)
        outs.append(r["image"])
        applied.append(list(r["applied_transforms"]))
    return np.stack(outs), applied


def params_from_albumentations(policy: AugmentPolicy, applied: list[list], complete: bool = True) -> PolicyParams:
    """albumentations' applied parameters (one list per image) as the policy's PolicyParams: each transform, in the
    policy's order, takes the next applied entry of its name (a OneOf: of one of its transforms' names). ``complete``:
    the keys albumentations does not record (or no image drew) taken from a draw of ours, for a replay; else left
    out (the samplers' comparison takes only what albumentations drew)."""
    sizes = policy.sizes()
    per_image = [_walk(policy.transforms, sizes, list(entries)) for entries in applied]
    n = len(applied)
    if not complete:
        return PolicyParams([_stack(t, [img[k] for img in per_image]) for k, t in enumerate(policy.transforms)], n)
    drawn = policy.sample(n, torch.Generator().manual_seed(0))      # for what albumentations never drew
    return PolicyParams([_complete(_stack(t, [img[k] for img in per_image]), d)
                         for k, (t, d) in enumerate(zip(policy.transforms, drawn.items))], n)


def _complete(given: dict, drawn: dict) -> dict:
    """``given`` with the keys it lacks (a transform applied to no image) from ``drawn``: unused where not applied."""
    out = dict(drawn)
    for k, v in given.items():
        out[k] = _complete(v, drawn.get(k, {})) if isinstance(v, dict) else v
    return out


def _walk(transforms, sizes, entries):
    out = []
    for t, size in zip(transforms, sizes):
        if isinstance(t, OneOf):
            names = [c.applied_name for c in t.transforms]
            if entries and entries[0][0] in names:
                k = names.index(entries[0][0])
                name, params = entries.pop(0)
                out.append({"on": True, "choice": k, "child": t.transforms[k].params_from_albumentations(params, size)})
            else:
                out.append({"on": False})
        elif entries and entries[0][0] == t.applied_name:
            out.append({"on": True, **t.params_from_albumentations(entries.pop(0)[1], size)})
        else:
            out.append({"on": False})
    return out


def _stack(t: Transform, rows: list[dict]) -> dict:
    """One transform's per-image parameter dicts (missing where it was not applied) as (n, ...) tensors."""
    n = len(rows)
    if isinstance(t, OneOf):
        children = {}
        for k, c in enumerate(t.transforms):
            child_rows = [r["child"] if r["on"] and r["choice"] == k else {} for r in rows]
            child = _stack(c, [{"on": True, **r} for r in child_rows])
            children[str(k)] = child
        return {"on": torch.tensor([r["on"] for r in rows]),
                "choice": torch.tensor([r.get("choice", 0) for r in rows]), "children": children}
    keys = {k for r in rows for k in r if k != "on"}
    out = {"on": torch.tensor([bool(r["on"]) for r in rows])}
    for key in sorted(keys):
        sample = next(r[key] for r in rows if key in r and r[key] is not None) if any(
            key in r and r[key] is not None for r in rows) else None
        if sample is None:
            continue
        if isinstance(sample, np.ndarray) and sample.ndim == 3:       # a noise map, HWC
            blank = np.zeros_like(sample)
            out[key] = torch.from_numpy(np.stack([r.get(key, blank) for r in rows]).astype(np.float32)).permute(0, 3, 1, 2)
            continue
        blank = [0] * len(sample) if isinstance(sample, (list, tuple)) else 0
        values = [r.get(key, blank) if r.get(key) is not None else blank for r in rows]
        floating = any(isinstance(v, float) or (isinstance(v, list) and any(isinstance(x, float) for x in v))
                       for v in values)
        out[key] = torch.tensor(values, dtype=torch.float64 if floating else torch.int64)
    del n
    return out


# ---------------------------------------------------------------------------------------------
# replay parity
# ---------------------------------------------------------------------------------------------

def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    diff = np.abs(ref.astype(np.int16) - out.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"max_diff": int(diff.max()) if diff.size else 0, "share": float((diff > 0).mean()) if diff.size else 0.0,
            "psnr": math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)}


def groups(policy: AugmentPolicy) -> list[tuple[int, int]]:
    """(first, last + 1) of each run of transforms that starts and ends at the image size: one transform, or those
    that move the frame and the one that brings it back (PadIfNeeded + RandomCrop)."""
    sizes, out, start = policy.sizes(), [], 0
    for k in range(len(policy.transforms)):
        if sizes[k + 1] == sizes[0]:
            out.append((start, k + 1))
            start = k + 1
    return out


def _replay(module, batch, images, policy, seed):
    ref, applied = albumentations_run(images, policy, seed)
    params = params_from_albumentations(policy, applied)
    return ref, module.replay(batch, params, policy).cpu().numpy()


def replay_parity(engine: str, images: np.ndarray, policy: AugmentPolicy, seed: int = 0, device="cpu"):
    """Returns (checks, (reference, engine output) of the whole policy) on uint8 NHWC ``images``."""
    module = engine_module(engine)
    if not hasattr(module, "replay"):
        return [Check("pixel", f"{engine} cannot replay parameters", True, "pixel parity not applicable")], None
    reason = policy.unreproduced(engine)
    if reason:
        return [Check("pixel", "policy", False, reason)], None
    batch = torch.from_numpy(np.array(images)).to(device)
    checks, parts = [], []
    for first, last in groups(policy):
        sub = policy.with_transforms(*policy.transforms[first:last])
        ref, out = _replay(module, batch, images, sub, seed)
        levels, share = max(tolerance(t)[0] for t in sub.transforms), sum(tolerance(t)[1] for t in sub.transforms)
        parts.append(share)
        c = compare(ref, out)
        passed = c["max_diff"] <= levels and c["share"] <= share
        rule = "exact" if levels == 0 else f"<= {levels} level, <= {100 * share:g}% differ"
        checks.append(Check("pixel", " + ".join(t.name for t in sub.transforms), passed,
                            f"max diff {c['max_diff']}, {100 * c['share']:.4f}% differ, PSNR {c['psnr']:.1f} dB "
                            f"({rule}, {len(images)} images)"))
    full = None
    if len(policy.transforms) > 1:
        ref, out = _replay(module, batch, images, policy, seed)
        c = compare(ref, out)
        allowed = WHOLE_POLICY_FACTOR * sum(parts)
        checks.append(Check("pixel", "whole policy (p as drawn)", c["share"] <= allowed,
                            f"max diff {c['max_diff']}, {100 * c['share']:.4f}% differ, PSNR {c['psnr']:.1f} dB "
                            f"(<= {100 * allowed:g}% differ: a level's difference may cross a threshold further "
                            f"on; {len(images)} images)"))
        full = (ref, out)
    elif checks:
        full = _replay(module, batch, images, policy, seed)
    return checks, full


def device_difference(engine: str, images: np.ndarray, policy: AugmentPolicy, device, seed: int = 0) -> Check:
    """The engine's output on ``device`` against its own output on the CPU, for the same parameters: where a
    GPU's operators round differently from the CPU's (DALI's warp may), by how much. A figure, not a rule."""
    module = engine_module(engine)
    params = policy.sample(len(images), torch.Generator().manual_seed(seed))
    batch = torch.from_numpy(np.array(images))
    on_device = module.replay(batch.to(device), params, policy).cpu().numpy()
    on_cpu = module.replay(batch, params, policy).numpy()
    c = compare(on_cpu, on_device)
    return Check("pixel", f"{torch.device(device).type} against CPU", True,
                 f"max diff {c['max_diff']}, {100 * c['share']:.4f}% of values differ ({len(images)} images, the "
                 f"same parameters; a figure)")


# ---------------------------------------------------------------------------------------------
# sampler parity: our draws against albumentations' own
# ---------------------------------------------------------------------------------------------

def _leaves(transforms, prefix=()):
    for k, t in enumerate(transforms):
        if isinstance(t, OneOf):
            yield (*prefix, k), t
            for j, c in enumerate(t.transforms):
                yield (*prefix, k, j), c
        else:
            yield (*prefix, k), t


def _draws(params: PolicyParams, path, applied_only=True) -> dict[str, np.ndarray]:
    """The values a transform (at ``path`` in the policy tree) drew for the samples it applied to."""
    d = params.items[path[0]]
    on = d["on"].cpu().numpy()
    if len(path) == 2:              # a OneOf's child: where the OneOf applied and picked it
        on = on & (d["choice"].cpu().numpy() == path[1])
        d = d["children"][str(path[1])]
    out = {}
    for key, v in d.items():
        if key == "on" or isinstance(v, dict) or key in ("noise", "seed"):
            continue
        v = v.cpu().numpy()
        out[key] = v[on] if applied_only else v
    out["on"] = on
    return out


def _one_check(name: str, mine: np.ndarray, ref: np.ndarray) -> Check:
    from scipy.stats import ks_2samp
    mine, ref = np.asarray(mine, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    if len(mine) == 0 or len(ref) == 0:
        return Check("sampler", f"{name} (KS)", len(mine) == len(ref), f"ours drew {len(mine)}, albumentations "
                                                                        f"{len(ref)} values")
    if np.ptp(mine) == 0 and np.ptp(ref) == 0:
        return Check("sampler", name, mine[0] == ref[0], f"fixed: ours {mine[0]:.4g}, albumentations {ref[0]:.4g}")
    ks = ks_2samp(mine, ref)
    return Check("sampler", f"{name} (KS)", ks.pvalue > KS_MIN_P,
                 f"D {ks.statistic:.4f}, p {ks.pvalue:.3g} (> {KS_MIN_P:g}); ours {mine.min():.3g}..{mine.max():.3g}, "
                 f"albumentations {ref.min():.3g}..{ref.max():.3g}")


def _holes_present(d: dict) -> np.ndarray:
    return (d["hole_h"] > 0) | (d["hole_w"] > 0)


def sampler_parity(images: np.ndarray, policy: AugmentPolicy, seed: int = 0) -> list[Check]:
    """Each transform's sampler against albumentations' draws over ``images``: its rate, and each parameter's
    distribution (KS) over the samples it applied to."""
    n = len(images)
    _, applied = albumentations_run(images, policy, seed + 1)
    theirs = params_from_albumentations(policy, applied, complete=False)
    ours = policy.sample(n, torch.Generator().manual_seed(seed))
    checks = []
    for path, t in _leaves(policy.transforms):
        mine, ref = _draws(ours, path), _draws(theirs, path)
        label = "/".join(str(p) for p in path) + f" {t.name}"
        p = t.p if len(path) == 1 else None
        if p is not None:
            tol = RATE_SIGMAS * math.sqrt(max(p * (1 - p), 1e-12) / n)
            rate, ref_rate = float(mine["on"].mean()), float(ref["on"].mean())
            checks.append(Check("sampler", f"{label} rate", abs(rate - p) <= tol and abs(ref_rate - p) <= tol,
                                f"ours {rate:.4f}, albumentations {ref_rate:.4f}, p {p} (± {tol:.4f}, n={n})"))
        if isinstance(t, OneOf):
            on_m, on_r = mine["on"], ref["on"]
            picked = min(int(on_m.sum()), int(on_r.sum()))      # the draws each share is over
            for k in range(len(t.transforms)):
                mine_k = float((ours.items[path[0]]["choice"].numpy()[on_m] == k).mean())
                ref_k = float((theirs.items[path[0]]["choice"].numpy()[on_r] == k).mean())
                checks.append(_share_check(f"{label} picks {t.transforms[k].name}", mine_k, ref_k,
                                           image_share_tolerance(mine_k, ref_k, max(picked, 1))))
            continue
        for key in sorted(set(mine) & set(ref) - {"on"}):
            a, b = mine[key], ref[key]
            if isinstance(t, _Holes) and key.startswith("hole"):      # every hole drawn, of the applied samples
                pm, pr = _holes_present({k: mine[k] for k in ("hole_h", "hole_w")}), \
                    _holes_present({k: ref[k] for k in ("hole_h", "hole_w")})
                a, b = a[pm], b[pr]
            if key == "order":          # a permutation: compare where each op lands
                for op in range(4):
                    checks.append(_one_check(f"{label} step of op {op}", np.argmax(a == op, 1), np.argmax(b == op, 1)))
                continue
            checks.append(_one_check(f"{label} {key}", a, b))
        if isinstance(t, _Holes):
            pm = _holes_present({k: mine[k] for k in ("hole_h", "hole_w")}).sum(-1)
            pr = _holes_present({k: ref[k] for k in ("hole_h", "hole_w")}).sum(-1)
            checks.append(_one_check(f"{label} holes", pm, pr))
    return checks


def _share_check(name, mine, ref, tol):
    return Check("sampler", name, abs(mine - ref) <= tol, f"ours {mine:.4f}, albumentations {ref:.4f} (± {tol:.4f})")


# ---------------------------------------------------------------------------------------------
# statistical parity: an engine's epoch against albumentations'
# ---------------------------------------------------------------------------------------------

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
    engines agree, on real or generated pictures alike and at any epoch size."""
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


def hole_fills(policy: AugmentPolicy) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 fill) of each hole transform of the policy: the shares of pixels equal to them are compared."""
    from pipeline.transforms import truncated_fill
    out = []
    for _, t in _leaves(policy.transforms):
        if isinstance(t, _Holes):
            fill = np.array(truncated_fill(policy.fills.of(t.fill)), np.uint8)
            if not any(np.array_equal(fill, f) for _, f in out):
                out.append((t.name, fill))
    return out


def image_share_tolerance(a: float, b: float, n: int) -> float:
    """Two epochs' shares of n images each, drawn apart: RATE_SIGMAS standard deviations of their difference."""
    share = (a + b) / 2
    return max(SHARE_TOL / 2, RATE_SIGMAS * math.sqrt(share * (1 - share) * 2 / n))


def image_statistics(engine_out, ref_out, source, policy) -> list[Check]:
    from scipy.stats import ks_2samp
    checks = []
    n = len(source)
    same_size = engine_out.shape == source.shape
    if same_size:
        a, b = np.all(engine_out == source, (1, 2, 3)).mean(), np.all(ref_out == source, (1, 2, 3)).mean()
        tol = image_share_tolerance(a, b, n)
        checks.append(Check("statistical", "share of images unchanged", abs(a - b) <= tol,
                            f"engine {a:.4f}, albumentations {b:.4f} (± {tol:.4f}, n={n})"))
    grey = lambda o: ((o[..., 0] == o[..., 1]) & (o[..., 1] == o[..., 2])).all((1, 2))    # noqa: E731
    src_grey = grey(source).mean()
    a, b = grey(engine_out).mean(), grey(ref_out).mean()
    tol = image_share_tolerance(a, b, n)
    checks.append(Check("statistical", "share of grey images", abs(a - b) <= tol,
                        f"engine {a:.4f}, albumentations {b:.4f} (sources {src_grey:.4f}; ± {tol:.4f}, n={n})"))
    for name, fill in hole_fills(policy):
        a, b = np.all(engine_out == fill, -1).mean(), np.all(ref_out == fill, -1).mean()
        checks.append(Check("statistical", f"share of pixels of the {name} fill", abs(a - b) <= SHARE_TOL,
                            f"engine {a:.4f}, albumentations {b:.4f} (± {SHARE_TOL})"))
    for what, stat in (("brightness", lambda o: o.reshape(len(o), -1).mean(1)),
                       ("contrast", lambda o: o.reshape(len(o), -1).std(1))):
        ks = ks_2samp(stat(engine_out), stat(ref_out))
        checks.append(Check("statistical", f"per-image {what} (KS)", ks.pvalue > KS_MIN_P,
                            f"D {ks.statistic:.4f}, p {ks.pvalue:.3g} (> {KS_MIN_P:g})"))
    z, rms, ch = mean_image_difference(engine_out, ref_out)
    # each channel's mean over the epoch, in standard errors of the difference of two epochs' means
    per_image = lambda o: o.reshape(len(o), -1, 3).mean(1)          # noqa: E731
    pe, pr = per_image(engine_out.astype(np.float64)), per_image(ref_out.astype(np.float64))
    se = np.sqrt(pe.var(0) / len(pe) + pr.var(0) / len(pr))
    ch_z = np.abs(pe.mean(0) - pr.mean(0)) / np.maximum(se, 1e-9)
    checks.append(Check("statistical", "mean augmented image",
                        z <= MEAN_IMAGE_Z_TOL and float(ch_z.max()) <= RATE_SIGMAS,
                        f"{z:.2f} standard errors RMS (<= {MEAN_IMAGE_Z_TOL}; RMS diff {rms:.3f} grey levels), "
                        f"channel means differ by {', '.join(f'{v:.3f}' for v in ch)} grey levels, "
                        f"{', '.join(f'{v:.1f}' for v in ch_z)} standard errors (<= {RATE_SIGMAS:g})"))
    return checks


def statistical_parity(engine: str, data_dir, policy: AugmentPolicy, seed: int = 0, device="cpu",
                       batch_size: int = 512, options: dict | None = None, sampler: bool = True) -> list[Check]:
    """The engine's epoch (its own random numbers; ``options`` go to its loader) against albumentations' epoch of
    the same images, and (``sampler``) each transform's sampler against albumentations' draws."""
    from pipeline import build_loader
    from pipeline.format import load_split
    split, _ = load_split(data_dir, "train")
    source = np.asarray(split.images)

    def run(name, s):
        extra = (options or {}) if name == engine else {}
        loader = build_loader(name, data_dir, "train", batch_size, device=device, seed=s, normalize=False,
                              return_index=True, policy=policy, **extra)
        return _epoch(loader)

    checks = sampler_parity(source, policy, seed) if sampler else []
    eng, idx_e = run(engine, seed)
    ref, idx_r = run("torch", seed + 1)
    order_e, order_r = np.argsort(idx_e, kind="stable"), np.argsort(idx_r, kind="stable")
    if not np.array_equal(idx_e[order_e], idx_r[order_r]):
        raise ValueError(f"{engine}'s epoch and the reference's cover different images: compare whole epochs")
    return checks + image_statistics(eng[order_e], ref[order_r], source[idx_e[order_e]], policy)


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
    from pipeline.cli import HelpFormatter, run_main
    from pipeline.format import load_split
    from pipeline.output import resolve_device

    ap = argparse.ArgumentParser(prog="python -m pipeline.parity", formatter_class=HelpFormatter,
                                 description="Check an engine against albumentations running the same Compose: pixel "
                                             "parity with albumentations' own applied parameters replayed (engines "
                                             "that replay them), each sampler against albumentations' draws, and "
                                             "statistical parity over an epoch. Exit code 1 on any failure.")
    ap.add_argument("--loader", required=True, help=f"engine: {', '.join(known_loaders())}")
    ap.add_argument("--data-dir", default="data/cifar10", help="converted data (cifar10-mini is plenty)")
    ap.add_argument("--out", default=None, help="folder for parity-<loader>.png (default: no picture)")
    ap.add_argument("--images", type=int, default=2000, help="images for pixel parity")
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
        for title, checks in (("pixel parity (albumentations' parameters replayed)", pixel),
                              ("samplers and statistical parity (one epoch)", stats)):
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
