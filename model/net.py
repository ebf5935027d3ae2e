"""The CIFAR-10 CNN: C1-C2-C3-C4-Output, no max-pooling, under 200k parameters.

    C1  plain 3x3 convolutions at full resolution
    C2  downsample (32 -> 16), then depthwise-separable residual blocks
    C3  a dilated depthwise-separable convolution and a dilated residual block, still at 16x16
    C4  downsample (16 -> 8), then a depthwise-separable residual block
    O   global average pooling, then a Linear layer

arch="c1c2c3c4" downsamples twice with stride-2 depthwise convolutions, at C2 and at C4; C3 grows the
receptive field by dilation 2 at 16x16 instead of a stride. Under this policy the net underfits (see
README, Accuracy), so compute at 16x16 buys accuracy that parameters cannot: this layout costs a third
more time per step than C3 at 8x8 for the same 194,762 parameters, and scored 0.3 points higher (one
run each; C4 at 16x16 as well did not score higher again).
arch="dilated" has no strided convolution at all: every block stays at 32x32 and the receptive field
grows through dilations 2, 4 and 8 instead (more compute for the same parameters).

A depthwise-separable convolution is depthwise 3x3 -> pointwise 1x1 -> BatchNorm -> ReLU (or the
activation train.py --activation names), with nothing between the two convolutions (as in Xception): a
BatchNorm and ReLU there cost a quarter of the training time on a CPU and gave no accuracy.

Every Conv2d lies on the main path, in module order (the residual shortcuts are identities), which
is what ``receptive_field`` relies on.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("c1c2c3c4", "dilated")
# channels of C1's output, C2, C3 and C4 per arch; the dilated arch computes every layer at 32x32, so it is
# kept narrow (train.py --widths trains others; checkpoints store them)
WIDTHS = {"c1c2c3c4": (64, 96, 128, 160), "dilated": (32, 48, 64, 96)}
PARAMETER_BUDGET = 200_000      # the product's model stays under this many parameters
# the nonlinearity of every layer (train.py --activation); checkpoints store its name and loading builds
# the net with it, since ReLU, SiLU and GELU weights have the same shapes and would load into any of them
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
DEFAULT_ACTIVATION = "relu"


def activation_factory(name: str):
    """A function that makes one module of the named nonlinearity (in place where torch offers it)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}.")
    cls = ACTIVATIONS[name]
    return cls if cls is nn.GELU else functools.partial(cls, inplace=True)


class ConvBN(nn.Sequential):
    """Plain 3x3 convolution (stride 1, same padding) -> BatchNorm -> activation: C1's layers.
    ``act`` makes one activation module (see activation_factory), here and below."""

    def __init__(self, cin, cout, act):
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), act())


