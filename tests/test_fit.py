"""train.fit: training from Python, with exceptions instead of exits."""
import pytest
import torch
from torch import nn

from conftest import ROOT
from model.checkpoint import CheckpointError, load, model_from_checkpoint
from pipeline.format import DataError
from train import Result, RunError, fit


def small_net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def test_fit_trains_a_model_object_in_place_and_resumes(tiny_dir, tmp_path):
    net = small_net()
    before = net[0].weight.detach().clone()
    r = fit(net, tiny_dir, epochs=1, out=tmp_path / "run", amp="off")
    assert isinstance(r, Result) and r.out == tmp_path / "run" and r.model is net
    assert len(r.metrics) == 1 and 0 <= r.test_acc <= 1 and r.config["parameters"] == 650
    assert not torch.equal(before, net[0].weight.detach().cpu())
    with pytest.raises(CheckpointError, match="trained from Python with a model object"):
        model_from_checkpoint(load(tmp_path / "run" / "checkpoint.pt"))
    fresh = small_net()
    again = fit(fresh, tiny_dir, epochs=1, out=tmp_path / "run", amp="off", resume=True)    # the weights go into it
    assert [m["epoch"] for m in again.metrics] == [1]
    assert torch.equal(fresh[0].weight.detach().cpu(), net[0].weight.detach().cpu())


def test_fit_takes_a_spec_and_train_py_options(tiny_dir, tmp_path):
    r = fit(f"{ROOT / 'tests' / 'data' / 'student_net.py'}:Net", tiny_dir, epochs=1, out=tmp_path / "s",
            batch_size=200, label_smoothing=0.0, nesterov=False)
    assert r.config["args"]["batch_size"] == 200 and r.config["args"]["nesterov"] is False
    assert r.config["receptive_field"] == 53


def test_fit_raises_with_a_sentence_and_never_exits(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="fit\\(\\) takes no option 'batchsize'"):
        fit(None, tiny_dir, epochs=1, batchsize=3)
    with pytest.raises(ValueError, match="--batch-size"):
        fit(None, tiny_dir, epochs=1, batch_size=0)
    with pytest.raises(DataError, match="python -m pipeline.convert"):
        fit(None, tmp_path / "nodata", epochs=1, out=tmp_path / "r")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RunError, match="not a run folder"):
        fit(None, tiny_dir, epochs=1, out=tmp_path / "mine")
    with pytest.raises(TypeError, match="nn.Module"):
        fit(42, tiny_dir)
