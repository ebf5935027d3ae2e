"""Convert CIFAR-10, once, into the project's binary format (see pipeline/format.py).

    python -m pipeline.convert --source SRC --out DIR [--force]

SRC is one of: ``download`` (the official tar.gz, md5-verified); a ``cifar-10-batches-py`` folder, or the
folder holding it (as torchvision lays it out); the official ``cifar-10-python.tar.gz``; an image-folder tree
or archive laid out as ``train/<class>/*.jpg|png`` and ``test/<class>/...``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.format import DataError, atomic_dir, read_meta, write_dataset
from pipeline.sources import describe, read_source


def convert(source: str, out: str | Path, force: bool = False, log=print) -> dict:
    """Convert ``source`` into ``out``; returns the meta. Does nothing (and says so) when ``out``
    already holds a conversion of the same, unchanged source, unless ``force``."""
    out = Path(out)
    desc = describe(source)
    if out.exists():
        existing = _existing_meta(out)
        if existing is None:
            if out.is_dir() and not any(out.iterdir()):
                pass  # an empty folder: fill it
            else:
                raise DataError(f"{out} exists and is not a converted dataset: pick another --out "
                                f"(it is never overwritten, even with --force).")
        elif existing.get("source") == desc and not force:
            log(f"{out} already holds this conversion of {_name(desc)}: nothing to do "
                f"(pass --force to convert again).")
            return existing
        elif not force:
            raise DataError(f"{out} already holds a conversion of another source "
                            f"({_name(existing.get('source', {}))}): pass --force to replace it.")
    arrays, classes = read_source(desc)
    with atomic_dir(out) as tmp:
        meta = write_dataset(tmp, arrays, classes, desc)
    log(f"converted {_name(desc)} -> {out}: {meta['counts']['train']} train, "
        f"{meta['counts']['test']} test images; mean {meta['mean']}, std {meta['std']}.")
    return meta


def write_betons(out) -> None:
    """The FFCV .beton of each split (needs ffcv: the engine module imports it)."""
    from pipeline import engine_module
    ffcv = engine_module("ffcv")          # LoaderUnavailable, with the install step, where ffcv is missing
    for split in ("train", "test"):
        print(f"{split}: {ffcv.ensure_beton(out, split)}")


def _existing_meta(out: Path) -> dict | None:
    try:
        return read_meta(out)
    except DataError:
        if (out / "meta.json").is_file():
            # ours, but unreadable or another format version: replaceable with --force
            try:
                return {"source": json.loads((out / "meta.json").read_text()).get("source")}
            except (OSError, ValueError, AttributeError):
                return {"source": None}
        return None


def _name(desc) -> str:
    if not isinstance(desc, dict):
        return "an unknown source"
    return desc.get("path") or desc.get("url") or desc.get("kind", "an unknown source")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.convert",
        description="Convert CIFAR-10 once into memory-mappable .npy arrays plus meta.json "
                    "(class names, counts, per-channel mean/std, sha256 of each array). The output "
                    "is written into a temporary folder and renamed into place, so an interrupted "
                    "run leaves nothing half-written.",
        epilog="examples:\n"
               "  python -m pipeline.convert --source download --out data/cifar10\n"
               "  python -m pipeline.convert --source ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz --out data/cifar10\n"
               "  python -m pipeline.convert --source ../shared/data/cifar10-mini/cifar-10-batches-py --out data/mini",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True,
                    help="'download' (official tar.gz, md5-checked; needs network), a cifar-10-batches-py "
                         "folder (or the folder holding it), the official cifar-10-python.tar.gz, or an "
                         "image-folder tree or archive (.tar/.tar.gz/.tgz/.zip) with train/<class>/*.jpg|png "
                         "and test/<class>/...")
    ap.add_argument("--out", required=True, help="folder to create (DIR/train_images.npy, ..., meta.json)")
    ap.add_argument("--force", action="store_true", help="convert again even if DIR already holds this conversion")
    ap.add_argument("--beton", action="store_true",
                    help="also write the FFCV .beton files (DIR/ffcv/; otherwise written on the ffcv loader's first use)")
    args = ap.parse_args(argv)
    try:
        convert(args.source, args.out, force=args.force)
        if args.beton:
            write_betons(args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  LoaderUnavailable (--beton without ffcv)
        from pipeline import LoaderUnavailable
        if not isinstance(e, LoaderUnavailable):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing was written to {args.out}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
