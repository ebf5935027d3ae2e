"""Bring your own albumentations pipeline: an ``A.Compose``, or a file that holds one, becomes an AugmentPolicy.

Every transform of ``pipeline.policy.KINDS`` maps, in any order and as often as it is written, and ``OneOf`` around
them; ``Normalize`` (standard) may close the pipeline and gives the policy's mean and std (without it the loader takes
the converted data's from its meta.json), and ``ToTensorV2`` after it. Each transform reads its own arguments
(``Transform.from_albumentations``) and refuses, with one sentence naming the transform and the argument, what no
engine reproduces (a reflect border on a warp, nearest interpolation, a random fill, ...): never a silent
approximation. A fill equal to the Normalize mean (in pixel units or, as people often write it, in 0..1 units) is
the dataset mean.

albumentations 2 ignores its 1.x keywords (``max_holes``, ``fill_value``, ``value``, ...) with only a warning and
keeps its own defaults, which a transform object cannot undo: it keeps the keywords' names
(``invalid_args``), not their values. So ``load_policy`` records the keywords each transform is built with while
it runs a user's Python file and maps the 1.x ones to what they meant, one note per argument; with ``strict`` it
refuses them instead. A Compose handed over as an object whose transforms lost arguments is refused, naming them
and their 2.x spelling.
"""
from __future__ import annotations

import contextlib
import json
import runpy
import warnings
from pathlib import Path

from pipeline.policy import KINDS, AugmentPolicy
from pipeline.transforms import TransformError
from pipeline.transforms import fill_value as policy_fill
from pipeline.transforms.one_of import OneOf

MAPPED = tuple(name for name in KINDS if name != "OneOf") + ("Normalize",)
_MEAN_TOLERANCE = 0.5               # pixel units: a fill this close to the mean is the mean

# albumentations 1.x keywords that 2.x ignores, per transform, and the 2.x argument each one feeds
_V1 = {
    "CoarseDropout": {"max_holes": "num_holes_range", "min_holes": "num_holes_range",
                      "max_height": "hole_height_range", "min_height": "hole_height_range",
                      "max_width": "hole_width_range", "min_width": "hole_width_range",
                      "fill_value": "fill", "mask_fill_value": "fill_mask"},
    "ShiftScaleRotate": {"value": "fill", "mask_value": "fill_mask"},
    "Affine": {"cval": "fill", "cval_mask": "fill_mask", "mode": "border_mode"},
}
_ANY_V1 = {"always_apply": "p"}
_V1_RANGES = {"num_holes_range": ("min_holes", "max_holes"), "hole_height_range": ("min_height", "max_height"),
              "hole_width_range": ("min_width", "max_width")}
_V1_MAX_DEFAULT = 8                 # 1.x CoarseDropout's max_holes, max_height, max_width; each min defaulted to its max


class PolicyError(ValueError):
    """An albumentations pipeline or policy file that cifarflow cannot reproduce exactly; one sentence."""


class _Context:
    """What a transform's ``from_albumentations`` is handed: ``refuse(arg, why)`` and ``fill(value)``."""

    def __init__(self, source: str, mean, strict: bool, notes: list[str]):
        self.source, self.mean, self.strict, self.notes, self.name = source, mean, strict, notes, ""

    def refuse(self, arg: str, why: str):
        raise PolicyError(f"{self.source}: {self.name} {arg}: {why}.")

    def fill(self, value):
        return _fill(value, self.mean, self.name, self.strict, self.notes)


