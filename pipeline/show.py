"""A picture of what an engine does: source images beside their augmented versions.

    python -m pipeline.show --loader torch --data-dir DIR --out grid.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def augmented_pairs(loader_name: str, data_dir, count: int, seed: int, device="cpu", policy=None):
    """(sources, augmented, labels) of ``count`` images from the engine's first training batch (with ``policy``,
    or the project's)."""
    from pipeline import build_loader
    from pipeline.format import load_split

    loader = build_loader(loader_name, data_dir, "train", count, device=device, seed=seed,
                          normalize=False, return_index=True, policy=policy)
    images, labels, idx = next(iter(loader))
    split, meta = load_split(data_dir, "train")
    sources = np.asarray(split.images[idx.cpu().numpy()])
    augmented = images.permute(0, 2, 3, 1).cpu().numpy()
    return sources, augmented, labels.cpu().numpy(), meta["classes"]


def save_grid(path, sources, augmented, labels, classes, title: str, cols: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(sources)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.3, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, cols)
        for j, (img, what) in enumerate(((sources[k], "source"), (augmented[k], "augmented"))):
            ax = axes[r][2 * c + j]
            ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{classes[labels[k]]}\n{what}" if j == 0 else what, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from pipeline import known_loaders
    from pipeline.albu_import import add_policy_arguments, policy_for
    from pipeline.cli import run_main
    from pipeline.format import read_meta
    from pipeline.output import resolve_device

    ap = argparse.ArgumentParser(prog="python -m pipeline.show",
                                 description="Save a grid of training images beside the versions an engine "
                                             "augments them into (one batch, normalize=False).")
    ap.add_argument("--loader", default="torch", help=f"engine: {', '.join(known_loaders())} (default torch)")
    ap.add_argument("--data-dir", default="data/cifar10", help="converted data folder (default data/cifar10)")
    ap.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    ap.add_argument("--count", type=int, default=16, help="number of image pairs (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    add_policy_arguments(ap)
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")

    def body():
        policy, notes = policy_for(read_meta(args.data_dir), args.policy, strict=args.strict_policy)
        for note in notes:
            print(f"note: {note}")
        sources, augmented, labels, classes = augmented_pairs(args.loader, args.data_dir, args.count,
                                                              args.seed, resolve_device(args.device), policy)
        what = f", --policy {Path(args.policy).name}" if args.policy else ""
        save_grid(args.out, sources, augmented, labels, classes,
                  f"--loader {args.loader}{what}: source | augmented (seed {args.seed})")
        print(f"wrote {args.out}")
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
