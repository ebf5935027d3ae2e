"""Per-layer table of the model: output size, parameters, receptive field and jump.

    python -m model --arch c1c2c3c4
"""
from __future__ import annotations

import argparse
import sys

import torch

from model.net import ARCHS, build_model, conv_layers, count_parameters, receptive_field


def layer_table(net: torch.nn.Module, size: int = 32) -> list[dict]:
    """One row per convolution (in main-path order), then the pooling and the Linear layer."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.AdaptiveAvgPool2d,
                                                                  torch.nn.Linear))]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    rows, rf, jump = [], 1, 1
    bn_params, last_conv = {}, None          # a BatchNorm's parameters count with the convolution before it
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            last_conv = name
        elif isinstance(m, torch.nn.BatchNorm2d):
            bn_params[last_conv] = sum(p.numel() for p in m.parameters())
    for name, conv in conv_layers(net):
        rf += (conv.kernel_size[0] - 1) * conv.dilation[0] * jump
        jump *= conv.stride[0]
        bn = bn_params.get(name, 0)
        kind = "depthwise" if conv.groups == conv.in_channels and conv.groups > 1 else \
            ("pointwise" if conv.kernel_size[0] == 1 else "conv")
        rows.append(dict(layer=name, kind=kind, kernel=conv.kernel_size[0], stride=conv.stride[0],
                         dilation=conv.dilation[0], out=shapes[name],
                         params=sum(p.numel() for p in conv.parameters()) + bn, rf=rf, jump=jump))
    for name, m in net.named_modules():
        if isinstance(m, (torch.nn.AdaptiveAvgPool2d, torch.nn.Linear)):
            rows.append(dict(layer=name, kind="GAP" if isinstance(m, torch.nn.AdaptiveAvgPool2d) else "linear",
                             kernel="-", stride="-", dilation="-", out=shapes[name],
                             params=sum(p.numel() for p in m.parameters()), rf=rf, jump=jump))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model",
                                 description="Print the model's layers with output size, parameters, "
                                             "receptive field (RF) and jump, as the RF calculation is done by hand.")
    ap.add_argument("--arch", default="c1c2c3c4", choices=ARCHS)
    ap.add_argument("--widths", type=int, nargs=4, metavar=("C1", "C2", "C3", "C4"),
                    help="channels of C1's output and of C2, C3, C4 (default: the arch's own), as train.py --widths")
    args = ap.parse_args(argv)
    try:
        net = build_model(args.arch, widths=args.widths)
    except ValueError as e:
        ap.error(str(e))
    rows = layer_table(net)
    head = f"{'layer':<24}{'kind':<11}{'k':>3}{'s':>3}{'d':>3}  {'output':<14}{'params':>8}{'RF':>6}{'jump':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        out = "x".join(str(v) for v in r["out"])
        print(f"{r['layer']:<24}{r['kind']:<11}{r['kernel']!s:>3}{r['stride']!s:>3}{r['dilation']!s:>3}  "
              f"{out:<14}{r['params']:>8,}{r['rf']:>6}{r['jump']:>6}")
    print("-" * len(head))
    print(f"{args.arch} (widths {' '.join(map(str, net.widths))}): {count_parameters(net):,} parameters, "
          f"receptive field {receptive_field(net)} (no max-pooling; GAP + Linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
