"""Shared fixtures: cifar10-mini and the full jpeg archive from ../shared/data, converted once.

Where ../shared/data is absent, ``mini_dir`` falls back to generated batches in the official
format whose labels follow the pictures (each class has its own colour and stripe direction), so the
learning checks mean the same on them; tests that need real pictures skip with a visible reason."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CIFARFLOW_SHARED", ROOT.parent / "shared")) / "data"
MINI_BATCHES = SHARED / "cifar10-mini" / "cifar-10-batches-py"
JPEG_ARCHIVE = SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
HAVE_MINI = (MINI_BATCHES / "data_batch_1").is_file()
HAVE_JPEG = JPEG_ARCHIVE.is_file()
needs_mini = pytest.mark.skipif(not HAVE_MINI, reason=f"real CIFAR-10 pictures absent ({MINI_BATCHES})")
needs_jpeg = pytest.mark.skipif(not HAVE_JPEG, reason=f"cifar10-jpeg archive absent ({JPEG_ARCHIVE})")


CLASS_COLOURS = np.array([[220, 60, 60], [60, 200, 60], [60, 60, 220], [220, 200, 50], [200, 60, 200],
                          [50, 200, 210], [240, 140, 40], [130, 70, 30], [150, 150, 150], [40, 40, 40]], np.float64)


def generated_pictures(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 32, 32) uint8 pictures whose class can be seen: the class's colour, a stripe pattern whose period
    and direction depend on the class, blocky noise of the same strength on top."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    angle = labels[:, None, None] * (np.pi / 10)
    period = 4 + (labels[:, None, None] % 3) * 2
    stripes = np.cos(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)       # (n, 32, 32)
    base = CLASS_COLOURS[labels][:, :, None, None] * (0.75 + 0.25 * stripes[:, None])
    noise = np.kron(rng.normal(0, 35, (n, 3, 4, 4)), np.ones((1, 1, 8, 8))) + rng.normal(0, 8, (n, 3, 32, 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_batches(folder: Path, per_batch: int = 200, seed: int = 0, test_count: int | None = None) -> Path:
    """Official-format batches of generated pictures (all 10 classes, labels that follow the pictures)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_count if (name == "test_batch" and test_count) else per_batch
        labels = rng.permutation(np.arange(n) % 10)
        data = generated_pictures(labels, rng).reshape(n, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": [int(v) for v in labels], "data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return folder


@pytest.fixture(scope="session")
def mini_source(tmp_path_factory) -> Path:
    if HAVE_MINI:
        return MINI_BATCHES
    warnings.warn(f"cifar10-mini absent ({MINI_BATCHES}): using generated pictures instead")
    # as many pictures as cifar10-mini (5 x 1,017 + 1,017), so that one epoch is as many steps
    return write_batches(tmp_path_factory.mktemp("generated") / "cifar-10-batches-py", per_batch=1017)


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory, mini_source) -> Path:
    """cifar10-mini converted once for the whole session (read-only by convention)."""
    from pipeline.convert import convert
    out = tmp_path_factory.mktemp("converted") / "mini"
    convert(str(mini_source), out, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def policy(mini_dir):
    """The project's policy with cifar10-mini's mean and std."""
    from pipeline.format import read_meta
    from pipeline.policy import AugmentPolicy
    return AugmentPolicy.from_meta(read_meta(mini_dir))


def epoch_of(loader):
    """One epoch of a loader built with return_index=True, concatenated: (images, labels, indices)."""
    import torch
    xs, ys, idx = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """600 generated training pictures and 200 test ones, converted once: for tests of mechanics (kill and
    resume) that train several short runs and need no real pictures; an epoch takes a tenth of mini's."""
    from pipeline.convert import convert
    source = write_batches(tmp_path_factory.mktemp("tiny") / "cifar-10-batches-py", per_batch=120, test_count=200)
    out = tmp_path_factory.mktemp("converted") / "tiny"
    convert(str(source), out, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def jpeg_dir(tmp_path_factory) -> Path:
    if not HAVE_JPEG:
        pytest.skip(f"cifar10-jpeg archive absent ({JPEG_ARCHIVE})")
    from pipeline.convert import convert
    out = tmp_path_factory.mktemp("converted") / "jpeg"
    convert(str(JPEG_ARCHIVE), out, log=lambda *a: None)
    return out


@pytest.fixture
def small_batches(tmp_path) -> Path:
    """A small generated batches folder a test may break as it likes."""
    return write_batches(tmp_path / "cifar-10-batches-py", per_batch=40)


class Ran:
    """What a command line did, run in this process: its exit code and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_in_process(main, *args) -> Ran:
    """``main(argv)`` of a command, in this process (no interpreter start, no torch import per call), with
    argparse's own exits and what it prints captured: the same exit code and output a subprocess would give."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                err.write(e.code)
    return Ran(code, out.getvalue(), err.getvalue())


def interrupt_epoch(monkeypatch, which: int, exc=KeyboardInterrupt):
    """Make train_one_epoch raise ``exc`` in its ``which``-th call (1-based), as Ctrl-C in that epoch would."""
    from trainer import epoch as epochs
    real, calls = epochs.train_one_epoch, []

    def epoch(*a, **k):
        calls.append(1)
        if len(calls) == which:
            raise exc()
        return real(*a, **k)
    monkeypatch.setattr(epochs, "train_one_epoch", epoch)
