"""Every engine honours a user's Compose: pixel parity by replay (gpu, dali) and statistical parity against
albumentations running the same Compose, for single transforms with strong arguments and for composed pipelines in
different orders; an engine without an expression for a transform refuses the policy with a sentence."""
import numpy as np
import pytest
import torch

from pipeline import available_loaders, build_loader
from pipeline.format import load_split
from pipeline.parity import replay_parity, sampler_parity, statistical_parity
from pipeline.transforms.affine import Affine, Rotate, ShiftScaleRotate
from pipeline.transforms.colour import (ColorJitter, HueSaturationValue, RandomBrightnessContrast, Solarize,
                                        ToGray)
from pipeline.transforms.crops import CenterCrop, PadIfNeeded, RandomCrop, RandomResizedCrop
from pipeline.transforms.erasing import CoarseDropout, Erasing
from pipeline.transforms.flips import HorizontalFlip, VerticalFlip
from pipeline.transforms.noise import GaussNoise
from pipeline.transforms.one_of import OneOf

POLICIES = {
    "affine-strong": (Affine(p=1.0, rotate=(-30, 30), translate_percent=(-0.2, 0.2), scale=(0.8, 1.2),
                             shear=(-10, 10), fill="mean"),),
    "holes-2-4-of-4-12-fill-0": (CoarseDropout(p=0.5, num_holes_range=(2, 4), hole_height_range=(4, 12),
                                               hole_width_range=(4, 12), fill=0),),
    "classic": (PadIfNeeded(min_height=40, min_width=40, border_mode="reflect_101"), RandomCrop(height=32, width=32),
                HorizontalFlip(p=0.5), VerticalFlip(p=0.2),
                ShiftScaleRotate(shift_limit_x=0.0625, shift_limit_y=0.0625, scale_limit=0.1, rotate_limit=15, fill=0, p=0.5),
                RandomBrightnessContrast(p=0.5), ToGray(p=0.2),
                CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8),
                              fill="mean", p=0.5)),
    "classic-reordered": (CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.2, 0.3),
                                        hole_width_range=(0.2, 0.3), fill=(255, 0, 0), p=0.6),
                          ToGray(p=0.3), RandomBrightnessContrast(p=0.6), HorizontalFlip(p=0.5),
                          PadIfNeeded(min_height=36, min_width=36, position="random", border_mode="constant", fill=0),
                          RandomCrop(height=32, width=32), Affine(translate_px=(-3, 3), rotate=(-10, 10), p=0.5),
                          OneOf(transforms=(VerticalFlip(p=1), Solarize(p=1)), p=0.3)),
    "colour-and-crops": (RandomResizedCrop(size=(32, 32), scale=(0.5, 1.0)), Rotate(limit=20, p=0.3),
                         OneOf(transforms=(ColorJitter(p=1), HueSaturationValue(p=1), Solarize(p=1)), p=0.7),
                         GaussNoise(std_range=(0.05, 0.1), p=0.5),
                         RandomBrightnessContrast(brightness_by_max=False, p=0.5), Erasing(p=0.3),
                         RandomCrop(height=36, width=36, pad_if_needed=True, border_mode="wrap"),
                         CenterCrop(height=32, width=32)),
}
DALI_REFUSES = {"colour-and-crops": "the dali engine cannot reproduce RandomResizedCrop"}
# the gpu engine on the composed pipelines in the default suite; the rest (tens of seconds each) with the slow cases
FAST = {("gpu", "classic"), ("gpu", "classic-reordered"), ("gpu", "colour-and-crops")}
CASES = [pytest.param(e, n, marks=() if (e, n) in FAST else pytest.mark.slow, id=f"{e}-{n}")
         for e in ("gpu", "torch", "dali", "ffcv") for n in POLICIES]


