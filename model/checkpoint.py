"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``, checked with a sentence.
Also the atomic writer every run file and report goes through (train.py, model.release, bench)."""
from __future__ import annotations

import io
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
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(path: Path) -> None:
    """The temporary files that a writer of ``path`` killed at the wrong moment left beside it (``.NAME.tmp-PID``
    of a process that is gone): removed when the file is next written."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save, atomically: never half a checkpoint. Serialized in memory first and written as plain bytes, so
    that a full disk is the OSError it is (torch.save's own writer reports it as a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()))


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
    check_contents(ckpt, path)
    return ckpt


# ---------------------------------------------------------------------------------------------
# the schema: every field a reader uses, of its type and range
# ---------------------------------------------------------------------------------------------

def _whole(v, low=0, high=None) -> bool:
    return type(v) is int and v >= low and (high is None or v <= high)


def _finite(v) -> bool:
    return type(v) in (int, float) and v == v and abs(v) != float("inf")


def _weights_problem(weights) -> str | None:
    """What makes ``weights`` no state dict of finite tensors, or None."""
    if not isinstance(weights, dict) or not weights:
        return f"its weights are a {type(weights).__name__}, not a dict of named tensors"
    for name, t in weights.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            return f"its weights hold {name!r}: {type(t).__name__}, not a named tensor"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"its weights are not finite numbers (NaN or infinity) in {name}"
    return None


_METRIC_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _metrics_problem(metrics) -> str | None:
    if not isinstance(metrics, list):
        return f"its metrics are a {type(metrics).__name__}, not a list of epochs"
    for k, m in enumerate(metrics):
        if not isinstance(m, dict) or m.get("epoch") != k + 1:
            return f"its metrics entry {k + 1} is not epoch {k + 1}'s"
        bad = [f for f in _METRIC_FIELDS if f in m and not _finite(m[f])]
        if bad or not all(f in m for f in _METRIC_FIELDS):
            return f"its metrics of epoch {k + 1} hold {bad[0] if bad else 'no'} " + (
                f"= {m[bad[0]]!r}, not a finite number" if bad else "losses and accuracies")
    return None


def check_contents(ckpt: dict, path) -> None:
    """CheckpointError with a sentence unless every field a reader uses is of its type and range: the weights (a
    dict of finite tensors), the arch, and where present widths, layout, activation, number of classes, the epoch,
    the metrics, the config and the model spec. Holds for training checkpoints and released weights alike."""
    def need(cond, what):
        if not cond:
            raise CheckpointError(f"{path} is not a usable cifarflow checkpoint: {what}.")
    need(isinstance(ckpt["arch"], str), f"its arch is {ckpt['arch']!r}, not a name")
    problem = _weights_problem(ckpt["model"])
    need(problem is None, problem)
    if "trained_model" in ckpt:
        problem = _weights_problem(ckpt["trained_model"])
        need(problem is None, (problem or "").replace("its weights", "its trained (not averaged) weights"))
    widths = ckpt.get("widths")
    need(widths is None or (isinstance(widths, list) and all(_whole(w, 1, 1 << 16) for w in widths)),
         f"its widths are {widths!r}, not a list of channel counts")
    layout_ = ckpt.get("layout")
    need(layout_ is None or (isinstance(layout_, list) and all(isinstance(row, list) and all(type(v) is int for v in row)
                                                               for row in layout_)),
         "its layout is not a list of whole-number rows")
    need(ckpt.get("activation") is None or isinstance(ckpt["activation"], str),     # None: a --model's own
         f"its activation is {ckpt.get('activation')!r}, not a name")
    need(_whole(ckpt.get("num_classes", 10), 2, 100_000),
         f"its number of classes is {ckpt.get('num_classes')!r}, not a whole number from 2")
    need(ckpt.get("epoch") is None or _whole(ckpt["epoch"]), f"its epoch is {ckpt.get('epoch')!r}, not a whole number")
    need(isinstance(ckpt.get("config", {}), dict), "its config is not a dict")
    need(ckpt.get("model_spec") is None or isinstance(ckpt["model_spec"], dict), "its model_spec is not a dict")
    if "metrics" in ckpt:
        problem = _metrics_problem(ckpt["metrics"])
        need(problem is None, problem)


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "epoch", "metrics", "config")


def require_resumable(ckpt: dict, path) -> None:
    """A checkpoint that --resume can continue holds the whole training state, not only weights (released weights
    copied in as checkpoint.pt do not), each part of its type, and an epoch within its run: CheckpointError with a
    sentence otherwise."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if not missing and not (isinstance(ckpt["config"], dict) and isinstance(ckpt["config"].get("args"), dict)):
        missing = ["config.args"]
    if missing:
        raise CheckpointError(f"{path} holds weights without the training state ({', '.join(missing)} missing), "
                              f"as released weights do: it can be evaluated (python -m model.evaluate), not "
                              f"resumed; start a new run with another --out.")

    def need(cond, what):
        if not cond:
            raise CheckpointError(f"{path} cannot be resumed: {what}; start the run afresh in another --out.")
    epochs = ckpt["config"]["args"].get("epochs")
    need(_whole(epochs, 1), f"its config records {epochs!r} epochs, not a whole number")
    need(_whole(ckpt["epoch"], 1, epochs), f"it says it finished epoch {ckpt['epoch']!r} of a {epochs}-epoch run")
    need(len(ckpt["metrics"]) == ckpt["epoch"], f"it holds metrics of {len(ckpt['metrics'])} epochs, not of the "
                                                 f"{ckpt['epoch']} it finished")
    need(_metrics_problem(ckpt["metrics"]) is None, _metrics_problem(ckpt["metrics"]))
    opt = ckpt["optimizer"]
    need(isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list),
         "its optimizer state is not an optimizer's state_dict")
    need(isinstance(ckpt["scheduler"], dict) and isinstance(ckpt["scaler"], dict),
         "its scheduler or gradient-scaler state is not a state_dict")
    rng = ckpt["rng"]
    need(isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
         and isinstance(rng.get("cuda"), list) and isinstance(rng.get("numpy"), (list, tuple)) and len(rng["numpy"]) == 5
         and isinstance(rng.get("python"), (list, tuple)) and len(rng["python"]) == 3,
         "its random-number state is not the one train.py saves")
    need(isinstance(ckpt["config"].get("policy"), dict), "its config holds no augmentation policy")
    need("ema_updates" not in ckpt or _whole(ckpt["ema_updates"]), "its ema_updates is not a whole number")


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
