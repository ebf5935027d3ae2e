"""bench.precise_bn: BatchNorm statistics recomputed over training images, weights untouched."""
import json

import pytest
import torch

from bench.precise_bn import recompute_bn
from conftest import ROOT, run_in_process


def test_recomputed_statistics_are_the_plain_mean_over_the_images_and_nothing_else_changes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(8, 3, 6, 6) * (1 + b), torch.zeros(8)) for b in range(3)]   # batch statistics differ
    assert recompute_bn(net, batches, images=20) == 20                  # 8 + 8 + 4 of the third batch
    conv = net[0]
    with torch.no_grad():
        means = [conv(x[:n]).mean((0, 2, 3)) for (x, _), n in zip(batches, (8, 8, 4))]
    # momentum None: each batch counts once, whatever its position (momentum 0.1 would favour the last)
    assert torch.allclose(net[1].running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert net[1].num_batches_tracked.item() == 3
    assert net[1].momentum == 0.1 and not net.training                 # as a loaded checkpoint would be
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def run_cli(*args):
    from bench.precise_bn import main
    return run_in_process(main, *args)


def test_released_weights_report_three_accuracies(mini_dir, tmp_path, capsys):
    weights = ROOT / "weights" / "c1c2c3c4-cifar10.pt"
    proc = run_cli(weights, "--data-dir", mini_dir, "--images", 300, "--device", "cpu", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(tmp_path.glob("*-precise-bn.json")).read_text())
    (row,) = report["checkpoints"]
    assert row["images"] == 300 and report["images"] == 300 and report["batch_size"] == 128
    from model.evaluate import main as evaluate
    assert evaluate(["--checkpoint", str(weights), "--data-dir", str(mini_dir), "--out", str(tmp_path)]) == 0
    # as trained is exactly what model.evaluate scores; the trained net is well above chance either way
    assert f"test accuracy: {100 * row['as_trained']:.2f}% " in capsys.readouterr().out
    for name in ("as_trained", "augmented", "clean"):
        assert 0.5 < row[name] <= 1.0
    assert report["mean_difference"]["clean"]["each"] == [pytest.approx(row["clean"] - row["as_trained"])]
    assert (tmp_path / next(tmp_path.glob("*-precise-bn.json")).name.replace(".json", ".md")).is_file()


def test_bad_checkpoint_is_one_sentence_and_writes_nothing(mini_dir, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli(bad, "--data-dir", mini_dir, "--device", "cpu", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
