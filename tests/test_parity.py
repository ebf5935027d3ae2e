"""The parity harness itself: it passes the reference against itself, and catches wrong engines."""
import subprocess
import sys

import numpy as np
import pytest

import pipeline
from conftest import ROOT
from pipeline.format import load_split
from pipeline.parity import replay_parity
from pipeline.policy import AugmentPolicy


@pytest.fixture(scope="module")
def images_policy(mini_dir):
    split, meta = load_split(mini_dir, "train")
    return np.asarray(split.images[:600]), AugmentPolicy.from_meta(meta)


@pytest.mark.parametrize("broken,failing", [
    ("replay_flip_vertical", {"HorizontalFlip"}),
    ("replay_zero_fill", {"CoarseDropout", "ShiftScaleRotate"}),
    ("replay_angle_sign", {"ShiftScaleRotate"}),
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
    proc = subprocess.run([sys.executable, "-m", "pipeline.parity", "--loader", "gpu", "--data-dir", mini_dir,
                           "--out", tmp_path, "--images", "500"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  ShiftScaleRotate" in proc.stdout and proc.stdout.strip().endswith("PASS")
    assert (tmp_path / "parity-gpu.png").stat().st_size > 20_000
    bad = subprocess.run([sys.executable, "-m", "pipeline.parity", "--loader", "nope", "--data-dir", mini_dir],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown loader" in bad.stderr and "Traceback" not in bad.stderr