def from_albumentations(compose, *, mean=None, std=None, strict: bool = False, image_size: int = 32,
                        source: str = "the Compose") -> tuple[AugmentPolicy, list[str]]:
    """(the policy an ``A.Compose`` describes, one note per 1.x argument that was mapped).

    ``mean``/``std`` (pixel units) are the dataset's, used where the Compose has no Normalize; without either the
    policy's are None, and the loader takes the converted data's."""
    import albumentations as A

    if type(compose) is not A.Compose:
        kind = type(compose).__name__
        raise PolicyError(f"{source} is a {kind}, not an albumentations Compose: wrap the transforms in "
                          f"A.Compose([...]).")
    if compose.p != 1:
        raise PolicyError(f"{source}: Compose(p={compose.p}) skips the whole pipeline at random; the engines "
                          f"apply it to every image: leave p at 1.")
    notes: list[str] = []
    body = list(compose.transforms)
    if body and type(body[-1]).__name__ == "ToTensorV2":
        body.pop()
    if body and type(body[-1]).__name__ == "Normalize":
        mean, std = _normalize(_arguments(body.pop(), strict, notes))
    ctx = _Context(source, None if mean is None else tuple(float(v) for v in mean), strict, notes)
    transforms = tuple(_transform(t, ctx) for t in body)
    try:        # the policy's own checks (sizes along the pipeline), each a sentence, named after the Compose
        return AugmentPolicy(mean=ctx.mean, std=None if std is None else tuple(float(v) for v in std),
                             transforms=transforms, image_size=image_size), notes
    except ValueError as e:
        raise PolicyError(f"{source}: {e}") from None


def _transform(t, ctx: _Context):
    """One albumentations transform (or OneOf) as the policy's."""
    import albumentations as A

    name = type(t).__name__
    ctx.name = name
    if name in ("Normalize", "ToTensorV2"):
        raise PolicyError(f"{ctx.source}: {name} comes before other transforms; the engines normalize last: "
                          f"put it at the end (ToTensorV2 after it).")
    if type(t) is A.OneOf:
        children = tuple(_transform(c, ctx) for c in t.transforms)
        ctx.name = name
        try:
            return OneOf(transforms=children, p=float(t.p))
        except TransformError as e:
            raise PolicyError(f"{ctx.source}: {e}") from None
    kind = KINDS.get(name)
    if kind is None or type(t) is not getattr(A, name, None):
        composition = isinstance(t, A.BaseCompose)
        raise PolicyError(f"{ctx.source}: {name} is not {'a composition' if composition else 'a transform'} "
                          f"cifarflow's engines reproduce; they reproduce {', '.join(KINDS)} (and Normalize, "
                          f"ToTensorV2 at the end): remove it.")
    args = _arguments(t, ctx.strict, ctx.notes)
    if args.get("p") is None:
        args["p"] = t.p
    try:
        return kind.from_albumentations(args, ctx)
    except TransformError as e:
        raise PolicyError(f"{ctx.source}: {e}") from None


def load_policy(path, *, mean=None, std=None, strict: bool = False) -> tuple[AugmentPolicy, list[str]]:
    """A policy file: JSON (``AugmentPolicy.to_json``'s form; mean and std may be left out for the dataset's), or a
    Python file whose ``policy`` or ``transform`` is an ``A.Compose`` (or an AugmentPolicy). Returns the policy and
    the notes of the 1.x arguments that were mapped."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist: pass a .json policy or a .py file that defines "
                          f"`transform` (an albumentations Compose).")
    if path.suffix == ".py":
        return _load_python(path, mean, std, strict)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"policy file {path} is neither a .py file nor valid JSON ({e}).") from None
    if not isinstance(d, dict):
        raise PolicyError(f"policy file {path} holds JSON that is not an object.")
    for key, value in (("mean", mean), ("std", std)):
        if d.get(key) is None and value is not None:
            d[key] = list(value)
    try:
        return AugmentPolicy.from_dict(d), []
    except ValueError as e:
        raise PolicyError(f"policy file {path}: {e}") from None


def _load_python(path: Path, mean, std, strict: bool) -> tuple[AugmentPolicy, list[str]]:
    with _recording(), warnings.catch_warnings():
        # albumentations' own warnings about these arguments: the notes below say what happened to each
        warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid for transform")
        warnings.filterwarnings("ignore", message=r"ShiftScaleRotate is a special case of Affine")
        try:
            namespace = runpy.run_path(str(path), run_name="cifarflow_policy")
        except SystemExit:
            raise PolicyError(f"policy file {path} called exit() while it was read.") from None
        except Exception as e:      # noqa: BLE001  the user's code: its failure becomes a sentence naming the file
            raise PolicyError(f"policy file {path} failed to run ({type(e).__name__}: {e}).") from None
    for name in ("policy", "transform"):
        value = namespace.get(name)
        if isinstance(value, AugmentPolicy):
            return value, []
        if value is not None:
            return from_albumentations(value, mean=mean, std=std, strict=strict, source=f"{path}'s `{name}`")
    raise PolicyError(f"policy file {path} defines neither `policy` nor `transform`: assign your A.Compose to "
                      f"`transform`.")


@contextlib.contextmanager
def _recording():
    """While active, each mapped transform built keeps the arguments it was written with (``_cifarflow_written``);
    a subclass's call into its parent's __init__ (ShiftScaleRotate into Affine's) records nothing."""
    import albumentations as A

    saved = []
    for name in MAPPED:
        cls = getattr(A, name)
        own = cls.__dict__.get("__init__")
        saved.append((cls, own))
        cls.__init__ = _recorder(cls, own or cls.__init__)
    try:
        yield
    finally:
        for cls, own in saved:
            if own is None:
                del cls.__init__
            else:
                cls.__init__ = own


def _recorder(cls, init):
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self) is cls:
            self._cifarflow_written = (args, dict(kwargs))
    __init__.__signature__ = getattr(init, "__signature__", None)
    return __init__


