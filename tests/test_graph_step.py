"""train.py --cuda-graph: the step recorded as a CUDA graph and replayed (model.training.GraphStepper).

On a CPU: its optimizer (fused SGD, learning rates as tensors the scheduler fills) gives the default SGD's
weights, checkpoints load into either optimizer, and every setting it cannot run in is refused with a
sentence. On a GPU: the replays train as the eager steps do, through a schedule and two batch sizes, and
train.py trains and resumes with it."""
import json
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from conftest import HAVE_MINI
from model import build_model
from model.training import (GraphStepper, Stepper, graph_problem, load_optimizer_state, make_optimizer,
                            optimizer_state, scheduler_state)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def one_cycle(opt, steps):
    """train.py's OneCycle shape over ``steps``, the learning rate moving tenfold in the first half."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.5,
                                               anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
                                               base_momentum=0.9, max_momentum=0.9)


def twin_nets(device):
    torch.manual_seed(0)
    a = build_model().to(device).to(memory_format=torch.channels_last)
    b = build_model().to(device).to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    return a, b


def test_the_graph_optimizer_trains_as_the_default_sgd():
    """Fused SGD with tensor learning rates, stepped by OneCycle, gives the default (foreach) SGD's weights; the
    scheduler fills the very tensors the optimizer was made with (a graph keeps reading those)."""
    cpu = torch.device("cpu")
    plain_net, graph_net = twin_nets(cpu)
    plain, graph = make_optimizer(plain_net, 0.1), make_optimizer(graph_net, 0.1, graph_device=cpu)
    tensors = [g["lr"] for g in graph.param_groups]
    assert all(torch.is_tensor(t) and t.dtype == torch.float32 for t in tensors) and tensors[0] is not tensors[1]
    s_plain, s_graph = one_cycle(plain, 6), one_cycle(graph, 6)
    torch.manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        for net, opt, sched in ((plain_net, plain, s_plain), (graph_net, graph, s_graph)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
        for g_plain, g_graph, t in zip(plain.param_groups, graph.param_groups, tensors):
            assert g_graph["lr"] is t and math.isclose(t.item(), g_plain["lr"], rel_tol=1e-6)
    for a, b in zip(plain_net.parameters(), graph_net.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(plain_net.fc.weight, twin_nets(cpu)[0].fc.weight)      # it did train


def test_a_checkpoint_loads_into_either_optimizer():
    """Checkpoints hold learning rates as numbers; loading keeps each optimizer's own kind: a number for the
    default, and for the graph's the same tensor object, filled in place."""
    cpu = torch.device("cpu")
    net, _ = twin_nets(cpu)
    graph = make_optimizer(net, 0.1, graph_device=cpu)
    sched = one_cycle(graph, 10)
    F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    graph.step()
    sched.step()
    state = optimizer_state(graph)
    assert all(type(g["lr"]) is float for g in state["param_groups"])
    assert all(type(v) is float for v in scheduler_state(sched)["_last_lr"])
    lr = graph.param_groups[0]["lr"].item()

    plain = make_optimizer(net, 0.1)
    load_optimizer_state(plain, state)
    assert type(plain.param_groups[0]["lr"]) is float and math.isclose(plain.param_groups[0]["lr"], lr)
    buffers = [plain.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(torch.equal(b, graph.state[p]["momentum_buffer"]) for b, p in zip(buffers, net.parameters()))

    fresh = make_optimizer(net, 0.1, graph_device=cpu)
    tensor = fresh.param_groups[0]["lr"]
    load_optimizer_state(fresh, optimizer_state(plain))
    assert fresh.param_groups[0]["lr"] is tensor and math.isclose(tensor.item(), lr, rel_tol=1e-6)


def test_settings_a_graph_cannot_run_in_are_refused_with_a_sentence():
    cpu = torch.device("cpu")
    assert "needs a CUDA GPU" in graph_problem(cpu, None)
    cuda = torch.device("cuda")          # only named, not used: the checks need no GPU
    assert "not fp16" in graph_problem(cuda, torch.float16) and "--amp bf16" in graph_problem(cuda, torch.float16)
    assert graph_problem(cuda, torch.bfloat16) is None and graph_problem(cuda, None) is None
    net, _ = twin_nets(cpu)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        GraphStepper(net, make_optimizer(net, 0.1, graph_device=cpu), cpu, None)


def test_train_py_refuses_cuda_graph_without_a_gpu(mini_dir, tmp_path, capsys):
    import train
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    assert train.main(["--data-dir", str(mini_dir), "--epochs", "1", "--out", str(out), "--cuda-graph"]) == 2
    assert "--cuda-graph needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


@needs_cuda
def test_cuda_replays_train_as_eager_steps_do():
    """From the same weights, over the same batches (two sizes, the smaller one captured too) and a OneCycle
    schedule that moves the learning rate tenfold, the replayed steps end at the eager steps' weights and
    losses: so each replay reads the scheduler's current learning rate, not the one at capture."""
    cuda = torch.device("cuda")
    eager_net, graph_net = twin_nets(cuda)
    eager_opt = make_optimizer(eager_net, 0.1, graph_device=cuda)
    graph_opt = make_optimizer(graph_net, 0.1, graph_device=cuda)
    sizes = [16] * 6 + [8] * 5 + [16] * 3
    eager_sched, graph_sched = one_cycle(eager_opt, len(sizes)), one_cycle(graph_opt, len(sizes))
    eager = Stepper(eager_net, eager_opt, cuda, None, 0.1)
    graphed = GraphStepper(graph_net, graph_opt, cuda, None, 0.1, warmup=2)
    torch.manual_seed(2)
    for n in sizes:
        x = torch.randn(n, 3, 32, 32, device=cuda).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (n,), device=cuda)
        loss_e, _ = eager(x, y)
        loss_g, out_g = graphed(x, y)
        assert out_g.shape == (n, 10)
        assert torch.allclose(loss_e, loss_g, rtol=1e-2, atol=1e-3), (n, loss_e.item(), loss_g.item())
        eager_sched.step()
        graph_sched.step()
    torch.cuda.synchronize()
    assert set(graphed.graphs) == {16, 8}                 # both sizes were captured and replayed
    # the two may pick other cuDNN kernels (TF32 convolutions): close, not equal
    for a, b in zip(eager_net.parameters(), graph_net.parameters()):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-3)
    for a, b in zip(eager_net.buffers(), graph_net.buffers()):     # BatchNorm statistics too
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3)


