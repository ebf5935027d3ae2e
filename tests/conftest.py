"""Shared fixtures: cifar10-mini and the full jpeg archive from ../shared/data, converted once.

Where ../shared/data is absent, ``mini_dir`` falls back to generated batches in the official
format (tests that need real pictures skip with a visible reason)."""
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


def write_batches(folder: Path, per_batch: int = 200, seed: int = 0, test_count: int | None = None) -> Path:
    """Official-format batches of generated pictures (smooth random blobs, all 10 classes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_count if (name == "test_batch" and test_count) else per_batch
        low = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float64)
        data = np.kron(low, np.ones((1, 1, 8, 8)))  # blocky 32x32 pictures
        data = np.clip(data + rng.normal(0, 8, data.shape), 0, 255).astype(np.uint8).reshape(n, 3072)
        labels = [int(i % 10) for i in rng.permutation(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data}, f, protocol=2)
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
    return write_batches(tmp_path_factory.mktemp("generated") / "cifar-10-batches-py")


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory, mini_source) -> Path:
    """cifar10-mini converted once for the whole session (read-only by convention)."""
    from pipeline.convert import convert
    out = tmp_path_factory.mktemp("converted") / "mini"
    convert(str(mini_source), out, log=lambda *a: None)
    return out


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
