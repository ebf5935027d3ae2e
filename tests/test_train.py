"""train.py and model.evaluate on cifar10-mini: learning, resume, AMP, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, interrupt_epoch, needs_mini, run_in_process
from pipeline import available_loaders
from trainer import data, optim
from trainer import epoch as epochs


def train_cmd(*args):
    return [sys.executable, "train.py", *map(str, args)]


def run(cmd, timeout=600):
    """A command line of train.py, model.evaluate or model.release runs in this process (the same exit code and
    output; no interpreter start and torch import per call); anything else (torchrun) in a subprocess."""
    import model.evaluate
    import model.release
    import train
    mains = {("train.py",): train.main, ("-m", "model.evaluate"): model.evaluate.main,
             ("-m", "model.release"): model.release.main}
    for head, main in mains.items():
        if tuple(map(str, cmd[1:1 + len(head)])) == head:
            return run_in_process(main, *cmd[1 + len(head):])
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("loader", [pytest.param(n, marks=[] if n == "gpu" else [pytest.mark.slow])
                                    for n in available_loaders()])
def test_one_epoch_lowers_the_loss(mini_dir, tmp_path, loader):
    out = tmp_path / "run"
    proc = run(train_cmd("--loader", loader, "--data-dir", mini_dir, "--epochs", 1, "--schedule", "step",
                         "--lr", 0.05, "--out", out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 1
    m = metrics[0]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "img_per_s", "lr"):
        assert key in m
    # from chance (loss ln 10 = 2.303, accuracy 10%) to clearly better: 15% of 1,017 test pictures is
    # five standard deviations above chance after one epoch of 40 steps
    assert m["test_loss"] < math.log(10) - 0.1 and m["test_acc"] > 0.15, m
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["loader"] == loader and config["policy"]["transforms"][2]["hole_height_range"] == [16, 16]
    assert config["data"]["counts"]["train"] > 0
    assert (out / "history.png").stat().st_size > 10_000
    assert any((out / "tb").iterdir())


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _kill_after_first_epoch(cmd, out):
    """Start a training run and SIGKILL it once its first epoch is saved."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    # epoch 1 ends with the checkpoint, then metrics.json: wait for both (killing between the two is a
    # crash that resume survives, since the checkpoint holds the metrics, but it leaves no metrics.json yet)
    while not ((out / "checkpoint.pt").exists() and (out / "metrics.json").exists()) \
            and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1, "killed during epoch 2"
    assert json.loads((out / "metrics.json").read_text())[-1]["epoch"] == 1


