"""Bring your own model: ``--model my_net.py:Net`` or ``--model package.module:make_net``.

A spec names a Python file (or an importable module) and an attribute in it: an ``nn.Module`` class, or a
factory that returns a module. Either is called with ``num_classes=10`` when its signature takes
``num_classes`` (or ``**kwargs``), else with no argument. A checkpoint of such a model records the spec
and the sha256 of the file it came from, and rebuilds the model through the same spec; a file that changed
since is refused with a sentence, since its weights may no longer mean what they did.

``measured_receptive_field`` measures any model's receptive field as the project's own test measures
``receptive_field()``: the input region whose gradient reaches the centre of the last feature map.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelSpecError(Exception):
    """A --model spec that cannot be loaded or built. The message is one sentence for the user."""


@dataclass(frozen=True)
class ModelSpec:
    text: str              # as given: "path/to/file.py:Net" or "package.module:Net"
    source: str            # the resolved file path, or the module's name
    attr: str
    sha256: str | None     # of the file the attribute lives in (None for a module without a file)

    def to_dict(self) -> dict:
        return {"spec": self.text, "source": self.source, "attr": self.attr, "sha256": self.sha256}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_spec(text: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count(":") < 1:
        raise ModelSpecError(f"--model {text!r} must name a file or module and an attribute, "
                             f"e.g. my_net.py:Net or mypackage.models:make_net.")
    source, attr = text.rsplit(":", 1)
    if not source or not attr.isidentifier():
        raise ModelSpecError(f"--model {text!r}: {attr!r} is not a Python name; write FILE.py:Name or module:Name.")
    return source, attr


def _import_file(path: Path):
    name = f"cifarflow_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"--model: {path} is not a Python file that can be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:      # exit() in the user's file is a failure to build the model, never a success
        sys.modules.pop(name, None)
        raise ModelSpecError(f"--model: importing {path} called exit({_code(e)}): a model file must only define "
                             f"the model.") from None
    except Exception as e:       # noqa: BLE001  the user's code: its failure becomes a sentence naming the file
        sys.modules.pop(name, None)
        raise ModelSpecError(f"--model: importing {path} failed ({type(e).__name__}: {e}).") from None
    return module


def resolve(text: str) -> tuple[ModelSpec, object]:
    """(the spec, the attribute it names)."""
    source, attr = parse_spec(text)
    path = Path(source).expanduser()
    if source.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ModelSpecError(f"--model: {source} does not exist.")
        path = path.resolve()
        module = _import_file(path)
        spec = ModelSpec(text, str(path), attr, _file_sha256(path))
    else:
        try:
            module = importlib.import_module(source)
        except SystemExit as e:
            raise ModelSpecError(f"--model: importing module {source!r} called exit({_code(e)}).") from None
        except Exception as e:   # noqa: BLE001
            raise ModelSpecError(f"--model: cannot import module {source!r} ({type(e).__name__}: {e}).") from None
        file = getattr(module, "__file__", None)
        spec = ModelSpec(text, source, attr, _file_sha256(Path(file)) if file else None)
    if not hasattr(module, attr):
        names = sorted(n for n, v in vars(module).items() if not n.startswith("_") and
                       (inspect.isclass(v) and issubclass(v, nn.Module) or inspect.isfunction(v)))
        raise ModelSpecError(f"--model: {spec.source} has no {attr!r}" +
                             (f" (it has {', '.join(names[:6])})." if names else "."))
    return spec, getattr(module, attr)


def _code(e: SystemExit) -> str:
    return "" if e.code is None else repr(e.code)


def _takes_num_classes(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build(text: str, num_classes: int = 10) -> tuple[nn.Module, ModelSpec]:
    """The model a spec names, built, and its spec."""
    spec, obj = resolve(text)
    if not callable(obj):
        raise ModelSpecError(f"--model: {spec.text} is a {type(obj).__name__}, not an nn.Module class or a factory.")
    try:
        net = obj(num_classes=num_classes) if _takes_num_classes(obj) else obj()
    except SystemExit as e:      # builtins:exit names a callable too
        raise ModelSpecError(f"--model: building {spec.text} called exit({_code(e)}), which is no model: name an "
                             f"nn.Module class or a function that returns one.") from None
    except Exception as e:       # noqa: BLE001
        raise ModelSpecError(f"--model: building {spec.text} failed ({type(e).__name__}: {e}).") from None
    if not isinstance(net, nn.Module):
        raise ModelSpecError(f"--model: {spec.text} returned a {type(net).__name__}, not a torch.nn.Module.")
    check_output(net, num_classes, spec.text)
    return net, spec


def check_output(net: nn.Module, num_classes: int, name: str) -> None:
    """The model maps a batch of 32x32 RGB images to (batch, num_classes) logits."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, 3, 32, 32))
    except SystemExit as e:
        raise ModelSpecError(f"--model: {name} called exit({_code(e)}) on a batch of 32x32 RGB images.") from None
    except Exception as e:       # noqa: BLE001
        raise ModelSpecError(f"--model: {name} fails on a batch of 32x32 RGB images "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
    finally:
        net.train(was)
    if not torch.is_tensor(out) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ModelSpecError(f"--model: {name} must return (batch, {num_classes}) logits for (batch, 3, 32, 32) "
                             f"images, it returned {shape}.")


def rebuild(record: dict, num_classes: int, path="checkpoint") -> nn.Module:
    """The model a checkpoint's ``model_spec`` record names, refusing a file that changed since it was saved."""
    text = f"{record['source']}:{record['attr']}" if Path(record.get("source", "")).is_file() else record["spec"]
    spec, _ = resolve(text)
    if record.get("sha256") and spec.sha256 != record["sha256"]:
        raise ModelSpecError(f"{path} was trained with {record['spec']} as it was then; {spec.source} has changed "
                             f"since (sha256 {spec.sha256[:12]}, not {record['sha256'][:12]}): restore that file, "
                             f"or train a new run.")
    return build(text, num_classes)[0]


def measured_receptive_field(net: nn.Module, sizes=(96, 192, 384)) -> tuple[int, bool]:
    """(receptive field in pixels, whether it was clipped by the largest input the model accepts): the extent of
    the input region whose gradient reaches the centre of the last feature map (the last 4-D output of a
    module), measured on a copy whose convolutions have small positive weights and whose BatchNorms are the
    identity, so that no ReLU or cancellation hides a path."""
    net = copy.deepcopy(net).float().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(0.01)
                if m.bias is not None:
                    m.bias.fill_(0.0)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1), m.bias.fill_(0)
                if m.running_mean is not None:
                    m.running_mean.fill_(0), m.running_var.fill_(1)
    best = None
    for size in (32, *sizes):
        maps = []
        hooks = [m.register_forward_hook(lambda mod, i, o: maps.append(o) if torch.is_tensor(o) and o.ndim == 4
                                         and o.shape[-1] > 1 else None) for m in net.modules() if m is not net]
        x = torch.ones(1, 3, size, size, requires_grad=True)
        try:
            net(x)
        except Exception:        # noqa: BLE001  a model that takes only 32x32 inputs: keep what was measured
            break
        finally:
            for h in hooks:
                h.remove()
        if not maps:
            return 1, False
        f = maps[-1]
        h, w = f.shape[-2:]
        grad, = torch.autograd.grad(f[0, :, h // 2, w // 2].sum(), x)
        reach = grad[0].abs().sum(0)
        rows = torch.nonzero(reach.sum(1)).flatten()
        cols = torch.nonzero(reach.sum(0)).flatten()
        if len(rows) == 0:
            return 1, False
        rf = int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
        clipped = bool(rows.min() == 0 or rows.max() == size - 1 or cols.min() == 0 or cols.max() == size - 1)
        best = (rf, clipped)
        if not clipped:
            return best
    return best if best is not None else (1, False)


def facts(net: nn.Module) -> dict:
    """What a run records of any model: parameters (trained and frozen), the receptive field (the built-in
    nets' analytic one, which a test checks against this measurement; measured for any other), whether the
    measurement was clipped by the input size, the widths and activation where the net has them."""
    from model.net import Net, activation, count_parameters, receptive_field
    if isinstance(net, Net):
        rf, clipped = receptive_field(net), False
    else:
        rf, clipped = measured_receptive_field(net)
    try:
        act = activation(net)
    except ValueError:
        act = None
    widths = getattr(net, "widths", None)
    return {"parameters": count_parameters(net), "receptive_field": rf, "receptive_field_clipped": clipped,
            "widths": list(widths) if widths is not None else None, "activation": act}
