"""Release a trained checkpoint as small, weights-only files.

    python -m model.release --checkpoint runs/NAME/checkpoint.pt --out weights/c1c2c3c4-cifar10.pt

Writes the model weights with their arch, config and metrics (no optimizer or RNG state) into OUT,
and the same config and metrics as JSON beside it (OUT with .json), so that
``python -m model.evaluate --checkpoint OUT --data-dir DIR`` reproduces the recorded test accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError, load, model_from_checkpoint, save_atomic, write_text_atomic
from model import custom
from model.net import layout


def release(checkpoint, out) -> dict:
    ckpt = load(checkpoint)
    net = model_from_checkpoint(ckpt, checkpoint)
    final = ckpt["metrics"][-1] if ckpt.get("metrics") else {}
    facts = custom.facts(net)
    card = {"arch": ckpt["arch"], "widths": facts["widths"], "activation": facts["activation"],
            "parameters": facts["parameters"], "model_spec": ckpt.get("model_spec"),
            "receptive_field": facts["receptive_field"], "epochs": ckpt.get("epoch"), "test_acc": final.get("test_acc"),
            "metrics": ckpt.get("metrics", []), "config": ckpt.get("config", {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": {k: v.clone() for k, v in net.state_dict().items()}, "arch": ckpt["arch"],
                 "widths": facts["widths"], **({"model_spec": ckpt["model_spec"]} if "model_spec" in ckpt else {}),
                 "layout": layout(net), "activation": facts["activation"], "num_classes": ckpt.get("num_classes", 10),
                 "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", []),
                 "config": ckpt.get("config", {})}, out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return {"path": str(out), "bytes": out.stat().st_size, **card}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.release", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from pipeline.cli import run_main       # the command-line boundary (an entry point, like model.evaluate)

    def body():
        r = release(args.checkpoint, args.out)
        print(f"wrote {r['path']} ({r['bytes']:,} bytes): {r['arch']}, {r['parameters']:,} parameters, "
              f"test accuracy {100 * (r['test_acc'] or 0):.2f}% after {r['epochs']} epochs")
    return run_main(body, expected=(CheckpointError,))


if __name__ == "__main__":
    sys.exit(main())
