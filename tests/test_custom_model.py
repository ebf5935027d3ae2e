"""Bring your own model: train.py --model FILE:NAME (or module:NAME), measured parameters and receptive field,
checkpoints that rebuild it and refuse a changed file, the budget."""
import json
import shutil
import textwrap

import pytest
import torch

from conftest import ROOT, interrupt_epoch, run_in_process
from model.custom import ModelSpecError, build, facts, measured_receptive_field

STUDENT = ROOT / "tests" / "data" / "student_net.py"


def train(*args):
    import train as train_module
    return run_in_process(train_module.main, *args)


def evaluate(*args):
    from model.evaluate import main
    return run_in_process(main, *args)


def test_the_measured_receptive_field_is_the_analytic_one_of_the_built_in_nets():
    from model import ARCHS, build_model, receptive_field
    for arch in ARCHS:
        net = build_model(arch)
        assert measured_receptive_field(net) == (receptive_field(net), False)
    rf, clipped = measured_receptive_field(build(f"{STUDENT}:Net")[0])
    assert (rf, clipped) == (53, False)         # worked by hand in the file's layer order


def test_a_students_network_trains_evaluates_and_refuses_a_changed_file(mini_dir, tmp_path, monkeypatch):
    """The assignment's kind of network (conv blocks, a depthwise-separable and a dilated layer, GAP + FC, 183,674
    parameters, receptive field 53), written as a student would, trains one epoch through --model, is evaluated
    from its checkpoint, and --resume refuses the file once it changed."""
    net_file = tmp_path / "my_net.py"
    shutil.copy(STUDENT, net_file)
    out = tmp_path / "run"
    common = ("--model", f"{net_file}:Net", "--data-dir", mini_dir, "--epochs", 2, "--out", out,
              "--amp", "off")      # fp32, as model.evaluate scores: on a CPU with native bf16, auto would train in bf16
    with monkeypatch.context() as m:        # epoch 1 of 2, then Ctrl-C: the run keeps epoch 1's checkpoint
        interrupt_epoch(m, 2)
        stopped = train(*common)
    assert stopped.returncode == 130, stopped.stderr
    assert "183,674 parameters, receptive field 53" in stopped.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["parameters"] == 183_674 and config["receptive_field"] == 53
    assert config["model_spec"]["sha256"] and config["model_spec"]["attr"] == "Net"
    acc = json.loads((out / "metrics.json").read_text())[-1]["test_acc"]
    assert acc > 0.15                            # learned something in one epoch
    ev = evaluate("--checkpoint", out / "checkpoint.pt", "--data-dir", mini_dir)
    assert ev.returncode == 0 and f"test accuracy: {100 * acc:.2f}%" in ev.stdout, ev.stderr

    net_file.write_text(net_file.read_text().replace("nn.Linear(160, num_classes)", "nn.Linear(160, num_classes)  #"))
    changed = train(*common, "--resume")
    assert changed.returncode == 2 and "has changed since" in changed.stderr and "Traceback" not in changed.stderr
    refused = evaluate("--checkpoint", out / "checkpoint.pt", "--data-dir", mini_dir)
    assert refused.returncode == 2 and "has changed since" in refused.stderr


FACTORY = """
import torch.nn as nn

def make_net(num_classes):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

class NoArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = make_net(10)

    def forward(self, x):
        return self.body(x)

def wrong_output():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())

LIMIT = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "zoo_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "zoo_models.py"


def test_module_and_factory_forms(user_module, tiny_dir, tmp_path):
    net, spec = build("zoo_models:make_net")
    assert spec.source == "zoo_models" and spec.sha256 and facts(net)["receptive_field"] == 7
    assert isinstance(build(f"{user_module}:NoArgs")[0], torch.nn.Module)     # a class without num_classes
    proc = train("--model", "zoo_models:make_net", "--data-dir", tiny_dir, "--epochs", 1, "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zoo_models:make_net: 2,970 parameters, receptive field 7" in proc.stdout
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["arch"] == "custom" and ckpt["model_spec"]["spec"] == "zoo_models:make_net"
    released = tmp_path / "w.pt"
    from model.release import main as release
    assert run_in_process(release, "--checkpoint", tmp_path / "r" / "checkpoint.pt", "--out", released).returncode == 0
    assert evaluate("--checkpoint", released, "--data-dir", tiny_dir, "--out", tmp_path).returncode == 0


@pytest.mark.parametrize("spec,fragment", [
    ("nope.py:Net", "does not exist"),
    ("zoo_models:Missing", "has no 'Missing'"),
    ("zoo_models:wrong_output", "must return (batch, 10) logits"),
    ("zoo_models:LIMIT", "not an nn.Module class or a factory"),
    ("zoo_models", "must name a file or module and an attribute"),
    ("no_such_module_here:Net", "cannot import module"),
])
def test_bad_model_specs_are_one_sentence(user_module, tiny_dir, tmp_path, spec, fragment):
    with pytest.raises(ModelSpecError, match=None) as e:
        build(spec)
    assert fragment in str(e.value)
    proc = train("--model", spec, "--data-dir", tiny_dir, "--epochs", 1, "--out", tmp_path / "r")
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_max_params_refuses_a_model_over_the_budget(user_module, tiny_dir, tmp_path):
    proc = train("--model", "zoo_models:make_net", "--max-params", 2000, "--data-dir", tiny_dir, "--epochs", 1,
                 "--out", tmp_path / "r")
    assert proc.returncode == 2 and "2,970 parameters; --max-params allows fewer than 2,000" in proc.stderr
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    wide = train("--arch", "dilated", "--widths", 8, 16, 16, 24, "--max-params", 5000, "--data-dir", tiny_dir)
    assert wide.returncode == 2 and "must stay under 5,000" in wide.stderr


@pytest.mark.slow
def test_a_students_network_trains_under_torchrun_and_with_compile(tiny_dir, tmp_path):
    """--model goes where the built-in nets go: two processes with DistributedDataParallel (gloo here, NCCL on
    GPUs) train it on disjoint shards, and --compile compiles it."""
    import subprocess
    import sys
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(torchrun + ["train.py", "--model", f"{STUDENT}:Net", "--data-dir", str(tiny_dir),
                                      "--epochs", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["parameters"] == 183_674
    compiled = train("--model", f"{STUDENT}:Net", "--data-dir", tiny_dir, "--epochs", 1, "--compile",
                     "--out", tmp_path / "compiled")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "torch.compile" in compiled.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_a_students_network_trains_with_cuda_graph(mini_dir, tmp_path):
    proc = train("--model", f"{STUDENT}:Net", "--data-dir", mini_dir, "--epochs", 1, "--cuda-graph",
                 "--out", tmp_path / "graph")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA graph" in proc.stdout
    assert json.loads((tmp_path / "graph" / "metrics.json").read_text())[0]["test_acc"] > 0.15
