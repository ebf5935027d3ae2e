"""Bring your own albumentations pipeline: a Compose (or a file holding one) becomes the policy, 1.x keywords are
mapped to what they meant (or refused with strict), and what no engine reproduces is refused with a sentence."""
import json
import warnings
from dataclasses import replace

import albumentations as A
import cv2
import pytest

from pipeline.albu_import import PolicyError, from_albumentations, load_policy, policy_for
from pipeline.policy import AugmentPolicy
from pipeline.transforms.affine import Affine, Rotate, ShiftScaleRotate
from pipeline.transforms.colour import (ColorJitter, HueSaturationValue, RandomBrightnessContrast, Solarize,
                                        ToGray)
from pipeline.transforms.crops import CenterCrop, PadIfNeeded, RandomCrop, RandomResizedCrop
from pipeline.transforms.erasing import CoarseDropout, Erasing
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip
from pipeline.transforms.noise import GaussNoise
from pipeline.transforms.one_of import OneOf

MEAN = (125.307, 122.961, 113.8575)
STD = (62.985, 62.0925, 66.708)

# the seed assignment's spelling: albumentations 1.x keywords, the dataset mean in 0..1 units as the fill
ASSIGNMENT = """
import albumentations as A
mean = (0.4914, 0.4822, 0.4465)
std = (0.2470, 0.2435, 0.2616)
transform = A.Compose([
    A.HorizontalFlip(p=0.5),
    A.ShiftScaleRotate(shift_limit=0.1, scale_limit=0.1, rotate_limit=15, p=0.5),
    A.CoarseDropout(max_holes=1, max_height=16, max_width=16, min_holes=1, min_height=16, min_width=16,
                    fill_value=mean, mask_fill_value=None),
    A.Normalize(mean=mean, std=std),
])
"""