@pytest.mark.parametrize("ema", [0, pytest.param(0.9, marks=pytest.mark.slow)])
def test_a_killed_run_resumes_to_the_same_weights(tiny_dir, tmp_path, ema):
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--seed", 3, "--ema", ema)
    straight = tmp_path / "straight"
    assert run(train_cmd(*common, "--out", straight)).returncode == 0

    killed = tmp_path / "killed"
    _kill_after_first_epoch(train_cmd(*common, "--out", killed), killed)

    again = run(train_cmd(*common, "--out", killed))
    assert again.returncode != 0 and "--resume" in again.stderr   # never silently overwritten
    resumed = run(train_cmd(*common, "--out", killed, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    a, b = _weights(straight / "checkpoint.pt"), _weights(killed / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(json.loads((killed / "metrics.json").read_text())) == 2
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    if ema:      # the average is what is tested and saved as "model"; the trained weights resume training
        trained = torch.load(straight / "checkpoint.pt", weights_only=True)["trained_model"]
        assert all(torch.equal(trained[k], ckpt["trained_model"][k]) for k in trained)
        assert not torch.equal(trained["fc.weight"], ckpt["model"]["fc.weight"])
        assert ckpt["ema_updates"] == 2 * math.ceil(ckpt["config"]["data"]["counts"]["train"] / 128)
    else:
        assert "trained_model" not in ckpt
    other = run(train_cmd(*common[:-1], 0.5 if ema else 0.9, "--out", killed, "--resume"))
    assert other.returncode != 0 and f"--ema {float(ema)}" in other.stderr


def test_ema_averages_the_weights_after_every_step():
    import train
    from model import build_model
    from model.training import Stepper
    torch.manual_seed(0)
    net = build_model()
    args = train.parse_args(["--epochs", "1", "--ema", "0.3"])
    opt = optim.make_optimizer(net, args)
    sched, per_batch = optim.make_scheduler(opt, args, 8)
    snapshots = []

    class Recording(Stepper):
        def __call__(self, x, y):
            result = super().__call__(x, y)
            snapshots.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            return result

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(8)]
    ema = optim.make_ema(net, args.ema)
    epochs.train_one_epoch(Recording(net, opt, torch.device("cpu"), None, 0.1), batches, sched, per_batch, 0, 1,
                          ema=ema, net=net)
    expected = {k: v.float() for k, v in snapshots[0].items()}       # the first update copies the weights
    for n, snap in enumerate(snapshots[1:], start=1):                 # then the decay warms up to 0.3
        d = min(0.3, (1 + n) / (10 + n))
        expected = {k: d * expected[k] + (1 - d) * snap[k].float() for k in expected}
    assert d == 0.3
    got = ema.module.state_dict()
    for k in ("c1.0.0.weight", "fc.bias", "c4.1.body.1.2.running_mean"):
        assert torch.allclose(got[k].float(), expected[k], atol=1e-6), k
    assert got["c4.1.body.1.2.num_batches_tracked"] == snapshots[-1]["c4.1.body.1.2.num_batches_tracked"]
    assert not torch.allclose(got["fc.bias"], snapshots[-1]["fc.bias"])   # an average, not the last weights
    assert optim.make_ema(net, 0.0) is None
    with pytest.raises(ValueError, match="exactly one step"):          # not a ZeroDivisionError from torch
        optim.make_scheduler(opt, args, 4)


def test_cpu_amp_path_runs():
    import train
    from model import build_model
    from model.training import Stepper, precision
    dtype, note = precision(torch.device("cpu"), "on")
    assert dtype == torch.bfloat16 and "bf16" in note
    assert precision(torch.device("cpu"), "off")[0] is None
    assert precision(torch.device("cpu"), "bf16")[0] == torch.bfloat16
    with pytest.raises(ValueError, match="choose one of"):
        precision(torch.device("cpu"), "fp8")


def test_fp16_amp_steps_with_a_grad_scaler():
    """--amp fp16: autocast to float16 with a GradScaler that scales the loss (also on a CPU), the precision
    the issue-8 study compares with bf16."""
    import train
    from model import build_model
    from model.training import Stepper, precision
    dtype, note = precision(torch.device("cpu"), "fp16")
    assert dtype == torch.float16 and "GradScaler" in note
    assert train.parse_args(["--amp", "fp16"]).amp == "fp16"
    net = build_model().to(memory_format=torch.channels_last)
    step = Stepper(net, torch.optim.SGD(net.parameters(), lr=0.01), torch.device("cpu"), dtype, 0.1)
    assert step.scaler.is_enabled()
    g = torch.Generator().manual_seed(0)                 # fp16 is emulated on most CPUs: a small batch
    x = torch.randn(2, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,), generator=g)
    before = [p.detach().clone() for p in net.parameters()]
    loss, out = step(x, y)
    assert out.dtype == torch.float16
    assert math.isfinite(float(loss)) and step.scaler.get_scale() > 1
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    net = build_model().to(memory_format=torch.channels_last)
    args = train.parse_args(["--epochs", "1"])
    opt = optim.make_optimizer(net, args)
    sched, per_batch = optim.make_scheduler(opt, args, 3)
    step = Stepper(net, opt, torch.device("cpu"), dtype, 0.1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g).to(memory_format=torch.channels_last),
                torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]
    before = [p.detach().clone() for p in net.parameters()]
    loss, acc, seconds, img_s = epochs.train_one_epoch(step, batches, sched, per_batch, 0, 1)
    assert math.isfinite(loss) and 0 <= acc <= 1 and img_s > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    val_loss, val_acc = epochs.evaluate(net, batches, torch.device("cpu"), dtype)
    assert math.isfinite(val_loss)


