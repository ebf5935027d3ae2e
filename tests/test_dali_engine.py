"""The `dali` engine, in DALI's CPU mode here (GPU tests skip with a reason without CUDA)."""
import numpy as np
import pytest
import torch

from conftest import epoch_of
from pipeline import available_loaders, build_loader
from pipeline.format import load_split
from pipeline.parity import replay_parity, statistical_parity

pytestmark = pytest.mark.skipif("dali" not in available_loaders(),
                                reason="NVIDIA DALI is not installed (pip install -e '.[dali]')")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA GPU on this machine"))]


@pytest.mark.parametrize("device", DEVICES)
def test_contract_and_every_sample_once(mini_dir, device):
    split, _ = load_split(mini_dir, "train")
    n = len(split.labels)
    loader = build_loader("dali", mini_dir, "train", 500, device=device, return_index=True)
    assert len(loader) == -(-n // 500)
    batches = list(loader)
    assert len(batches) == len(loader) and len(batches[-1][0]) == n % 500
    x, y, i = (torch.cat(t) for t in zip(*batches))
    assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32) and x.device.type == device
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in batches)
    assert sorted(i.tolist()) == list(range(n))
    np.testing.assert_array_equal(y.cpu().numpy(), split.labels[i.cpu().numpy()])
    raw, _, ri = epoch_of(build_loader("dali", mini_dir, "train", 512, device=device, augment=False,
                                    normalize=False, return_index=True))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).cpu().numpy(), split.images[ri.cpu().numpy()])
    # normalization: (x - mean) / std of meta, on unaugmented test pixels
    test, meta = load_split(mini_dir, "test")
    xt, _ = next(iter(build_loader("dali", mini_dir, "test", 100, device=device, augment=False)))
    src = torch.from_numpy(np.array(test.images[:100])).permute(0, 3, 1, 2).float()
    expected = (src - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(xt.cpu(), expected, rtol=0, atol=1e-4)


def test_seed_determinism_and_epochs(mini_dir):
    def run(seed, epoch=None):
        loader = build_loader("dali", mini_dir, "train", 512, seed=seed, normalize=False, return_index=True)
        if epoch is not None:
            loader.set_epoch(epoch)
        return loader, epoch_of(loader)

    la, a = run(3)
    _, b = run(3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    a2 = epoch_of(la)                    # the next epoch differs...
    assert not torch.equal(a[2], a2[2]) and not torch.equal(a[0], a2[0])
    _, again = run(3, epoch=1)           # ...and is replayed by set_epoch
    assert all(torch.equal(u, v) for u, v in zip(a2, again))
    _, c = run(4)
    assert not torch.equal(a[0], c[0])


def test_two_shards_cover_the_epoch_without_overlap(mini_dir):
    seen = [epoch_of(build_loader("dali", mini_dir, "train", 256, seed=1, shard=(r, 2), return_index=True))[2]
            for r in range(2)]
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(len(load_split(mini_dir, "train")[0].labels)))


@pytest.mark.parametrize("device", DEVICES)
def test_replay_pixel_parity(mini_dir, policy, device):
    split, _ = load_split(mini_dir, "train")
    checks, _ = replay_parity("dali", np.asarray(split.images[:1500]), policy, seed=5, device=device)
    failed = [c.row() for c in checks if not c.passed]
    assert len(checks) == 4 and not failed, failed


@pytest.mark.parametrize("device", DEVICES)
def test_statistical_parity(mini_dir, policy, device):
    checks = statistical_parity("dali", mini_dir, policy, seed=7, device=device)
    assert any(c.name == "mean augmented image" for c in checks)
    failed = [c.row() for c in checks if not c.passed]
    assert not failed, failed


def test_the_loader_runs_the_shared_sampler(mini_dir, policy):
    """DALI draws no numbers of its own: its epoch is the shared sampler's parameters through its expressions, so
    an image of the epoch is its replay (the pixels the parity harness checks are the pixels that train)."""
    import pipeline.engines.dali as dali
    from pipeline.output import epoch_seed
    loader = build_loader("dali", mini_dir, "train", 512, seed=5, normalize=False, return_index=True,
                          shuffle=False)
    x, _, i = epoch_of(loader)
    assert torch.equal(i, torch.arange(len(x)))
    split, _ = load_split(mini_dir, "train")
    params = policy.sample(len(x), torch.Generator().manual_seed(epoch_seed(5, 0, 1)))
    first = params.select(slice(0, 300))
    replayed = dali.replay(torch.from_numpy(np.array(split.images[:300])), first, policy)
    assert torch.equal(x[:300].permute(0, 2, 3, 1), replayed)
    with pytest.raises(ValueError, match="takes no option 'mode'"):
        build_loader("dali", mini_dir, "train", 512, mode="native")


def test_dali_runs_at_its_own_batch_and_serves_slices_of_it(mini_dir, monkeypatch):
    """DALI's batch (pipe_batch, whole training batches) is decoupled from the training batch: the pipeline runs
    ceil(n / pipe_batch) times, the training batches are slices in the epoch's order with a partial last one, and
    labels and indices follow the pixels (unaugmented pixels are the source images of the indices)."""
    import pipeline.engines.dali as dali
    split, _ = load_split(mini_dir, "train")
    n = len(split.labels)
    calls = []
    real = dali._EpochSource.__call__
    monkeypatch.setattr(dali._EpochSource, "__call__", lambda self, info: calls.append(real(self, info)) or calls[-1])
    loader = build_loader("dali", mini_dir, "train", 128, augment=False, normalize=False, return_index=True,
                          pipe_batch=1000)
    assert loader.pipe_batch == 896 and "DALI batches of 896 images sliced into batches of 128" in loader.summary
    batches = list(loader)
    assert len(calls) == -(-n // 896)                 # batches given to DALI (the call after the last one stops)
    assert [len(b[1]) for b in batches] == [128] * (n // 128) + [n % 128] and len(batches) == len(loader)
    x, y, i = (torch.cat(t) for t in zip(*batches))
    assert sorted(i.tolist()) == list(range(n))
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), split.images[i.numpy()])
    np.testing.assert_array_equal(y.numpy(), split.labels[i.numpy()])
    with pytest.raises(ValueError, match="pipe_batch must be a positive number of images"):
        build_loader("dali", mini_dir, "train", 128, pipe_batch=0)


def test_the_dali_batch_never_changes_a_replayed_epoch(mini_dir):
    """A sample's pixels depend only on its parameters: DALI batches of 256 or of 2,048 (with a
    partial last one) give the same epoch, batch for batch; drop_last and shards too."""
    def epoch(pipe_batch, **kw):
        return epoch_of(build_loader("dali", mini_dir, "train", 128, seed=2, normalize=False, return_index=True,
                                     pipe_batch=pipe_batch, **kw))
    for kw in ({}, {"drop_last": True, "shard": (1, 2)}):
        small, large = epoch(256, **kw), epoch(2048, **kw)
        assert all(torch.equal(a, b) for a, b in zip(small, large)), kw


@pytest.mark.slow
def test_train_py_with_dali_and_a_graph_step_stand_in(mini_dir, tmp_path, monkeypatch):
    """--loader dali --cuda-graph, all but the CUDA part: train.py hands the step DALI's batches (float32,
    channels-last, the full size and the last partial one), a step that copies each into a static input buffer
    as the graph step does (the buffer outlives the slice it was filled from), and the run learns."""
    import json

    import train
    import trainer.loop
    from model.training import Stepper
    seen = []

    class StaticBufferStep:
        def __init__(self, net, opt, device, amp_dtype, label_smoothing=0.0):
            self.step, self.buffers = Stepper(net, opt, device, amp_dtype, label_smoothing), {}
            self.net, self.device, self.scaler = net, device, self.step.scaler

        def __call__(self, x, y):
            seen.append((len(y), x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
            sx, sy = self.buffers.setdefault(len(y), (torch.empty_like(x), torch.empty_like(y)))
            sx.copy_(x), sy.copy_(y)
            return self.step(sx, sy)

    monkeypatch.setattr(trainer.loop, "graph_problem", lambda device, dtype: None)
    monkeypatch.setattr(trainer.loop, "GraphStepper", StaticBufferStep)
    out = tmp_path / "dali-graph"
    assert train.main(["--data-dir", str(mini_dir), "--loader", "dali", "--cuda-graph", "--epochs", "1",
                       "--amp", "off", "--out", str(out)]) == 0
    n = json.loads((out / "config.json").read_text())["data"]["counts"]["train"]
    assert {s[0] for s in seen} == {128, n % 128} and all(s[1] == torch.float32 and s[2] for s in seen)
    assert json.loads((out / "metrics.json").read_text())[0]["test_acc"] > 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_train_py_learns_with_dali_and_cuda_graph(mini_dir, tmp_path):
    """The headline use on a GPU: --loader dali --cuda-graph, GPU operators fed from GPU memory, one epoch."""
    import json

    import train
    out = tmp_path / "dali-graph"
    assert train.main(["--data-dir", str(mini_dir), "--loader", "dali", "--cuda-graph", "--epochs", "1",
                       "--out", str(out)]) == 0
    loader = build_loader("dali", mini_dir, "train", 128, device="cuda")
    assert loader.images.is_cuda and "GPU operators" in loader.summary
    assert json.loads((out / "metrics.json").read_text())[0]["test_acc"] > 0.15