def write(tmp_path, text, name="policy.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def quiet(build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


def test_the_assignments_spelling_trains_the_16x16_hole_it_meant(tmp_path):
    policy, notes = load_policy(write(tmp_path, ASSIGNMENT))
    flip, ssr, drop = policy.transforms
    assert (drop.p, drop.num_holes_range, drop.hole_height_range, drop.hole_width_range, drop.fill) == \
        (0.5, (1, 1), (16, 16), (16, 16), "mean")
    assert flip == HorizontalFlip(p=0.5)
    assert ssr == ShiftScaleRotate(shift_limit_x=0.1, shift_limit_y=0.1, scale_limit=0.1, rotate_limit=15, fill=0,
                                   p=0.5)
    assert policy.mean == pytest.approx((0.4914 * 255, 0.4822 * 255, 0.4465 * 255))
    # one line per 1.x argument, naming its 2.x spelling; and the 0..1 fill read as the mean
    for arg, new in (("max_holes", "num_holes_range"), ("min_holes", "num_holes_range"),
                     ("max_height", "hole_height_range"), ("min_width", "hole_width_range"),
                     ("fill_value", "fill"), ("mask_fill_value", "fill_mask")):
        assert sum(n.startswith(f"CoarseDropout: {arg}=") and f"read as {new}=" in n for n in notes) == 1, (arg, notes)
    assert len(notes) == 9 and "dataset mean in 0..1 units" in notes[-1]


def test_what_albumentations_itself_would_have_drawn_is_not_what_was_meant():
    """The reason for all this: albumentations 2.0.8 keeps its defaults for 1.x keywords."""
    t = quiet(lambda: A.CoarseDropout(max_holes=1, max_height=16, max_width=16))
    assert t.hole_height_range == (0.1, 0.2) and t.invalid_args == ["max_holes", "max_height", "max_width"]


def test_strict_refuses_1x_keywords_with_their_2x_spelling(tmp_path):
    with pytest.raises(PolicyError, match=r"max_holes -> num_holes_range.*fill_value -> fill"):
        load_policy(write(tmp_path, ASSIGNMENT), strict=True)


def test_a_compose_object_that_lost_arguments_is_refused_never_taken_with_defaults():
    compose = quiet(lambda: A.Compose([A.CoarseDropout(max_holes=1, max_height=16, max_width=16, p=1.0)]))
    with pytest.raises(PolicyError) as e:
        AugmentPolicy.from_albumentations(compose, mean=MEAN, std=STD)
    assert "max_holes, max_height, max_width" in str(e.value) and "max_height -> hole_height_range" in str(e.value)
    typo = quiet(lambda: A.Compose([A.HorizontalFlip(prob=0.5)]))
    with pytest.raises(PolicyError, match="prob is not an argument of HorizontalFlip in any version"):
        AugmentPolicy.from_albumentations(typo, mean=MEAN, std=STD)


def test_partial_1x_keywords_take_1x_defaults_for_the_rest(tmp_path):
    text = "import albumentations as A\ntransform = A.Compose([A.CoarseDropout(max_holes=3, max_height=6, p=1)])\n"
    policy, notes = load_policy(write(tmp_path, text), mean=MEAN, std=STD)
    (drop,) = policy.transforms
    assert drop.num_holes_range == (3, 3) and drop.hole_height_range == (6, 6)
    assert drop.hole_width_range == (8, 8) and any("max_width not given" in n for n in notes)
    assert drop.fill == (0, 0, 0)


def test_other_1x_keywords(tmp_path):
    text = ("import albumentations as A\nimport cv2\n"
            "transform = A.Compose([A.HorizontalFlip(always_apply=True),\n"
            "    A.Affine(rotate=(-30, 30), translate_percent=0.2, mode=cv2.BORDER_CONSTANT, cval=(1, 2, 3))])\n")
    policy, notes = load_policy(write(tmp_path, text), mean=MEAN, std=STD)
    flip, affine = policy.transforms
    assert flip.p == 1.0 and affine.rotate == (-30, 30) and affine.fill == (1, 2, 3)
    assert affine.translate_percent == {"x": (0.2, 0.2), "y": (0.2, 0.2)} and affine.scale["x"] == (1, 1)
    assert [n.split(":")[1].split("=")[0].strip() for n in notes] == ["always_apply", "mode", "cval"]


NON_DEFAULT = [
    AugmentPolicy(mean=MEAN, std=STD, transforms=(
        Affine(p=1.0, rotate=(-30, 30), translate_percent={"x": (-0.2, 0.2), "y": (0, 0.1)}, scale=(0.8, 1.2),
               shear={"x": (-5, 5), "y": (0, 3)}, fill="mean"),)),
    AugmentPolicy(mean=MEAN, std=STD, transforms=(
        CoarseDropout(p=0.7, num_holes_range=(2, 4), hole_height_range=(4, 12), hole_width_range=(4, 12), fill=0),)),
    AugmentPolicy(mean=MEAN, std=STD, transforms=(
        PadIfNeeded(min_height=40, min_width=40, border_mode="reflect_101"), RandomCrop(height=32, width=32),
        HorizontalFlip(p=0.5), VerticalFlip(p=0.1), RandomBrightnessContrast(p=0.4), ToGray(p=0.1),
        CoarseDropout(hole_height_range=(0.1, 0.3), hole_width_range=(0.2, 0.25), fill=(255, 0, 3)))),
    AugmentPolicy(mean=MEAN, std=STD, transforms=(
        RandomCrop(height=36, width=36, pad_if_needed=True, pad_position="random", border_mode="constant", fill=9),
        CenterCrop(height=32, width=32), Affine(translate_px=(-3, 3), keep_ratio=True, scale=(0.9, 1.1)),
        Rotate(limit=20, fill=(9, 8, 7)), RandomResizedCrop(size=(32, 32), scale=(0.5, 1)),
        OneOf(transforms=(ColorJitter(), HueSaturationValue(p=0.3), Solarize(p=1.0)), p=0.6),
        RandomBrightnessContrast(brightness_by_max=False), GaussNoise(std_range=(0.05, 0.1)), Erasing(fill="mean"),
        ToGray(p=0.2))),
]


@pytest.mark.parametrize("policy", [AugmentPolicy(mean=MEAN, std=STD), *NON_DEFAULT],
                         ids=["default", "affine", "holes", "classic", "every-kind"])
def test_to_albumentations_and_back_is_the_same_policy(policy):
    compose = policy.to_albumentations()
    assert type(compose.transforms[-1]).__name__ == "Normalize"
    assert AugmentPolicy.from_albumentations(compose) == policy
    assert AugmentPolicy.from_albumentations(compose, strict=True) == policy


def test_shift_scale_rotate_and_affine_read_alike():
    ssr = A.Compose([quiet(lambda: A.ShiftScaleRotate(shift_limit=0.1, scale_limit=0.1, rotate_limit=15,
                                                      border_mode=cv2.BORDER_CONSTANT, fill=(1, 2, 3), p=0.4))])
    affine = A.Compose([A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-15, 15), fill=(1, 2, 3),
                                 p=0.4)])
    (a,) = AugmentPolicy.from_albumentations(ssr, mean=MEAN, std=STD).transforms
    (b,) = AugmentPolicy.from_albumentations(affine, mean=MEAN, std=STD).transforms
    assert a == ShiftScaleRotate(shift_limit_x=0.1, shift_limit_y=0.1, scale_limit=0.1, rotate_limit=15,
                                 fill=(1, 2, 3), p=0.4)
    assert (a.scale, a.translate_percent, a.rotate, a.fill) == (b.scale, b.translate_percent, b.rotate, b.fill)


