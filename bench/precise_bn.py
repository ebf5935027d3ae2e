"""Do BatchNorm statistics recomputed after training change the test accuracy of trained checkpoints?

    python -m bench.precise_bn --data-dir data/cifar10 CHECKPOINT [CHECKPOINT ...] [--images 50000]

While a net trains, each BatchNorm keeps a running average of batch statistics with momentum 0.1, so the
statistics a checkpoint tests with come mostly from its last few dozen batches. This recomputes them as a
plain average over --images training images ("precise BN"), in batches of --batch-size as in training, once
through the training policy (what the net was trained on) and once with no augmentation at all (what test
images look like), and scores each on the test split. The weights are not touched, and no test image is used
to compute the statistics. Writes a markdown + JSON report (--out) with each checkpoint's three accuracies.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch

from pipeline.cli import DefaultsHelpFormatter

VARIANTS = {"augmented": True, "clean": False}      # report column -> augment the recomputing images


def recompute_bn(net: torch.nn.Module, loader, images: int) -> int:
    """Reset every BatchNorm's running statistics and average them (torch.optim.swa_utils.update_bn: a
    cumulative mean, momenta restored after) over the first ``images`` images of ``loader``; leaves the net
    in eval mode and returns how many images were used."""
    seen = 0

    def first_images():
        nonlocal seen
        for x, *_ in loader:
            if seen >= images:
                return
            yield x[:images - seen]
            seen += min(len(x), images - seen)

    torch.optim.swa_utils.update_bn(first_images(), net)
    net.eval()
    return seen


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"                               # noqa: E731
    lines = [f"# BatchNorm statistics recomputed after training, on {report['device']}", "",
             f"{report['date']}; `{report['command']}`", "",
             f"Each checkpoint as trained, then with its BatchNorm statistics recomputed over {report['images']:,} "
             f"training images (batches of {report['batch_size']}): through the training policy (augmented) and "
             f"without augmentation (clean). Test accuracy on the {report['test_images']:,} test images, fp32.", "",
             "| checkpoint | as trained | augmented | clean |", "| --- | --- | --- | --- |"]
    for r in report["checkpoints"]:
        lines.append(f"| `{r['checkpoint']}` | {pct(r['as_trained'])} | {pct(r['augmented'])} | {pct(r['clean'])} |")
    for name in VARIANTS:
        d = report["mean_difference"][name]
        lines.append("")
        lines.append(f"{name}: {100 * d['mean']:+.2f} points on average against the statistics as trained "
                     f"(per checkpoint: {', '.join(f'{100 * x:+.2f}' for x in d['each'])}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """The command line, behind the project's boundary (pipeline.cli): a failure of the OS is one sentence."""
    from pipeline.cli import run_main
    return run_main(lambda: _main(argv))


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.precise_bn", description=__doc__.split("\n\n")[0],
                                 formatter_class=DefaultsHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of train.py, or released weights")
    ap.add_argument("--data-dir", required=True, help="converted data (python -m pipeline.convert)")
    ap.add_argument("--images", type=int, default=50_000, help="training images to average the statistics over")
    ap.add_argument("--batch-size", type=int, default=128, help="as in training: the statistics are per batch")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--seed", type=int, default=0, help="order and augmentation of the recomputing images")
    ap.add_argument("--out", default="bench/results", help="where the report goes")
    args = ap.parse_args(argv)
    if args.images < 1 or args.batch_size < 1:
        ap.error("--images and --batch-size must be positive")

    from bench.__main__ import choose_device, device_name
    from model.checkpoint import CheckpointError, load, model_from_checkpoint, write_text_atomic
    from model.evaluate import checkpoint_policy, predict
    from pipeline import build_loader
    from pipeline.format import DataError, read_meta

    rows = []
    try:
        meta = read_meta(args.data_dir)
        device = torch.device(choose_device(args.device))
        desc, slug = device_name(device.type)
        for path in args.checkpoints:
            ckpt = load(path)
            policy = checkpoint_policy(ckpt, meta)
            row = {"checkpoint": str(path)}
            for name in ("as_trained", *VARIANTS):
                net = model_from_checkpoint(ckpt, path).to(device).to(memory_format=torch.channels_last)
                if name in VARIANTS:
                    loader = build_loader("gpu", args.data_dir, "train", args.batch_size, device=device,
                                          augment=VARIANTS[name], policy=policy, seed=args.seed)
                    row["images"] = recompute_bn(net, loader, args.images)
                preds, labels, _ = predict(net, args.data_dir, policy, device)
                row[name] = float((preds == labels).mean())
                row["test_images"] = len(labels)
                print(f"{path}: {name} {100 * row[name]:.2f}%", flush=True)
            rows.append(row)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diffs = {name: [r[name] - r["as_trained"] for r in rows] for name in VARIANTS}
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": desc,
              "command": "python -m bench.precise_bn " + " ".join(argv), "images": rows[0]["images"],
              "batch_size": args.batch_size, "test_images": rows[0]["test_images"], "checkpoints": rows,
              "mean_difference": {k: {"mean": statistics.fmean(v), "each": v} for k, v in diffs.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{slug}-precise-bn"
    write_text_atomic(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / f"{stem}.md", markdown(report))
    print(markdown(report), end="")
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