@pytest.mark.parametrize("engine, name", CASES)
def test_every_engine_passes_parity_on_a_users_policy(mini_dir, policy, engine, name):
    if engine not in available_loaders():
        pytest.skip(f"{engine} is not installed here")
    split, _ = load_split(mini_dir, "train")
    users = policy.with_transforms(*POLICIES[name])
    if engine == "dali" and name in DALI_REFUSES:
        with pytest.raises(ValueError, match=f"{DALI_REFUSES[name]}.*--loader gpu, torch or ffcv"):
            build_loader("dali", mini_dir, "train", 64, policy=users)
        return
    checks, _ = replay_parity(engine, np.asarray(split.images[:500]), users, seed=3)
    checks += statistical_parity(engine, mini_dir, users, seed=4, sampler=engine == "gpu")
    failed = [c.row() for c in checks if not c.passed]
    assert sum(c.group == "statistical" for c in checks) >= 5 and not failed, "\n".join(failed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("engine", ["gpu", "dali", "ffcv"])
@pytest.mark.parametrize("name", POLICIES)
def test_cuda_engines_pass_parity_on_a_users_policy(mini_dir, policy, engine, name):
    """The same on the GPU: the gpu engine's ops and DALI's GPU operators replayed on CUDA, every GPU engine's
    epoch on CUDA against albumentations."""
    if engine not in available_loaders():
        pytest.skip(f"{engine} is not installed here")
    users = policy.with_transforms(*POLICIES[name])
    if users.unreproduced(engine):
        pytest.skip(users.unreproduced(engine))
    split, _ = load_split(mini_dir, "train")
    checks, _ = replay_parity(engine, np.asarray(split.images[:500]), users, seed=3, device="cuda")
    checks += statistical_parity(engine, mini_dir, users, seed=4, device="cuda", sampler=False)
    failed = [c.row() for c in checks if not c.passed]
    assert sum(c.group == "statistical" for c in checks) >= 5 and not failed, "\n".join(failed)


@pytest.mark.parametrize("name", POLICIES)
def test_the_gpu_engine_augments_a_chunk_in_a_fixed_number_of_operations(policy, name):
    """However many images a chunk holds, each transform is the same few batched torch ops (the bench counts them
    per batch): no operation per image, per hole or per branch taken."""
    from bench.measure import OpCount
    users = policy.with_transforms(*POLICIES[name])
    counts = []
    for n in (16, 16, 400):         # the first call also makes the constants each device keeps (fills, maps)
        images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
        params = users.sample(n, torch.Generator().manual_seed(n))
        with OpCount() as counter:
            users.apply(images, params)
        counts.append(counter.count)
    assert counts[1] == counts[2] and counts[1] > len(POLICIES[name]), counts


# each transform kind alone (a size-changing one with what brings the images back to 32), arguments away from the
# defaults and p below 1 where a rate is drawn
EACH = {
    "HorizontalFlip": (HorizontalFlip(p=0.5),),
    "VerticalFlip": (VerticalFlip(p=0.3),),
    "Affine": (Affine(p=0.7, rotate=(-30, 30), translate_px={"x": (-4, 4), "y": (-2, 3)}, scale=(0.8, 1.2),
                      shear={"x": (-8, 8), "y": (0, 5)}, fill=(10, 20, 30)),),
    "ShiftScaleRotate": (ShiftScaleRotate(shift_limit_x=0.1, shift_limit_y=0.05, scale_limit=0.2, rotate_limit=25,
                                          fill="mean", p=0.6),),
    "Rotate": (Rotate(limit=40, fill=0, p=0.6),),
    "PadIfNeeded": (PadIfNeeded(min_height=38, min_width=40, position="random", border_mode="reflect"),
                    RandomCrop(height=32, width=32)),
    "RandomCrop": (RandomCrop(height=36, width=36, pad_if_needed=True, border_mode="replicate"),
                   CenterCrop(height=32, width=32)),
    "RandomResizedCrop": (RandomResizedCrop(size=(32, 32), scale=(0.3, 1.0), ratio=(0.5, 2.0)),),
    "CoarseDropout": (CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.4),
                                    hole_width_range=(0.1, 0.4), fill="mean", p=0.7),),
    "Erasing": (Erasing(scale=(0.05, 0.3), ratio=(0.5, 2.0), fill=(0, 128, 255), p=0.6),),
    "RandomBrightnessContrast": (RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7),),
    "RandomBrightnessContrast-by-mean": (RandomBrightnessContrast(brightness_by_max=False, p=0.7),),
    "ColorJitter": (ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.2, p=0.8),),
    "HueSaturationValue": (HueSaturationValue(hue_shift_limit=30, sat_shift_limit=40, val_shift_limit=30, p=0.8),),
    "ToGray": (ToGray(p=0.4),),
    "GaussNoise": (GaussNoise(std_range=(0.05, 0.2), mean_range=(-0.05, 0.05), p=0.6),),
    "Solarize": (Solarize(threshold_range=(0.3, 0.7), p=0.6),),
    "OneOf": (OneOf(transforms=(VerticalFlip(p=1), ToGray(p=1), Solarize(p=1)), p=0.8),),
}
EACH_CASES = [pytest.param(e, n, marks=() if e == "gpu" else pytest.mark.slow, id=f"{e}-{n}")
              for e in ("gpu", "dali") for n in EACH]