def test_bad_input_gets_a_sentence(mini_dir, tmp_path):
    missing = run(train_cmd("--data-dir", tmp_path / "nodata", "--out", tmp_path / "r1"))
    assert missing.returncode == 2 and "python -m pipeline.convert" in missing.stderr
    assert "Traceback" not in missing.stderr
    for bad in (("--batch-size", 0), ("--epochs", -1), ("--lr", "nan"), ("--loader", "keras")):
        proc = run(train_cmd("--data-dir", mini_dir, *bad))
        assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, bad
    wide = run(train_cmd("--data-dir", mini_dir, "--arch", "dilated", "--widths", 64, 96, 128, 192))
    assert wide.returncode == 2 and "201,930 parameters; it must stay under 200,000" in wide.stderr


@pytest.mark.slow
def test_other_widths_train_release_and_evaluate(mini_dir, tmp_path):
    out = tmp_path / "run"
    small = ("--arch", "dilated", "--widths", 8, 16, 16, 24)
    proc = run(train_cmd("--data-dir", mini_dir, "--epochs", 1, "--batch-size", 256, "--out", out, *small))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dilated (widths 8 16 16 24):" in proc.stdout
    assert json.loads((out / "config.json").read_text())["args"]["widths"] == [8, 16, 16, 24]
    released = tmp_path / "w.pt"
    assert run([sys.executable, "-m", "model.release", "--checkpoint", out / "checkpoint.pt", "--out", released]
               ).returncode == 0
    assert json.loads(released.with_suffix(".json").read_text())["widths"] == [8, 16, 16, 24]
    acc = json.loads((out / "metrics.json").read_text())[-1]["test_acc"]
    ev = run([sys.executable, "-m", "model.evaluate", "--checkpoint", released, "--data-dir", mini_dir])
    assert ev.returncode == 0 and f"test accuracy: {100 * acc:.2f}%" in ev.stdout, ev.stderr[-2000:]
    # resuming with the arch's own widths would change the model under the run: refused
    again = run(train_cmd("--data-dir", mini_dir, "--epochs", 1, "--batch-size", 256, "--out", out, "--resume",
                          "--arch", "dilated"))
    assert again.returncode != 0 and "--widths" in again.stderr and "Traceback" not in again.stderr


