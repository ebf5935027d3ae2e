"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``, checked with a sentence.
Also the atomic writer every run file and report goes through (train.py, model.release, bench)."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from model.net import ACTIVATIONS, ARCHS, build_model, layout


class CheckpointError(Exception):
    """A missing, corrupt or incompatible checkpoint. The message is one sentence for the user."""


def write_atomic(path, write) -> None:
    """``write(f)`` into a temporary file beside ``path`` (opened "wb"), fsync, then rename over ``path``:
    after a crash or Ctrl-C the old file or the new one is there, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save, atomically: never half a checkpoint."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        text = str(e)
        if "Unsupported global" in text:
            what = text[text.index("Unsupported global"):].split(" was not")[0]
            reason = f"it holds more than weights and plain data ({what}), so it was not loaded"
        else:
            reason = "corrupt, truncated or not a PyTorch checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason}.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not a cifarflow checkpoint (no model weights and arch).")
    return ckpt


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "epoch", "metrics", "config")


def require_resumable(ckpt: dict, path) -> None:
    """A checkpoint that --resume can continue holds the whole training state, not only weights (released weights
    copied in as checkpoint.pt do not): CheckpointError with a sentence otherwise."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if not missing and not (isinstance(ckpt["config"], dict) and isinstance(ckpt["config"].get("args"), dict)):
        missing = ["config.args"]
    if missing:
        raise CheckpointError(f"{path} holds weights without the training state ({', '.join(missing)} missing), "
                              f"as released weights do: it can be evaluated (python -m model.evaluate), not "
                              f"resumed; start a new run with another --out.")


def checkpoint_activation(ckpt: dict) -> str:
    """The name of the nonlinearity a checkpoint's net was trained with (what model_from_checkpoint builds,
    what train.py --resume compares): checkpoints from before the field was stored are all ReLU nets."""
    return ckpt.get("activation", "relu")


CUSTOM = "custom"       # the arch of a model brought with --model (model/custom.py); its checkpoint holds model_spec


def model_from_checkpoint(ckpt: dict, path="checkpoint", arch: str | None = None) -> torch.nn.Module:
    """The model a checkpoint holds; ``arch`` (if given) must be the checkpoint's. A model brought with --model is
    rebuilt through the spec it was trained with, refused if its file changed since."""
    if ckpt["arch"] == CUSTOM:
        return _custom_from_checkpoint(ckpt, path, arch)
    if ckpt["arch"] not in ARCHS:
        raise CheckpointError(f"{path} holds an unknown arch {ckpt['arch']!r}.")
    if arch is not None and arch != ckpt["arch"]:
        raise CheckpointError(f"{path} holds a {ckpt['arch']!r} model, not {arch!r}: pass --arch {ckpt['arch']} "
                              f"or another checkpoint.")
    saved_act = checkpoint_activation(ckpt)
    if saved_act not in ACTIVATIONS:
        raise CheckpointError(f"{path} holds a model with {saved_act!r} activations, which this version does not "
                              f"build (it knows {', '.join(ACTIVATIONS)}): use the version that wrote it.")
    try:    # checkpoints without widths hold the arch's own
        net = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("widths"), saved_act)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} holds unusable widths: {e}") from None
    _load_weights(net, ckpt, path, f"the {ckpt['arch']!r} model of this version")
    return net


def _custom_from_checkpoint(ckpt: dict, path, arch) -> torch.nn.Module:
    from model.custom import ModelSpecError, rebuild
    record = ckpt.get("model_spec")
    if not isinstance(record, dict) or "spec" not in record:
        raise CheckpointError(f"{path} holds a model brought with --model, but not the spec it was built from.")
    if record["spec"] is None:
        raise CheckpointError(f"{path} was trained from Python with a model object ({record.get('object')}): build "
                              f"that model in your code and load the checkpoint's 'model' weights into it.")
    if arch is not None and arch != CUSTOM:
        raise CheckpointError(f"{path} holds the model {record['spec']}, not the built-in {arch!r}: pass "
                              f"--model {record['spec']}.")
    try:
        net = rebuild(record, ckpt.get("num_classes", 10), path)
    except ModelSpecError as e:
        raise CheckpointError(str(e)) from None
    _load_weights(net, ckpt, path, f"{record['spec']} as it is now")
    return net


def checkpoint_weights(ckpt: dict) -> dict:
    """The checkpoint's weights, named as the bare model names them (a compiled or DDP-wrapped net saved its own
    prefixes)."""
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in ckpt["model"].items()}


def _load_weights(net, ckpt: dict, path, what: str) -> None:
    """The checkpoint's weights into ``net``, then its layout checked: CheckpointError naming ``what`` otherwise."""
    try:
        net.load_state_dict(checkpoint_weights(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {what} ({str(e).splitlines()[0][:160]}).") from None
    _check_layout(ckpt, net, path)


def _check_layout(ckpt: dict, net, path) -> None:
    # shapes first (another arch), then the layout (the same shapes, strides or dilations moved)
    saved = ckpt.get("layout")
    if saved is not None and [list(x) for x in saved] != layout(net):
        raise CheckpointError(f"{path} was trained with another layout of the {ckpt['arch']!r} model (strides or "
                              f"dilations differ from what this version builds): use the version that wrote it.")