@needs_cuda
def test_cuda_a_replay_reads_the_learning_rate_of_its_own_step():
    """After the capture, a learning rate of 0 leaves every weight as it was and 0.1 moves them: the replay reads
    the optimizer's tensors each time. Putting numbers in their place is refused, not silently ignored."""
    cuda = torch.device("cuda")
    net, _ = twin_nets(cuda)
    opt = make_optimizer(net, 0.1, graph_device=cuda)
    step = GraphStepper(net, opt, cuda, None, warmup=1)
    x = torch.randn(8, 3, 32, 32, device=cuda).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=cuda)
    step(x, y)                                           # eager warm-up
    step(x, y)                                           # captured and replayed
    assert 8 in step.graphs
    for g in opt.param_groups:
        g["lr"].fill_(0.0)
    before = [p.detach().clone() for p in net.parameters()]
    step(x, y)
    torch.cuda.synchronize()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    for g in opt.param_groups:
        g["lr"].fill_(0.1)
    step(x, y)
    torch.cuda.synchronize()
    assert not torch.equal(before[-2], net.fc.weight)
    opt.load_state_dict(optimizer_state(opt))            # puts numbers where the tensors were
    with pytest.raises(RuntimeError, match="load_optimizer_state"):
        step(x, y)


@needs_cuda
def test_cuda_train_py_trains_and_resumes_with_cuda_graph(mini_dir, tmp_path):
    """Two epochs on cifar10-mini with --cuda-graph learn (chance is 10%), and a run stopped after its first
    epoch resumes with the option to the same number of epochs; the checkpoint's learning rates are numbers."""
    import train
    out = tmp_path / "graph"
    common = ["--data-dir", str(mini_dir), "--cuda-graph", "--out", str(out)]
    assert train.main([*common, "--epochs", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    if HAVE_MINI:       # generated pictures (no ../shared: CIFARFLOW_SHARED) have random labels, nothing to learn
        assert metrics[-1]["test_acc"] > 0.2
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert all(type(g["lr"]) is float for g in ckpt["optimizer"]["param_groups"])
    resumed = tmp_path / "resumed"
    again = ["--data-dir", str(mini_dir), "--cuda-graph", "--out", str(resumed), "--epochs", "2"]
    from trainer import epoch as epochs
    real, calls = epochs.train_one_epoch, []

    def stop_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with mock.patch.object(epochs, "train_one_epoch", stop_in_the_second_epoch), \
            pytest.raises(SystemExit, match="interrupted"):
        train.main(again)
    assert train.main([*again, "--resume"]) == 0
    assert [m["epoch"] for m in json.loads((resumed / "metrics.json").read_text())] == [1, 2]