def test_unavailable_loader_says_how_to_install(mini_dir, tmp_path, monkeypatch, capsys):
    import pipeline
    import train
    fake = pipeline._Engine("pipeline.engines.nope", ("surely_missing_mod",), "pip install -e '.[fake]'", "x")
    monkeypatch.setitem(pipeline._ENGINES, "torch", fake)
    assert train.main(["--loader", "torch", "--data-dir", str(mini_dir), "--out", str(tmp_path / "r"),
                       "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs surely_missing_mod" in err and "pip install" in err


@pytest.mark.slow      # about 70 s: the default suite stays under 10 minutes
def test_evaluate_reports_and_refuses_bad_checkpoints(mini_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)         # released weights' pictures go to runs/evaluate/ below the working folder
    out = tmp_path / "run"
    # fp32, as model.evaluate scores (on a CPU with native bf16, --amp auto would train and test in bf16)
    assert run(train_cmd("--data-dir", mini_dir, "--epochs", 1, "--out", out, "--amp", "off")).returncode == 0
    ev = run([sys.executable, "-m", "model.evaluate", "--checkpoint", out / "checkpoint.pt", "--data-dir", mini_dir])
    assert ev.returncode == 0, ev.stderr
    acc = json.loads((out / "metrics.json").read_text())[-1]["test_acc"]
    assert f"test accuracy: {100 * acc:.2f}%" in ev.stdout      # the same figure train.py measured
    assert (out / "checkpoint-confusion.png").exists() and (out / "checkpoint-misclassified.png").exists()

    released = tmp_path / "weights" / "c1c2c3c4-cifar10.pt"
    rel = run([sys.executable, "-m", "model.release", "--checkpoint", out / "checkpoint.pt", "--out", released])
    assert rel.returncode == 0, rel.stderr
    assert released.stat().st_size < 1_000_000
    assert "optimizer" not in torch.load(released, weights_only=True)
    card = json.loads(released.with_suffix(".json").read_text())
    assert card["test_acc"] == acc and card["parameters"] < 200_000
    (released.parent / "c1c2c3c4-cifar10-confusion.png").write_bytes(b"the committed picture")
    ev2 = run([sys.executable, "-m", "model.evaluate", "--checkpoint", released, "--data-dir", mini_dir])
    assert f"test accuracy: {100 * acc:.2f}%" in ev2.stdout      # released weights reproduce the figure
    # ...without overwriting the pictures committed beside them: those of released weights go elsewhere
    assert (released.parent / "c1c2c3c4-cifar10-confusion.png").read_bytes() == b"the committed picture"
    assert (tmp_path / "runs" / "evaluate" / "c1c2c3c4-cifar10" / "c1c2c3c4-cifar10-confusion.png").exists()

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((out / "checkpoint.pt").read_bytes()[:5000])
    other = tmp_path / "other-arch.pt"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["arch"] = "dilated"
    torch.save(ckpt, other)
    moved = tmp_path / "other-layout.pt"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["layout"] and ckpt["layout"][-1][1] in (1, 2)
    ckpt["layout"][-1][1] = 3 - ckpt["layout"][-1][1]            # a stride moved: every shape still fits
    torch.save(ckpt, moved)
    swapped = tmp_path / "other-activation.pt"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["activation"] == "relu"
    ckpt["activation"] = "mish"                 # same shapes, a nonlinearity this version does not build
    torch.save(ckpt, swapped)
    for path, fragment in ((corrupt, "not a readable checkpoint"), (other, "does not fit the 'dilated' model"),
                           (moved, "another layout of the 'c1c2c3c4' model"),
                           (swapped, "'mish' activations, which this version does not build"),
                           (tmp_path / "none.pt", "does not exist")):
        proc = run([sys.executable, "-m", "model.evaluate", "--checkpoint", path, "--data-dir", mini_dir])
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    resume_other = run(train_cmd("--data-dir", mini_dir, "--epochs", 1, "--out", out, "--resume", "--arch", "dilated"))
    assert resume_other.returncode != 0 and "--arch c1c2c3c4" in resume_other.stderr
    resume_silu = run(train_cmd("--data-dir", mini_dir, "--epochs", 1, "--out", out, "--resume", "--activation", "silu"))
    assert resume_silu.returncode != 0 and "used --activation relu, not silu" in resume_silu.stderr


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["gpu", pytest.param("dali", marks=pytest.mark.skipif(
    "dali" not in available_loaders(), reason="NVIDIA DALI is not installed (pip install -e '.[dali]')"))])
def test_two_processes_with_gloo_see_every_sample_once(mini_dir, tmp_path, loader):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = run(torchrun + ["train.py", "--data-dir", str(mini_dir), "--epochs", "1", "--log-samples",
                           "--loader", loader, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((out / f"samples-epoch1-rank{r}.json").read_text()) for r in range(2)]
    n = json.loads((out / "config.json").read_text())["data"]["counts"]["train"]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))          # every sample exactly once across ranks
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 1 and "test_acc" in metrics[0]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json" and not p.name.startswith("samples")) == \
        ["config.json", "metrics.json"]                          # one metrics file, written by rank 0
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


@needs_mini
@pytest.mark.parametrize("name", ["c1c2c3c4", "dilated"])
def test_released_weights_score_on_real_pictures(mini_dir, tmp_path, name):
    """The committed weights load into this version's model and classify the 1,017 real CIFAR-10 test
    pictures of cifar10-mini about as well as the recorded figure (a model built differently from the
    one that was trained scores near chance)."""
    weights = ROOT / "weights" / f"{name}-cifar10.pt"
    card = json.loads(weights.with_suffix(".json").read_text())
    ev = run([sys.executable, "-m", "model.evaluate", "--checkpoint", weights, "--data-dir", mini_dir,
              "--out", tmp_path])
    assert ev.returncode == 0, ev.stderr
    acc = float(ev.stdout.split("test accuracy: ")[1].split("%")[0])
    assert acc > 100 * card["test_acc"] - 5, (acc, card["test_acc"])


