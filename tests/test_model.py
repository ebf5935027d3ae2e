"""The model contract, for both archs."""

import pytest
import torch
from torch import nn

from conftest import run_in_process
from model.__main__ import main as layer_table_main
from model import ARCHS, build_model, conv_layers, count_parameters, receptive_field


@pytest.fixture(params=ARCHS)
def net(request):
    torch.manual_seed(0)
    return build_model(request.param)


def test_budget_and_building_blocks(net):
    assert count_parameters(net) < 200_000
    mods = list(net.modules())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d)) for m in mods)
    convs = [c for _, c in conv_layers(net)]
    # depthwise-separable: a depthwise 3x3 (groups = in_channels) followed by a 1x1
    pairs = [(a, b) for a, b in zip(convs, convs[1:])
             if a.groups == a.in_channels > 1 and b.kernel_size == (1, 1) and b.in_channels == a.out_channels]
    assert pairs
    assert any(c.dilation[0] > 1 for c in convs)
    # global average pooling, then a Linear layer, at the end
    assert isinstance(net.pool, nn.AdaptiveAvgPool2d) and net.pool.output_size in (1, (1, 1))
    assert isinstance(net.fc, nn.Linear) and net.fc.out_features == 10
    assert receptive_field(net) > 44


def test_downsampling(net):
    strides = [c.stride[0] for _, c in conv_layers(net)]
    if net.arch == "dilated":
        assert set(strides) == {1}, "the dilated arch has no strided convolution at all"
    else:
        assert strides.count(2) == 2, "c1c2c3c4 downsamples twice, then dilates"
    assert net.features(torch.zeros(1, 3, 32, 32)).shape[-1] == (32 if net.arch == "dilated" else 8)


def test_output_and_channels_last_equal_contiguous(net):
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a = net(x)
        cl = net.to(memory_format=torch.channels_last)
        b = cl(x.to(memory_format=torch.channels_last))
    assert a.shape == (4, 10)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def measured_receptive_field(net, size=160) -> int:
    """The extent of the input region whose gradient reaches the centre output of the last feature map,
    with positive weights and inputs so that no ReLU or cancellation hides a path."""
    net = net.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1), m.bias.fill_(0), m.running_mean.fill_(0), m.running_var.fill_(1)
    x = torch.ones(1, 3, size, size, requires_grad=True)
    f = net.features(x)
    h, w = f.shape[-2:]
    f[0, :, h // 2, w // 2].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum(0).sum(1)).flatten()
    cols = torch.nonzero(x.grad[0].abs().sum(0).sum(0)).flatten()
    assert rows.min() > 0 and rows.max() < size - 1, "input too small to contain the whole field"
    assert rows.max() - rows.min() == cols.max() - cols.min()
    return int(rows.max() - rows.min() + 1)


def test_receptive_field_matches_a_measurement(net):
    assert measured_receptive_field(net) == receptive_field(net)


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_table_cli(arch):
    proc = run_in_process(layer_table_main, "--arch", arch)
    assert proc.returncode == 0, proc.stderr
    net = build_model(arch)
    lines = proc.stdout.splitlines()
    assert f"{count_parameters(net):,} parameters, receptive field {receptive_field(net)}" in lines[-1]
    # the parameter column adds up to the total
    body = [ln for ln in lines[2:-2]]
    assert sum(int(ln.split()[-3].replace(",", "")) for ln in body) == count_parameters(net)
    assert body[-1].split()[-2] == str(receptive_field(net))


def test_layer_table_cli_with_other_widths():
    proc = run_in_process(layer_table_main, "--arch", "dilated", "--widths", "48", "96", "128", "192")
    assert proc.returncode == 0, proc.stderr
    net = build_model("dilated", widths=(48, 96, 128, 192))
    assert net.widths == (48, 96, 128, 192) and count_parameters(net) != count_parameters(build_model("dilated"))
    assert f"(widths 48 96 128 192): {count_parameters(net):,} parameters" in proc.stdout.splitlines()[-1]
    bad = run_in_process(layer_table_main, "--widths", "8", "8", "8", "0")
    assert bad.returncode == 2 and "four positive channel counts" in bad.stderr and "Traceback" not in bad.stderr


def test_checkpoints_rebuild_the_widths_they_were_trained_with(tmp_path):
    from model.checkpoint import CheckpointError, model_from_checkpoint
    from model.net import activation, layout
    torch.manual_seed(0)
    net = build_model("dilated", widths=(16, 24, 32, 48)).eval()
    ckpt = {"model": net.state_dict(), "arch": "dilated", "widths": [16, 24, 32, 48], "layout": layout(net),
            "activation": activation(net)}
    back = model_from_checkpoint(ckpt).eval()
    assert back.widths == (16, 24, 32, 48)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), net(x))
    # without the widths the arch's own are built, and the weights do not fit them: a sentence, not a traceback
    with pytest.raises(CheckpointError, match="does not fit the 'dilated' model"):
        model_from_checkpoint({k: v for k, v in ckpt.items() if k != "widths"})
    with pytest.raises(CheckpointError, match="unusable widths"):
        model_from_checkpoint({**ckpt, "widths": [16, 24, 0, 48]})


