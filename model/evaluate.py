"""Evaluate a checkpoint on the converted test split.

    python -m model.evaluate --checkpoint weights/c1c2c3c4-cifar10.pt --data-dir data/cifar10

Prints test accuracy and per-class accuracy; writes a confusion-matrix PNG and a grid of
misclassified images next to the checkpoint (or into --out). This is an entry point: it reads the
data through pipeline/, while the model itself (model/net.py) knows nothing of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import DefaultsHelpFormatter


def checkpoint_policy(ckpt: dict, meta: dict):
    """The policy (mean/std) a checkpoint was trained with, so images are normalized as in training; for
    checkpoints without a config, the project's policy with the data's mean/std."""
    from pipeline.policy import AugmentPolicy
    return AugmentPolicy.from_dict(ckpt["config"]["policy"]) if "config" in ckpt else AugmentPolicy.from_meta(meta)


def predict(net, data_dir, policy, device, batch_size=500, tta_flip=False):
    from pipeline import build_loader
    loader = build_loader("torch", data_dir, "test", batch_size, device=device, augment=False,
                          policy=policy, return_index=True, num_workers=0)
    net.eval()
    preds, labels, index = [], [], []
    with torch.no_grad():
        for x, y, i in loader:
            logits = net(x).float()
            if tta_flip:
                logits = logits.softmax(1) + net(x.flip(3)).float().softmax(1)
            preds.append(logits.argmax(1).cpu())
            labels.append(y.cpu())
            index.append(i.cpu())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(index).numpy()


def confusion(preds, labels, k):
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def plot_confusion(cm, classes, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    norm = cm / cm.sum(1, keepdims=True)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_misclassified(images, true, pred, classes, path, count=40):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    count = min(count, len(images))
    cols = 8
    rows = max(1, (count + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(count):
        ax = axes.flat[k]
        ax.imshow(images[k], interpolation="nearest")
        ax.set_title(f"{classes[true[k]]}\n→ {classes[pred[k]]}", fontsize=7)
    fig.suptitle("misclassified test images (true → predicted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def default_out(checkpoint: Path, ckpt: dict) -> Path:
    """Where the PNGs go without --out: beside a training run's checkpoint (its own folder), but for released
    weights (no training state), whose folder holds the project's committed pictures, runs/evaluate/<name>/."""
    if "optimizer" in ckpt:
        return checkpoint.resolve().parent
    return Path("runs") / "evaluate" / checkpoint.stem


def main(argv=None) -> int:
    from model.checkpoint import CheckpointError, load, model_from_checkpoint, write_atomic
    from pipeline.cli import run_main
    from pipeline.format import load_split, read_meta
    from pipeline.output import resolve_device

    ap = argparse.ArgumentParser(prog="python -m model.evaluate",
                                 description="Test accuracy, per-class accuracy, a confusion-matrix PNG and a grid "
                                             "of misclassified images for a checkpoint.",
                                 formatter_class=DefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint.pt of train.py, or released weights")
    ap.add_argument("--data-dir", default="data/cifar10", help="converted data (python -m pipeline.convert)")
    ap.add_argument("--out", default=None,
                    help="folder for the PNGs (default: beside a run's checkpoint; runs/evaluate/NAME/ for "
                         "released weights, so the committed pictures beside them are never overwritten)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--tta-flip", action="store_true", help="also report accuracy with horizontal-flip averaging")
    args = ap.parse_args(argv)

    def body():
        device = resolve_device(args.device)
        ckpt = load(args.checkpoint)
        net = model_from_checkpoint(ckpt, args.checkpoint).to(device).to(memory_format=torch.channels_last)
        meta = read_meta(args.data_dir)
        policy = checkpoint_policy(ckpt, meta)
        preds, labels, index = predict(net, args.data_dir, policy, device)
        tta = predict(net, args.data_dir, policy, device, tta_flip=True)[0] if args.tta_flip else None
        test, _ = load_split(args.data_dir, "test")
        classes = meta["classes"]
        acc = float((preds == labels).mean())
        print(f"test accuracy: {100 * acc:.2f}% ({int((preds == labels).sum())}/{len(labels)}) "
              f"[{ckpt['arch']}, {args.checkpoint}]")
        if tta is not None:
            print(f"test accuracy with flip averaging: {100 * float((tta == labels).mean()):.2f}%")
        cm = confusion(preds, labels, len(classes))
        for c, name in enumerate(classes):
            print(f"  {name:<12}{100 * cm[c, c] / cm[c].sum():6.2f}%")
        out = Path(args.out) if args.out else default_out(Path(args.checkpoint), ckpt)
        out.mkdir(parents=True, exist_ok=True)
        stem = Path(args.checkpoint).stem
        conf, wrong_png = out / f"{stem}-confusion.png", out / f"{stem}-misclassified.png"
        write_atomic(conf, lambda f: plot_confusion(cm, classes, f, f"{ckpt['arch']}: test accuracy {100 * acc:.2f}%"))
        wrong = np.nonzero(preds != labels)[0]
        write_atomic(wrong_png, lambda f: plot_misclassified(np.asarray(test.images[index[wrong]]), labels[wrong],
                                                            preds[wrong], classes, f))
        print(f"wrote {conf} and {wrong_png}")
    return run_main(body, expected=(CheckpointError,), interrupted="interrupted: no picture was half-written.")


if __name__ == "__main__":
    sys.exit(main())