def test_evaluate_sums_loss_and_hits_over_batches():
    """evaluate() sums on the device and reads back once: its loss and accuracy are those of all the batches
    taken together (unequal batch sizes included)."""
    import train
    from model import build_model
    net = build_model().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(k, 3, 32, 32, generator=g), torch.randint(0, 10, (k,), generator=g)) for k in (7, 5, 3)]
    loss, acc = epochs.evaluate(net, batches, torch.device("cpu"), None)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        out = net(x)
    assert loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert acc == (out.argmax(1) == y).sum().item() / 15


def test_whiten_is_on_by_default_for_c1c2c3c4_only():
    """The default net's measured recipe whitens (eight H200 seeds, 2026-11-27); the dilated arch, never
    measured with it, does not unless asked; either can be set."""
    import train
    assert train.parse_args([]).whiten is True
    assert train.parse_args(["--arch", "dilated"]).whiten is False
    assert train.parse_args(["--no-whiten"]).whiten is False
    assert train.parse_args(["--arch", "dilated", "--whiten"]).whiten is True


def test_a_run_without_whiten_resumes_only_with_no_whiten(tiny_dir, tmp_path):
    """A run trained with --no-whiten is not resumed under the default (--whiten), which would freeze a first layer
    that was trained: the refusal names the flag its recorded recipe resumes with, and that flag does."""
    out = tmp_path / "old"
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--out", out)
    _kill_after_first_epoch(train_cmd(*common, "--no-whiten"), out)
    refused = run(train_cmd(*common, "--resume"))
    assert refused.returncode != 0 and "used --whiten False, not True: pass --no-whiten" in refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = run(train_cmd(*common, "--no-whiten", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2]


def test_whiten_trains_with_a_frozen_whitened_first_convolution_and_resumes(tiny_dir, tmp_path):
    import train
    from model import whitening_filters
    from pipeline.format import read_meta
    from pipeline.policy import AugmentPolicy
    policy = AugmentPolicy.from_meta(read_meta(tiny_dir))
    out = tmp_path / "w"
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--out", out)       # --whiten: c1c2c3c4's default
    _kill_after_first_epoch(train_cmd(*common), out)
    expected = whitening_filters(data.whitening_images(tiny_dir, policy), 32)
    first = _weights(out / "checkpoint.pt")["c1.0.0.weight"]
    assert torch.allclose(first, expected, atol=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["whiten"] is True and config["parameters"] == 194_762
    # the sample spreads over the split: tiny_dir holds 600 training images, all taken
    assert len(data.whitening_images(tiny_dir, policy)) == 600
    no = run(train_cmd(*common, "--no-whiten", "--resume"))
    assert no.returncode != 0 and "--whiten True, not False: pass --whiten " in no.stderr
    resumed = run(train_cmd(*common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "first convolution whitened, frozen" in resumed.stdout
    after = _weights(out / "checkpoint.pt")
    assert torch.equal(after["c1.0.0.weight"], first)     # frozen through the resumed epoch as well
    assert not torch.equal(after["c1.0.1.weight"], torch.ones(32))   # its BatchNorm trains


# --------------------------------------------------------------------------------------------
# interrupts, kills and failures keep the run's promise
# --------------------------------------------------------------------------------------------

def test_ctrl_c_in_the_first_epoch_names_a_command_that_works(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("--data-dir", tiny_dir, "--epochs", 1, "--out", out)
    with monkeypatch.context() as m:
        interrupt_epoch(m, 1)
        stopped = run(train_cmd(*args))
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert "run the same command again" in stopped.stderr and "--resume" not in stopped.stderr
    again = run(train_cmd(*args))                   # the command the sentence names
    assert again.returncode == 0, again.stderr[-2000:]
    # a run killed in its first epoch (no sentence printed) continues with --resume too: it starts over
    with monkeypatch.context() as m:
        interrupt_epoch(m, 1)
        assert run(train_cmd(*args[:-1], tmp_path / "killed")).returncode == 130
    resumed = run(train_cmd(*args[:-1], tmp_path / "killed", "--resume"))
    assert resumed.returncode == 0 and "starting it from the beginning" in resumed.stdout, resumed.stderr[-2000:]


def test_ctrl_c_after_an_epoch_resumes_with_the_command_it_names(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("--data-dir", tiny_dir, "--epochs", 2, "--out", out)
    with monkeypatch.context() as m:
        interrupt_epoch(m, 2)
        stopped = run(train_cmd(*args))
    assert stopped.returncode == 130 and "checkpoint of epoch 1" in stopped.stderr and "--resume" in stopped.stderr
    resumed = run(train_cmd(*args, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2]


def test_a_kill_between_the_checkpoint_and_the_plot_is_repaired_by_resume(tiny_dir, tmp_path, monkeypatch):
    import train
    out = tmp_path / "run"
    args = ("--data-dir", tiny_dir, "--epochs", 1, "--out", out)
    from trainer import folders
    real = folders.write_json

    def killed(obj, path):
        if path.name == "metrics.json":
            raise KeyboardInterrupt          # stands for SIGKILL: nothing after the checkpoint is written
        real(obj, path)
    with monkeypatch.context() as m:
        m.setattr(folders, "write_json", killed)
        stopped = run(train_cmd(*args))
    assert stopped.returncode == 130 and "checkpoint of epoch 1" in stopped.stderr
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    assert not (out / "history.png").exists()
    resumed = run(train_cmd(*args, "--resume"))      # nothing left to train, but the run's files are made again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1]
    assert (out / "history.png").stat().st_size > 10_000


def test_released_weights_copied_in_as_a_checkpoint_are_refused_by_resume(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((ROOT / "weights" / "c1c2c3c4-cifar10.pt").read_bytes())
    proc = run(train_cmd("--data-dir", tiny_dir, "--epochs", 2, "--out", out, "--resume"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "without the training state" in proc.stderr and "another --out" in proc.stderr


def test_an_out_folder_that_is_not_a_run_is_never_written_into(tiny_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "notes.txt").write_text("keep")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ((), ("--resume",)):
        proc = run(train_cmd("--data-dir", tiny_dir, "--epochs", 1, "--out", out, *extra))
        assert proc.returncode == 2 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "afile").write_text("x")
    blocked = run(train_cmd("--data-dir", tiny_dir, "--epochs", 1, "--out", tmp_path / "afile" / "run"))
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr, blocked.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the sentence for a machine without a GPU")
def test_cuda_on_a_machine_without_one_is_a_sentence_in_every_command(tiny_dir, tmp_path):
    import model.evaluate
    import pipeline.parity
    import pipeline.show
    weights = ROOT / "weights" / "c1c2c3c4-cifar10.pt"
    for main, args in ((None, train_cmd("--data-dir", tiny_dir, "--device", "cuda", "--out", tmp_path / "r")),
                       (model.evaluate.main, ["--checkpoint", weights, "--data-dir", tiny_dir, "--device", "cuda"]),
                       (pipeline.parity.main, ["--loader", "gpu", "--data-dir", tiny_dir, "--device", "cuda"]),
                       (pipeline.show.main, ["--loader", "gpu", "--data-dir", tiny_dir, "--device", "cuda",
                                             "--out", tmp_path / "g.png"])):
        proc = run(args) if main is None else run_in_process(main, *args)
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_incomplete_meta_json_is_a_sentence_for_train(tiny_dir, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data)
    meta = json.loads((data / "meta.json").read_text())
    del meta["mean"]
    (data / "meta.json").write_text(json.dumps(meta))
    proc = run(train_cmd("--data-dir", data, "--epochs", 1, "--out", tmp_path / "r"))
    assert proc.returncode == 2 and "lacks the field 'mean'" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# the training loop watches its numbers
# --------------------------------------------------------------------------------------------

NAN_AFTER = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    """Learns for {steps} training steps, then makes NaN."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        self.steps = 0

    def forward(self, x):
        out = self.fc(self.conv(x).relu().mean((2, 3)))
        if self.training:
            self.steps += 1
            if self.steps > {steps}:
                out = out * float("nan")
        return out
'''


def _last_line(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_a_loss_that_turns_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path):
    model = tmp_path / "nan_net.py"
    model.write_text(NAN_AFTER.format(steps=6))        # the tiny data: 5 steps an epoch, so step 2 of epoch 2
    out = tmp_path / "run"
    proc = run(train_cmd("--data-dir", tiny_dir, "--epochs", 3, "--model", f"{model}:Net", "--out", out))
    err = _last_line(proc)
    assert "the loss became nan at step 2 of epoch 2" in err and "still holds epoch 1's checkpoint" in err, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1]


def test_an_absurd_learning_rate_stops_the_run_with_a_sentence(tiny_dir, tmp_path):
    model = tmp_path / "small_net.py"
    model.write_text(NAN_AFTER.format(steps=10 ** 9))
    proc = run(train_cmd("--data-dir", tiny_dir, "--epochs", 1, "--lr", "1e30", "--model", f"{model}:Net",
                         "--out", tmp_path / "run"))
    err = _last_line(proc)
    assert "the loss became" in err and "of epoch 1" in err and "--lr 1e+30" in err and "no checkpoint" in err, err
    err = _last_line(run(train_cmd("--data-dir", tiny_dir, "--lr", "1e308", "--out", tmp_path / "run2")))
    assert "--lr: must be a rate a float32 can hold" in err, err


@pytest.mark.parametrize("spec", ["exits.py:Net", "builtins:exit"])
def test_a_model_that_calls_exit_is_an_error_not_a_success(tiny_dir, tmp_path, spec):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    spec = str(tmp_path / spec) if spec.startswith("exits") else spec
    proc = run(train_cmd("--data-dir", tiny_dir, "--epochs", 1, "--model", spec, "--out", tmp_path / "run"))
    err = _last_line(proc)
    assert "called exit(" in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("seed,says", [("-1", "must be a whole number from 0 to 2**63 - 1"),
                                       (str(1 << 63), "must be a whole number from 0 to 2**63 - 1"),
                                       ("x", "invalid seed_number value: 'x'")])
def test_a_seed_no_generator_takes_is_refused_by_the_command_line(seed, says, capsys):
    import train
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--seed", seed])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_full_disk_while_torch_writes_the_checkpoint_is_said_as_one(tiny_dir, tmp_path, monkeypatch):
    """torch.save's own writer reports a full disk as a RuntimeError; the checkpoint is serialized in memory and
    written as plain bytes, so it is the OSError it is, with the sentence failure-behaviour.md promises (on the first
    run and on --resume alike)."""
    import builtins

    import model.checkpoint
    out = tmp_path / "run"
    net_file = tmp_path / "small_net.py"
    net_file.write_text(NAN_AFTER.format(steps=10 ** 9))     # a small net that never makes NaN: fast epochs
    args = ("--data-dir", tiny_dir, "--epochs", 2, "--model", f"{net_file}:Net", "--out", out)
    saves = []

    def full_on(nth):
        def fake_open(path, mode="r", *a, **k):
            if str(path).endswith(".tmp-" + str(os.getpid())) and ".checkpoint.pt" in str(path):
                saves.append(path)
                if len(saves) == nth:
                    return builtins.open("/dev/full", mode, *a, **k)    # every write: ENOSPC
            return builtins.open(path, mode, *a, **k)
        return fake_open
    with monkeypatch.context() as m:
        m.setattr(model.checkpoint, "open", full_on(2), raising=False)
        err = _last_line(run(train_cmd(*args)))
    assert "could not save the checkpoint of epoch 2: no space left on the disk" in err and "epoch 1's" in err, err
    saves.clear()
    with monkeypatch.context() as m:
        m.setattr(model.checkpoint, "open", full_on(1), raising=False)
        err = _last_line(run(train_cmd(*args, "--resume")))
    assert "could not save the checkpoint of epoch 2: no space left on the disk" in err and "epoch 1's" in err, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = run(train_cmd(*args, "--resume"))          # once there is room, the sentence's command works
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