REFUSED = [
    (lambda: [A.Blur()], "Blur is not a transform"),
    (lambda: [A.SomeOf([A.HorizontalFlip()], n=1)], "SomeOf is not a composition"),
    (lambda: [A.Affine(border_mode=cv2.BORDER_REFLECT_101)], "border_mode=4 (reflect_101)"),
    (lambda: [A.Affine(interpolation=cv2.INTER_NEAREST)], "interpolation=0 (nearest)"),
    (lambda: [A.Affine(fit_output=True)], "fit_output=True"),
    (lambda: [A.CoarseDropout(fill="random")], "fill='random'"),
    (lambda: [A.CoarseDropout(hole_height_range=(4, 8), hole_width_range=(0.1, 0.2))], "both ranges are whole pixels"),
    (lambda: [A.Normalize(), A.HorizontalFlip()], "put it at the end"),
    (lambda: [A.Normalize(normalization="image")], "normalization='image'"),
    (lambda: [A.Affine(rotate=(-400, 400))], "rotate"),
    (lambda: [A.RandomCrop(height=40, width=40)], "larger than the 32x32 images"),
    (lambda: [A.PadIfNeeded(min_height=40, min_width=40)], "turns 32x32 images into 40x40 ones"),
    (lambda: [A.ToGray(method="average")], "method='average'"),
    (lambda: [A.RandomResizedCrop(size=(32, 32), interpolation=cv2.INTER_NEAREST)], "interpolation=0"),
    (lambda: [A.Rotate(crop_border=True)], "crop_border=True"),
    (lambda: [A.OneOf([A.HorizontalFlip(), A.Blur()])], "Blur is not a transform"),
]


@pytest.mark.parametrize("transforms, says", REFUSED)
def test_what_no_engine_reproduces_is_refused_with_a_sentence(transforms, says):
    with pytest.raises(PolicyError) as e:
        AugmentPolicy.from_albumentations(A.Compose(transforms()), mean=MEAN, std=STD)
    message = str(e.value)
    assert says in message and "\n" not in message, message


def test_what_is_not_a_compose_is_refused():
    with pytest.raises(PolicyError, match="is a OneOf, not an albumentations Compose"):
        from_albumentations(A.OneOf([A.HorizontalFlip()]), mean=MEAN, std=STD)
    with pytest.raises(PolicyError, match="Compose.p=0.5"):
        from_albumentations(A.Compose([A.HorizontalFlip()], p=0.5), mean=MEAN, std=STD)


def test_a_compose_without_normalize_takes_the_datas_stats_at_the_loader(tiny_dir):
    from pipeline import build_loader
    from pipeline.format import read_meta
    policy, _ = from_albumentations(A.Compose([A.HorizontalFlip(p=1.0), A.CoarseDropout(fill=(1, 2, 3))]))
    assert policy.mean is None and policy.std is None
    loader = build_loader("gpu", tiny_dir, "train", 64, policy=policy)
    assert loader.policy.mean == tuple(read_meta(tiny_dir)["mean"])
    x, _ = next(iter(loader))
    assert x.dtype.is_floating_point


def test_policy_files(tmp_path, tiny_dir):
    from pipeline.format import read_meta
    meta = read_meta(tiny_dir)
    # JSON without mean and std takes the data's
    d = NON_DEFAULT[1].to_dict()
    del d["mean"], d["std"]
    policy, notes = policy_for(meta, write(tmp_path, json.dumps(d), "p.json"))
    assert policy == replace(NON_DEFAULT[1], mean=tuple(meta["mean"]), std=tuple(meta["std"])) and notes == []
    # a Python file without Normalize takes the data's; `policy` may be an AugmentPolicy
    text = "import albumentations as A\ntransform = A.Compose([A.HorizontalFlip(p=0.25)])\n"
    policy, _ = policy_for(meta, write(tmp_path, text))
    assert policy.mean == tuple(meta["mean"]) and policy.transforms == (HorizontalFlip(p=0.25),)
    text = "from pipeline.policy import AugmentPolicy\npolicy = AugmentPolicy(mean=(1, 2, 3), std=(4, 5, 6))\n"
    assert load_policy(write(tmp_path, text))[0] == AugmentPolicy(mean=(1, 2, 3), std=(4, 5, 6))
    assert policy_for(meta)[0] == AugmentPolicy.from_meta(meta)


