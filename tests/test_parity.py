"""The parity harness itself: it passes the reference against itself, and catches wrong engines."""

import numpy as np
import pytest

import pipeline
from conftest import run_in_process
from pipeline.format import load_split
from pipeline.parity import replay_parity
from pipeline.policy import AugmentPolicy


@pytest.fixture(scope="module")
def images_policy(mini_dir):
    split, meta = load_split(mini_dir, "train")
    return np.asarray(split.images[:600]), AugmentPolicy.from_meta(meta)


@pytest.mark.parametrize("broken,failing", [
    ("replay_flip_vertical", {"HorizontalFlip"}),
    ("replay_zero_fill", {"CoarseDropout", "Affine"}),
    ("replay_angle_sign", {"Affine"}),
])
def test_the_harness_catches_a_wrong_engine(images_policy, monkeypatch, broken, failing):
    import broken_engines
    monkeypatch.setattr(broken_engines, "replay", getattr(broken_engines, broken), raising=False)
    monkeypatch.setitem(pipeline._ENGINES, "broken", pipeline._Engine("broken_engines", (), "-", "test"))
    checks, _ = replay_parity("broken", *images_policy, seed=1)
    failed = {c.name for c in checks if not c.passed}
    assert failing <= failed and "whole policy (p as drawn)" in failed, failed
    assert not (failed - failing - {"whole policy (p as drawn)"}), failed


def test_cli_reports_and_draws(mini_dir, tmp_path):
    from pipeline.parity import main
    proc = run_in_process(main, "--loader", "gpu", "--data-dir", mini_dir, "--out", tmp_path, "--images", "500")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  Affine" in proc.stdout and proc.stdout.strip().endswith("PASS")
    assert (tmp_path / "parity-gpu.png").stat().st_size > 20_000
    bad = run_in_process(main, "--loader", "nope", "--data-dir", mini_dir)
    assert bad.returncode == 2 and "unknown loader" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("spread", [2.0, 40.0])
def test_the_mean_image_check_counts_in_standard_errors(spread):
    """Equal engines score about 1 however much their outputs vary (smooth real pictures or blocky generated
    ones: a fixed grey-level tolerance failed the latter); a bias of a few standard errors scores far above."""
    from pipeline.parity import MEAN_IMAGE_Z_TOL, mean_image_difference
    rng = np.random.default_rng(0)
    base = rng.integers(60, 190, (3000, 8, 8, 3))
    ref = np.clip(base + rng.normal(0, spread, base.shape), 0, 255).round().astype(np.uint8)
    eng = np.clip(base + rng.normal(0, spread, base.shape), 0, 255).round().astype(np.uint8)
    z, rms, ch = mean_image_difference(eng, ref, chunk=1000)
    assert 0.8 < z < 1.2 < MEAN_IMAGE_Z_TOL
    assert rms == pytest.approx(float(np.sqrt(np.mean((eng.mean(0) - ref.mean(0).astype(np.float64)) ** 2))))
    assert np.allclose(ch, np.abs((eng.astype(float) - ref).mean((0, 1, 2))))
    se = spread * np.sqrt(2 / len(ref))
    biased = np.clip(eng.astype(int) + int(np.ceil(8 * se)), 0, 255).astype(np.uint8)
    z_biased, _, _ = mean_image_difference(biased, ref)
    assert z_biased > 4 * MEAN_IMAGE_Z_TOL
    assert mean_image_difference(ref, ref)[0] == 0.0


def test_the_device_difference_is_a_figure_of_the_engines_own_two_outputs(mini_dir, monkeypatch):
    """device_difference replays the same parameters on the device and on the CPU and reports how far apart they
    are (here both on the CPU, with one output shifted by one level in one value, to see the figure move)."""
    import numpy as np

    import pipeline.engines.gpu as gpu
    from pipeline.format import load_split
    from pipeline.parity import device_difference
    from pipeline.policy import AugmentPolicy
    split, meta = load_split(mini_dir, "train")
    images, policy = np.asarray(split.images[:50]), AugmentPolicy.from_meta(meta)
    assert "max diff 0, 0.0000% of values differ" in device_difference("gpu", images, policy, "cpu").figures
    real, calls = gpu.replay, []

    def one_off(batch, params, pol):
        out = real(batch, params, pol).clone()
        calls.append(1)
        if len(calls) == 1:
            out[0, 0, 0, 0] = out[0, 0, 0, 0] ^ 1
        return out
    monkeypatch.setattr(gpu, "replay", one_off)
    c = device_difference("gpu", images, policy, "cpu")
    assert c.passed and "max diff 1, 0.0007% of values differ (50 images" in c.figures


def test_a_check_is_plain_data_whatever_its_comparison_returned():
    """A check made from a numpy comparison (numpy's bool) serializes: bench's worker printed 'Object of type bool
    is not JSON serializable' for a peer's parity figures."""
    import json
    from pipeline.parity import Check
    c = Check("sampler", "rate", np.float64(0.5) < 1, "figures")
    assert json.loads(json.dumps({"within_tolerance": c.passed})) == {"within_tolerance": True}