def test_checkpoints_rebuild_the_activation_they_were_trained_with():
    from model.checkpoint import model_from_checkpoint
    from model.net import ACTIVATIONS, activation, layout
    x = torch.randn(2, 3, 32, 32)
    outputs = {}
    for name in ACTIVATIONS:
        torch.manual_seed(0)                    # the same weights in every net: only the nonlinearity differs
        net = build_model(activation=name).eval()
        assert activation(net) == name and count_parameters(net) == count_parameters(build_model())
        ckpt = {"model": net.state_dict(), "arch": "c1c2c3c4", "layout": layout(net), "activation": name}
        back = model_from_checkpoint(ckpt).eval()
        assert activation(back) == name and torch.equal(back(x), net(x))
        outputs[name] = net(x)
    assert not torch.allclose(outputs["relu"], outputs["silu"])      # each name builds another net
    assert not torch.allclose(outputs["silu"], outputs["gelu"])
    # checkpoints from before the field existed are ReLU nets
    del ckpt["activation"]
    assert activation(model_from_checkpoint(ckpt)) == "relu"
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        build_model(activation="tanh")


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    from model.checkpoint import save_atomic, write_atomic, write_text_atomic
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old\n")

    def half_then_ctrl_c(f):
        f.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_ctrl_c)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    save_atomic({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))


def test_whitening_filters_whiten_the_patches_they_were_computed_from():
    from model import whitening_filters
    torch.manual_seed(0)
    # smooth, correlated pictures: neighbouring pixels and the three channels share most of their signal
    base = torch.nn.functional.avg_pool2d(torch.randn(200, 1, 36, 36), 5, 1)
    images = base.repeat(1, 3, 1, 1) + 0.3 * torch.randn(200, 3, 32, 32)
    w = whitening_filters(images, 32, eps=0.0)
    assert w.shape == (32, 3, 3, 3) and w.dtype == torch.float32
    w = w.double()
    assert torch.equal(w[16:], -w[:16])                  # each direction and its negative, for the ReLU after
    y = torch.nn.functional.conv2d(images.double(), w[:16]).permute(1, 0, 2, 3).reshape(16, -1)
    moment = y @ y.T / y.shape[1]
    assert torch.allclose(moment, torch.eye(16, dtype=torch.float64), atol=1e-5)     # white: unit, uncorrelated
    # largest variance first: each filter is a unit direction over sqrt(its variance), so the norms grow
    norms = w[:16].flatten(1).norm(dim=1)
    assert torch.all(norms[1:] >= norms[:-1] - 1e-6)
    with pytest.raises(ValueError, match="even number"):
        whitening_filters(images, 31)
    with pytest.raises(ValueError, match="at most 54"):
        whitening_filters(images, 56)


def test_a_whitened_first_convolution_is_frozen_and_still_counted():
    from model import first_conv, whiten_first_conv
    from model.training import make_optimizer
    torch.manual_seed(0)
    net = build_model()
    before = count_parameters(net)
    whiten_first_conv(net, torch.randn(64, 3, 32, 32))
    conv = first_conv(net)
    assert conv is net.c1[0][0] and not conv.weight.requires_grad
    assert count_parameters(net) == before               # frozen weights count toward the budget
    frozen, other = conv.weight.clone(), net.fc.weight.clone()
    opt = make_optimizer(net, 0.1)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(8, 3, 32, 32)).square().mean().backward()
        opt.step()
    assert torch.equal(conv.weight, frozen) and not torch.equal(net.fc.weight, other)
    again = build_model()
    whiten_first_conv(again, None)                       # a resumed run: frozen, weights left as they are
    assert not first_conv(again).weight.requires_grad