@pytest.mark.parametrize("text, name, says", [
    ("raise RuntimeError('boom')\n", "p.py", "failed to run (RuntimeError: boom)"),
    ("x = 1\n", "p.py", "defines neither `policy` nor `transform`"),
    ("transform = 3\n", "p.py", "is a int, not an albumentations Compose"),
    ("{not json", "p.json", "neither a .py file nor valid JSON"),
    ('{"flip": {"p": 2}}', "p.json", "HorizontalFlip.p = 2"),
    ('{"format_version": 2, "transforms": [{"name": "Blur"}]}', "p.json", "unknown transform 'Blur'"),
])
def test_bad_policy_files_are_one_sentence(tmp_path, text, name, says):
    with pytest.raises(PolicyError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_policy(write(tmp_path, text, name), mean=MEAN, std=STD)
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.py")


def test_reading_a_file_leaves_albumentations_as_it_was(tmp_path):
    load_policy(write(tmp_path, ASSIGNMENT))
    t = quiet(lambda: A.CoarseDropout(max_holes=1))
    assert not hasattr(t, "_cifarflow_written") and t.num_holes_range == (1, 2)
    with pytest.raises(ValueError, match="not valid for transform"):
        A.CoarseDropout(max_holes=1, strict=True)


def test_train_py_trains_with_a_policy_file_and_resume_refuses_another(tiny_dir, tmp_path, capsys):
    from train import RunError, fit
    path = write(tmp_path, ASSIGNMENT)
    out = tmp_path / "run"
    r = fit(None, tiny_dir, epochs=1, out=out, policy=str(path), amp="off", batch_size=200)
    printed = capsys.readouterr().out
    assert "note: CoarseDropout: max_holes=1 is albumentations 1.x" in printed
    saved = AugmentPolicy.from_dict(r.config["policy"])
    assert saved == load_policy(path)[0] and saved.transforms[2].hole_height_range == (16, 16)
    assert r.config["args"]["policy"] == str(path)
    with pytest.raises(RunError, match="another augmentation policy"):
        fit(None, tiny_dir, epochs=1, out=out, amp="off", batch_size=200, resume=True)


def test_show_draws_a_users_policy(tiny_dir, tmp_path):
    from conftest import run_in_process
    from pipeline.show import main
    png = tmp_path / "grid.png"
    ran = run_in_process(main, "--loader", "gpu", "--data-dir", tiny_dir, "--policy", write(tmp_path, ASSIGNMENT),
                         "--out", png, "--count", 4)
    assert ran.returncode == 0 and "note: CoarseDropout: max_holes=1" in ran.stdout and png.stat().st_size > 5000
    bad = run_in_process(main, "--loader", "gpu", "--data-dir", tiny_dir, "--policy", write(tmp_path, ASSIGNMENT),
                         "--strict-policy", "--out", png)
    assert bad.returncode == 2 and "strict" in bad.stderr and "Traceback" not in bad.stderr


def test_the_readmes_example_compose_is_the_file_it_links():
    from conftest import ROOT
    text = (ROOT / "examples" / "classic_cifar.py").read_text()
    assert f"```python\n{text}```" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("engine", [pytest.param(e, marks=() if e == "gpu" else pytest.mark.slow)
                                    for e in ("gpu", "torch", "dali", "ffcv")])
def test_train_py_trains_the_example_compose_on_every_engine(tiny_dir, tmp_path, engine):
    """The README's classic CIFAR Compose (pads and crops, flips, a warp, brightness-contrast, grey, a hole) trains
    with train.py --policy on each engine, and the run records it as the policy it trained with."""
    from pipeline import available_loaders
    if engine not in available_loaders():
        pytest.skip(f"{engine} is not installed here")
    from conftest import ROOT, run_in_process
    from train import main
    path = ROOT / "examples" / "classic_cifar.py"
    out = tmp_path / "run"
    ran = run_in_process(main, "--loader", engine, "--data-dir", tiny_dir, "--policy", path, "--epochs", 1,
                         "--batch-size", 200, "--out", out)
    assert ran.returncode == 0, ran.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert [t["name"] for t in config["policy"]["transforms"]] == [
        "PadIfNeeded", "RandomCrop", "HorizontalFlip", "ShiftScaleRotate", "RandomBrightnessContrast", "ToGray",
        "CoarseDropout"]
    assert config["args"]["loader"] == engine and json.loads((out / "metrics.json").read_text())[0]["epoch"] == 1
