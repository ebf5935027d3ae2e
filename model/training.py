"""The pieces of a training step that train.py and bench/ share: precision choice, optimizer, one step."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: where bf16 autocast pays on a CPU (elsewhere it is emulated, and slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


AMP_CHOICES = ("auto", "on", "off", "bf16", "fp16")


def precision(device: torch.device, amp: str) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None, a sentence saying what runs and why) for ``amp``, one of AMP_CHOICES: auto,
    on (autocast even where it is slow), off (fp32), or bf16 / fp16 (autocast to that type; fp16 with a
    GradScaler): the last two make the precision itself a recipe choice on any device."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"unknown --amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}.")
    if amp == "off":
        return None, "fp32 (--amp off)"
    where = "CUDA" if device.type == "cuda" else "the CPU"
    if amp == "fp16":
        slow = "" if device.type == "cuda" else "; most CPUs have no native fp16, expect it to be far slower"
        return torch.float16, f"fp16 autocast with a GradScaler on {where} (--amp fp16{slow})"
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--amp bf16: this GPU has no bf16 support; use --amp fp16 or auto.")
        return torch.bfloat16, f"bf16 autocast on {where} (--amp bf16)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast on CUDA"
        return torch.float16, "fp16 autocast with a GradScaler on CUDA"
    if amp == "on" or cpu_has_native_bf16():
        return torch.bfloat16, "bf16 autocast on the CPU" + ("" if cpu_has_native_bf16() else
                                                             " (forced: no native bf16, expect it to be slower)")
    return None, "fp32: this CPU has no native bf16 (avx512_bf16/AMX), where bf16 autocast is slower; --amp on forces it"


def make_optimizer(net: torch.nn.Module, lr: float, momentum: float = 0.9, nesterov: bool = True,
                   weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD with weight decay on convolution and linear weights only (not BatchNorm or biases)."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum, nesterov=nesterov)


class Stepper:
    """One optimizer step under autocast (and a GradScaler for fp16)."""

    def __init__(self, net, opt, device: torch.device, amp_dtype: torch.dtype | None, label_smoothing: float = 0.0,
                 autocast_cache: bool = True):
        """``autocast_cache=False`` for a step captured as a CUDA graph (bench.measure.captured_step): autocast's
        cache of cast weights must not outlive the capture."""
        self.net, self.opt, self.device = net, opt, device
        self.amp_dtype, self.smoothing, self.autocast_cache = amp_dtype, label_smoothing, autocast_cache
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None, cache_enabled=self.autocast_cache)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, logits), both detached."""
        with self.autocast():
            out = self.net(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=self.smoothing)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach(), out.detach()