class SeparableConv(nn.Sequential):
    """Depthwise-separable convolution: depthwise 3x3 (groups = in_channels), pointwise 1x1, then
    BatchNorm (and the activation); no normalisation or activation between the two convolutions."""

    def __init__(self, cin, cout, act, stride=1, dilation=1, relu=True):
        layers = [nn.Conv2d(cin, cin, 3, stride, dilation, dilation, groups=cin, bias=False),
                  nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(act())
        super().__init__(*layers)


class SeparableResidual(nn.Module):
    """x + (separable conv -> separable conv)(x), then the activation."""

    def __init__(self, channels, act, dilation=1):
        super().__init__()
        self.body = nn.Sequential(SeparableConv(channels, channels, act, dilation=dilation),
                                  SeparableConv(channels, channels, act, dilation=dilation, relu=False))
        self.act = act()

    def forward(self, x):
        return self.act(x + self.body(x))


class Net(nn.Module):
    def __init__(self, arch: str = "c1c2c3c4", num_classes: int = 10,
                 widths: tuple[int, int, int, int] | None = None, activation: str = DEFAULT_ACTIVATION):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}.")
        act = activation_factory(activation)
        self.arch = arch
        self.widths = tuple(int(w) for w in (widths or WIDTHS[arch]))
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be four positive channel counts (C1 to C4), not {widths}.")
        w1, w2, w3, w4 = self.widths
        if arch == "c1c2c3c4":
            strides = (2, 1, 2)                           # 32 -> 16, C3 stays at 16x16, C4 -> 8x8
            dil = (1, 2, 1)                               # C3 (entry and block) is the dilated one
            blocks = (2, 1, 1)
        else:
            strides = (1, 1, 1)                           # no strided convolution anywhere
            dil = (2, 4, 8)
            blocks = (1, 1, 1)
        self.c1 = nn.Sequential(ConvBN(3, 32, act), ConvBN(32, w1, act))
        stages = []
        for cin, cout, stride, d, n in zip((w1, w2, w3), (w2, w3, w4), strides, dil, blocks):
            # a strided convolution downsamples undilated; a stride-1 entry dilates like its blocks
            stages.append(nn.Sequential(SeparableConv(cin, cout, act, stride, 1 if stride == 2 else d),
                                        *[SeparableResidual(cout, act, d) for _ in range(n)]))
        self.c2, self.c3, self.c4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.c4(self.c3(self.c2(self.c1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(arch: str = "c1c2c3c4", num_classes: int = 10, widths=None,
                activation: str = DEFAULT_ACTIVATION) -> Net:
    """The arch's net; ``widths`` (C1 to C4 channels) defaults to the arch's own (WIDTHS), ``activation``
    names the nonlinearity of every layer (one of ACTIVATIONS)."""
    return Net(arch, num_classes, widths, activation)


def count_parameters(net: nn.Module) -> int:
    """Every parameter, trained or frozen (a whitened first convolution counts toward the budget too)."""
    return sum(p.numel() for p in net.parameters())


def first_conv(net: nn.Module) -> nn.Conv2d:
    """C1's first convolution: the one layer that sees the pixels."""
    return conv_layers(net)[0][1]


def whitening_filters(images: torch.Tensor, out_channels: int, eps: float = 5e-4,
                      chunk: int = 500) -> torch.Tensor:
    """3x3 filters that whiten the image patches of ``images`` (float N x C x H x W, normalised as the
    net sees them): the eigenvectors of the patches' second-moment matrix with the largest
    ``out_channels // 2`` eigenvalues, each scaled by 1 / sqrt(eigenvalue + eps), then the same filters
    negated, so that a ReLU after them passes both signs (airbench's whitening initialisation). Returns
    (out_channels, C, 3, 3) float32, deterministic for given images."""
    c = images.shape[1]
    k, dim = out_channels // 2, c * 9
    if out_channels % 2 or not 1 <= k <= dim:
        raise ValueError(f"a whitening convolution needs an even number of filters, at most {2 * dim}, "
                         f"not {out_channels}.")
    moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        # (B, C*9, L): unfold orders each patch channel-major, as a conv weight's (C, 3, 3) flattens
        patches = F.unfold(part.to(torch.float64), 3).transpose(1, 2).reshape(-1, dim)
        moment += patches.T @ patches
        count += len(patches)
    values, vectors = torch.linalg.eigh(moment / count)       # ascending
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    filters = (vectors / torch.sqrt(values.clamp_min(0) + eps)).T.reshape(k, c, 3, 3)
    return torch.cat([filters, -filters]).float()


def whiten_first_conv(net: nn.Module, images: torch.Tensor | None) -> None:
    """train.py --whiten: set C1's first convolution to whitening_filters(images) and freeze it (it is not
    trained; its BatchNorm after it is). ``images=None`` only freezes it: a resumed run, whose weights come
    from its checkpoint."""
    conv = first_conv(net)
    if conv.kernel_size != (3, 3):
        raise ValueError("whitening expects a 3x3 first convolution.")
    if images is not None:
        with torch.no_grad():
            conv.weight.copy_(whitening_filters(images, conv.out_channels))
    conv.weight.requires_grad_(False)


def conv_layers(net: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def layout(net: nn.Module) -> list[list[int]]:
    """[kernel, stride, dilation, groups, in, out] of every convolution, in order: what a set of weights
    does not say by its shapes. Two layouts of one arch can share every parameter shape (a stride moved
    from one stage to another), so checkpoints store this and loading compares it."""
    return [[c.kernel_size[0], c.stride[0], c.dilation[0], c.groups, c.in_channels, c.out_channels]
            for _, c in conv_layers(net)]


def activation(net: nn.Module) -> str:
    """The name of the net's nonlinearity (one of ACTIVATIONS), as checkpoints store it."""
    names = {name for m in net.modules() for name, cls in ACTIVATIONS.items() if type(m) is cls}
    if len(names) != 1:
        raise ValueError(f"expected one kind of activation in the net, found {sorted(names) or 'none'}")
    return names.pop()


def receptive_field(net: nn.Module) -> int:
    """Analytic receptive field of one output of the last feature map: r += (k - 1) * d * jump;
    jump *= stride, over the convolutions of the main path in order."""
    rf, jump = 1, 1
    for _, conv in conv_layers(net):
        rf += (conv.kernel_size[0] - 1) * conv.dilation[0] * jump
        jump *= conv.stride[0]
    return rf
