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

from pipeline.cli import run_main
from pipeline.format import (DataError, atomic_dir, exclusive, owned_dataset, read_meta, replaceable,
                             write_dataset)
from pipeline.sources import describe, read_source


def convert(source: str, out: str | Path, force: bool = False, log=print) -> dict:
    """Convert ``source`` into ``out``; returns the meta. Does nothing (and says so) when ``out``
    already holds a conversion of the same, unchanged source, unless ``force``. A folder that is not
    provably a conversion of ours is never replaced, ``force`` or not."""
    out = replaceable(out)
    desc = describe(source)
    with exclusive(out):
        if out.exists():
            existing, valid = _existing_meta(out)
            if valid and existing.get("source") == desc and not force:
                log(f"{out} already holds this conversion of {_name(desc)}: nothing to do "
                    f"(pass --force to convert again).")
                return existing
            _check_replaceable(out, existing, valid, force)
        arrays, classes = read_source(desc)
        with atomic_dir(out) as tmp:
            meta = write_dataset(tmp, arrays, classes, desc)
    log(f"converted {_name(desc)} -> {out}: {meta['counts']['train']} train, "
        f"{meta['counts']['test']} test images; mean {meta['mean']}, std {meta['std']}.")
    return meta


def _check_replaceable(out: Path, existing: dict | None, valid: bool, force: bool) -> None:
    """Raise unless ``out`` may be written: an empty folder, or (with ``force``) a converted folder of ours."""
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder: pick another --out.")
    ours, foreign = owned_dataset(out)
    if not ours:
        if not foreign and existing is None:
            return                                  # an empty folder: fill it
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        why = (f"it holds files a conversion never writes ({listed})" if foreign
               else "its meta.json is not this tool's")
        raise DataError(f"{out} exists and is not a converted dataset ({why}): it is never replaced, "
                        f"even with --force; pick another --out.")
    if not force and not valid:
        raise DataError(f"{out} holds a conversion that is damaged, edited or of another format version: "
                        f"pass --force to convert again.")
    if not force:
        raise DataError(f"{out} already holds a conversion of another source "
                        f"({_name((existing or {}).get('source', {}))}): pass --force to replace it.")


def write_betons(out) -> None:
    """The FFCV .beton of each split (needs ffcv: the engine module imports it)."""
    from pipeline import engine_module
    ffcv = engine_module("ffcv")          # LoaderUnavailable, with the install step, where ffcv is missing
    for split in ("train", "test"):
        print(f"{split}: {ffcv.ensure_beton(out, split)}")


def _existing_meta(out: Path) -> tuple[dict | None, bool]:
    """(meta.json's content, or None where there is none or it is no JSON object; whether it reads as a valid
    conversion of this version)."""
    try:
        return read_meta(out), True
    except DataError:
        try:
            meta = json.loads((out / "meta.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None, False
        return (meta if isinstance(meta, dict) else None), False


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

    def body():
        convert(args.source, args.out, force=args.force)
        if args.beton:
            write_betons(args.out)
    return run_main(body, interrupted=f"interrupted: {args.out} was left as it was (nothing half-written).")


if __name__ == "__main__":
    sys.exit(main())