@pytest.mark.parametrize("engine, name", EACH_CASES)
def test_each_transform_alone_replays_and_samples_as_albumentations(mini_dir, policy, engine, name):
    """Replay: albumentations' own applied parameters give the same pixels within the transform's written tolerance
    (exact for most); sampler (gpu): its rate and each parameter's distribution against albumentations' draws (KS).
    DALI replays what it has an expression for and refuses the rest with a sentence."""
    if engine not in available_loaders():
        pytest.skip(f"{engine} is not installed here")
    split, _ = load_split(mini_dir, "train")
    images = np.asarray(split.images[:600])
    users = policy.with_transforms(*EACH[name])
    reason = users.unreproduced(engine)
    if reason:
        assert engine == "dali" and "--loader gpu, torch or ffcv" in reason
        with pytest.raises(ValueError, match="cannot reproduce"):
            build_loader(engine, mini_dir, "train", 64, policy=users)
        return
    checks, _ = replay_parity(engine, images, users, seed=5)
    if engine == "gpu":
        checks += sampler_parity(images, users, seed=6)
    failed = [c.row() for c in checks if not c.passed]
    assert checks and not failed, "\n".join(failed)


@pytest.mark.parametrize("width", [16, 32, 33, 40, 100])
def test_opencv_uint8_hsv_conversions_are_reproduced_on_rows_of_any_width(width):
    """RGB2HSV in OpenCV's fixed point, and HSV2RGB truncated in OpenCV's vector blocks of a row and rounded in its
    remainder (a 40-pixel row: 32 truncated, 8 rounded on an AVX2 CPU), on random pixels."""
    import cv2
    from pipeline.transforms.colour import hsv_to_rgb, rgb_to_hsv
    rng = np.random.default_rng(width)
    hsv = np.stack([rng.integers(0, 180, (width, width)), rng.integers(0, 256, (width, width)),
                    rng.integers(0, 256, (width, width))], -1).astype(np.uint8)
    t = torch.from_numpy(hsv.astype(np.int64)).permute(2, 0, 1)[None]
    rgb = hsv_to_rgb(t[:, 0:1], t[:, 1:2], t[:, 2:3])[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(rgb, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    image = rng.integers(0, 256, (width, width, 3), dtype=np.uint8)
    h, s, v = rgb_to_hsv(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    np.testing.assert_array_equal(torch.cat([h, s, v], 1)[0].permute(1, 2, 0).numpy(),
                                  cv2.cvtColor(image, cv2.COLOR_RGB2HSV))


@pytest.mark.parametrize("position", ["center", "top_left", "top_right", "bottom_left", "bottom_right"])
@pytest.mark.parametrize("padding", [{"min_height": 37, "min_width": 36}, {"min_height": None, "min_width": None,
                                                                         "pad_height_divisor": 6,
                                                                         "pad_width_divisor": 7}])
def test_padding_is_placed_where_albumentations_places_it(mini_dir, position, padding):
    """PadIfNeeded at each fixed position (the corners put a side's whole pad before or after the image, rows and
    columns each their own way; odd pads split unevenly), to a minimum and to divisors: the same pixels."""
    import albumentations as A
    from pipeline.transforms import Fills
    split, _ = load_split(mini_dir, "train")
    images = np.array(split.images[:4])
    t = PadIfNeeded(position=position, border_mode="constant", fill=(7, 8, 9), **padding)
    theirs = A.PadIfNeeded(position=position, border_mode=0, fill=(7, 8, 9), strict=True, **padding)
    params = t.sample(len(images), (32, 32), torch.Generator().manual_seed(0))
    ours = t.apply(torch.from_numpy(images).permute(0, 3, 1, 2).float(), params, Fills((0.0, 0.0, 0.0)))
    expected = np.stack([theirs(image=im)["image"] for im in images])
    assert ours.shape[2:] != (32, 32)
    np.testing.assert_array_equal(ours.to(torch.uint8).permute(0, 2, 3, 1).numpy(), expected)
