
import pytest

import pipeline
from conftest import run_in_process
from pipeline import LoaderUnavailable, available_loaders, build_loader
from pipeline.format import DataError


def test_torch_is_available_and_unknown_names_get_a_sentence(mini_dir):
    assert "torch" in available_loaders()
    with pytest.raises(LoaderUnavailable, match="unknown loader 'tensorflow': choose one of torch"):
        build_loader("tensorflow", mini_dir, "train", 8)


def test_an_engine_with_missing_dependencies_says_what_to_install(mini_dir, monkeypatch):
    fake = pipeline._Engine("pipeline.engines.nope", ("surely_not_installed_pkg",),
                            "pip install surely-not-installed", "test")
    monkeypatch.setitem(pipeline._ENGINES, "fake", fake)
    assert "fake" not in available_loaders()
    with pytest.raises(LoaderUnavailable, match="needs surely_not_installed_pkg.*pip install surely-not-installed"):
        build_loader("fake", mini_dir, "train", 8)


def test_bad_arguments(mini_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        build_loader("torch", mini_dir, "train", 0)
    with pytest.raises(ValueError, match="split"):
        build_loader("torch", mini_dir, "validation", 8)
    with pytest.raises(DataError, match="python -m pipeline.convert"):
        build_loader("torch", tmp_path / "nothing", "train", 8)
    with pytest.raises(ValueError, match="the 'gpu' loader takes no option 'num_workers': its options are .*compile"):
        build_loader("gpu", mini_dir, "train", 8, num_workers=2)


def test_cuda_without_a_gpu_is_a_sentence(mini_dir):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        build_loader("torch", mini_dir, "train", 8, device="cuda")


def test_show_writes_a_grid(mini_dir, tmp_path):
    out = tmp_path / "grid.png"
    from pipeline.show import main
    proc = run_in_process(main, "--loader", "torch", "--data-dir", mini_dir, "--out", out, "--count", "8")
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    w, h = Image.open(out).size
    assert w > 300 and h > 100
    bad = run_in_process(main, "--data-dir", tmp_path / "none", "--out", out)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "pipeline.convert" in bad.stderr