def _arguments(t, strict: bool, notes: list[str]) -> dict:
    """The transform's 2.x arguments, as attributes of a transform built with them: the object's own, or, where
    it was written with 1.x keywords (recorded by ``_recording``), a twin built with their 2.x spelling."""
    name = type(t).__name__
    lost = list(getattr(t, "invalid_args", None) or [])
    written = getattr(t, "_cifarflow_written", None)
    if lost and written is None:
        raise PolicyError(f"{name} was built with {', '.join(lost)}, which albumentations 2 ignored (it kept its "
                          f"defaults instead): {_spelling(name, lost)}; or pass the file that builds it "
                          f"(--policy FILE.py), whose arguments cifarflow reads and maps.")
    if lost:
        args, kwargs = written
        kwargs = _translate(name, dict(kwargs), strict, notes)
        kwargs.pop("strict", None)
        t = type(t)(*args, **kwargs, strict=True)
    return vars(t)


def _spelling(name: str, lost: list[str]) -> str:
    table = {**_V1.get(name, {}), **_ANY_V1}
    known = [f"{a} -> {table[a]}" for a in lost if a in table]
    unknown = [a for a in lost if a not in table]
    parts = []
    if known:
        parts.append("write " + ", ".join(known))
    if unknown:
        parts.append(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not an argument of {name} in "
                     f"any version")
    return "; ".join(parts)


def _translate(name: str, kw: dict, strict: bool, notes: list[str]) -> dict:
    """1.x keywords -> their 2.x spelling, a note each; a keyword of no version is refused."""
    import inspect

    import albumentations as A

    table = {**_V1.get(name, {}), **_ANY_V1}
    valid = set(inspect.signature(getattr(A, name)).parameters) | {"strict"}
    stray = [k for k in kw if k not in valid and k not in table]
    if stray:
        raise PolicyError(f"{name}: {', '.join(stray)} {'is' if len(stray) == 1 else 'are'} not an argument of "
                          f"{name} in albumentations 1.x or 2.x: check the spelling.")
    old = [k for k in kw if k in table]
    if strict and old:
        raise PolicyError(f"{name}: {', '.join(old)} {'is' if len(old) == 1 else 'are'} albumentations 1.x, which "
                          f"2.x ignores (strict): {_spelling(name, old)}.")
    for new in {table[k] for k in old}:
        if new in kw:
            both = [k for k in old if table[k] == new]
            raise PolicyError(f"{name} is given both {new} and its 1.x spelling {', '.join(both)}: keep {new}.")

    def note(arg, new, value):
        notes.append(f"{name}: {arg}={kw[arg]!r} is albumentations 1.x (2.x ignores it): read as {new}={value!r}")

    if name == "CoarseDropout" and any(k in kw for pair in _V1_RANGES.values() for k in pair):
        for new, (lo_key, hi_key) in _V1_RANGES.items():
            if lo_key in kw or hi_key in kw:
                hi = kw.get(hi_key, _V1_MAX_DEFAULT)
                lo = kw.get(lo_key) if kw.get(lo_key) is not None else hi
                for arg in (lo_key, hi_key):
                    if arg in kw:
                        note(arg, new, (lo, hi))
                kw.pop(lo_key, None), kw.pop(hi_key, None)
                kw[new] = (lo, hi)
            elif new not in kw:     # written in 1.x, so 1.x's default is what the user meant, not 2.x's
                kw[new] = (_V1_MAX_DEFAULT, _V1_MAX_DEFAULT)
                notes.append(f"{name}: {hi_key} not given, beside 1.x keywords: read as 1.x's default "
                             f"{new}={kw[new]!r}")
    for arg in [k for k in kw if k in table]:
        new = table[arg]
        if arg == "always_apply":
            value = kw.pop(arg)
            if value:
                kw["p"] = 1.0
                notes.append(f"{name}: always_apply=True is albumentations 1.x (2.x ignores it): read as p=1.0")
            else:
                notes.append(f"{name}: always_apply=False is albumentations 1.x's default: dropped")
            continue
        note(arg, new, kw[arg])
        kw[new] = kw.pop(arg)
    return kw


def _normalize(a: dict) -> tuple[tuple, tuple]:
    if a.get("normalization", "standard") != "standard":
        raise PolicyError(f"Normalize(normalization={a['normalization']!r}): the engines normalize by a mean and "
                          f"std ('standard').")
    if a["p"] != 1:
        raise PolicyError(f"Normalize(p={a['p']}): the engines normalize every image: leave p at 1.")
    scale = float(a["max_pixel_value"])

    def three(v, what):
        v = [float(x) for x in (v if isinstance(v, (tuple, list)) else [v])]
        if len(v) == 1:
            v = v * 3
        if len(v) != 3:
            raise PolicyError(f"Normalize's {what} needs one value or one per channel (3), not {len(v)}.")
        return tuple(x * scale for x in v)
    return three(a["mean"], "mean"), three(a["std"], "std")


def _fill(value, mean: tuple, where: str, strict: bool, notes: list[str]):
    """A fill as the policy holds it: "mean", or three constants in pixel units."""
    if isinstance(value, str):
        raise PolicyError(f"{where} fill={value!r}: the engines fill with a constant or the dataset mean.")
    if isinstance(value, (tuple, list)) and len(value) not in (1, 3):
        raise PolicyError(f"{where} fill={value!r}: a fill is one value or one per channel (3).")
    one = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
    try:
        values = policy_fill(one, f"{where} fill")       # three constants in 0..255, or a sentence
    except TransformError as e:
        raise PolicyError(str(e)) from None
    if mean is None:
        return tuple(values)
    if all(abs(v - m) <= _MEAN_TOLERANCE for v, m in zip(values, mean)):
        return "mean"
    if all(v <= 1 for v in values) and all(abs(v * 255 - m) <= _MEAN_TOLERANCE for v, m in zip(values, mean)):
        if strict:
            raise PolicyError(f"{where} fill={value!r} is the dataset mean in 0..1 units, but a fill is in pixel "
                              f"units (0..255) and albumentations fills with 0 (strict): write the mean times 255.")
        notes.append(f"{where} fill={_short(value)} is the dataset mean in 0..1 units; a fill is in pixel units, "
                     f"where albumentations would fill with 0: read as the dataset mean")
        return "mean"
    return tuple(values)


def _short(value) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(f"{float(v):.4g}" for v in value) + ")"
    return f"{value!r}"


def policy_for(meta: dict, path=None, *, strict: bool = False) -> tuple[AugmentPolicy, list[str]]:
    """The policy a command runs with: the project's with the converted data's mean and std (``meta``, its
    meta.json), or the one in the policy file ``path`` (its Normalize, else the data's mean and std); and the
    notes of mapped 1.x arguments."""
    if path is None:
        return AugmentPolicy.from_meta(meta), []
    return load_policy(path, mean=meta["mean"], std=meta["std"], strict=strict)


POLICY_HELP = ("your augmentation policy instead of the project's: a .py file whose `transform` is an albumentations "
               "Compose (1.x keywords such as max_holes are mapped, one note each), or a .json policy; what no engine "
               "reproduces is refused")
STRICT_POLICY_HELP = "refuse albumentations 1.x keywords in --policy instead of mapping them"


def add_policy_arguments(parser) -> None:
    """``--policy FILE`` and ``--strict-policy``, as every command that augments takes them."""
    parser.add_argument("--policy", default=None, metavar="FILE", help=POLICY_HELP)
    parser.add_argument("--strict-policy", action="store_true", help=STRICT_POLICY_HELP)
