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
                   weight_decay: float = 5e-4, graph_device: torch.device | None = None) -> torch.optim.SGD:
    """SGD with weight decay on convolution and linear weights only (not BatchNorm or biases).

    ``graph_device``: the optimizer of a step replayed as a CUDA graph (GraphStepper): fused SGD with each
    group's learning rate a float32 tensor on that device. The scheduler fills the tensor in place and the
    replayed step reads it there; a plain number would be fixed into the graph at capture. The same update
    as the default (foreach) SGD: on a CPU the two give the same weights (a test checks it to 1e-5)."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]

    def rate():         # one tensor per group: a scheduler may set the groups apart
        return lr if graph_device is None else torch.tensor(float(lr), dtype=torch.float32, device=graph_device)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay, "lr": rate()},
                            {"params": no_decay, "weight_decay": 0.0, "lr": rate()}],
                           lr=lr, momentum=momentum, nesterov=nesterov,
                           fused=True if graph_device is not None else None)


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() with tensor learning rates (a graph step's optimizer) as numbers: a checkpoint that
    loads into either kind of optimizer (load_optimizer_state)."""
    state = opt.state_dict()
    state["param_groups"] = [{k: float(v) if k == "lr" and torch.is_tensor(v) else v for k, v in g.items()}
                             for g in state["param_groups"]]
    return state


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """opt.load_state_dict(state), each group's learning rate staying the kind it was: a number, or the
    tensor a graph step reads, filled in place (load_state_dict alone would put the checkpoint's kind there,
    and a tensor set in place of the captured one would never reach the graph)."""
    before = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, old in zip(opt.param_groups, before):
        value = float(group["lr"])
        if torch.is_tensor(old):
            old.fill_(value)
            group["lr"] = old
        else:
            group["lr"] = value


def scheduler_state(sched) -> dict:
    """sched.state_dict() with its last learning rates as numbers (they are tensors for a graph step's
    optimizer), so that a checkpoint holds the same kinds whichever step trained it."""
    state = sched.state_dict()
    if "_last_lr" in state:
        state["_last_lr"] = [float(v) for v in state["_last_lr"]]
    return state


class Stepper:
    """One optimizer step under autocast (and a GradScaler for fp16)."""

    def __init__(self, net, opt, device: torch.device, amp_dtype: torch.dtype | None, label_smoothing: float = 0.0,
                 autocast_cache: bool = True):
        """``autocast_cache=False`` for a step captured as a CUDA graph (GraphStepper): autocast's cache of cast
        weights must not outlive the capture."""
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


GRAPH_WARMUP = 3       # eager steps of each batch size before GraphStepper records it


def graph_problem(device: torch.device, amp_dtype: torch.dtype | None) -> str | None:
    """Why the training step cannot be replayed as a CUDA graph on ``device`` in ``amp_dtype`` (a sentence
    for the user), or None."""
    if device.type != "cuda":
        return ("--cuda-graph needs a CUDA GPU: it records the training step once and replays it on the GPU; "
                "leave it off on a CPU.")
    if amp_dtype == torch.float16:
        return ("--cuda-graph works in bf16 or fp32, not fp16, whose GradScaler decides on the host whether to "
                "skip a step: pass --amp bf16 or --amp off.")
    return None


class GraphStepper:
    """The Stepper's step, recorded once per batch size as a CUDA graph and replayed: one launch for the
    whole forward, backward and SGD update instead of several hundred kernel launches, which bound this
    small net at batch 128 on an H100 (a step took 11 ms at batch 128 and at 512 alike).

    PyTorch's whole-network capture: the first ``warmup`` steps of each batch size run eagerly on a side
    stream (real training steps: cuDNN picks its kernels, the momentum buffers are made), the next one is
    captured into a graph with its own input tensors, and every later batch of that size is copied into
    them and replayed. The step sets the gradients to None before its backward, so the graph allocates
    them in its own memory. The learning rate is read from the optimizer's tensors (make_optimizer's
    graph_device), which the scheduler fills in place. bf16 or fp32, one process, a CUDA device.

    Returns (loss, logits) like Stepper, but as the graph's own output tensors: the next step of the same
    batch size overwrites them, so use them before it (train.py adds them to its sums at once)."""

    def __init__(self, net, opt, device: torch.device, amp_dtype: torch.dtype | None, label_smoothing: float = 0.0,
                 warmup: int = GRAPH_WARMUP):
        problem = graph_problem(device, amp_dtype)
        if problem:
            raise ValueError(problem)
        # "cuda" names the current GPU, and a tensor made there says "cuda:0": compare them as the same device
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        if not all(torch.is_tensor(g["lr"]) and g["lr"].device == device and g.get("fused") for g in opt.param_groups):
            raise ValueError("the optimizer of a CUDA-graph step must be fused SGD with its learning rates as tensors "
                             "on the GPU: make it with make_optimizer(..., graph_device=device).")
        self.step = Stepper(net, opt, device, amp_dtype, label_smoothing, autocast_cache=False)
        self.net, self.opt, self.device = net, opt, device
        self.scaler = self.step.scaler          # disabled (not fp16); kept for the checkpoint's "scaler" entry
        self.warmup = max(1, warmup)
        self.lrs = [g["lr"] for g in opt.param_groups]
        self.graphs: dict[int, tuple] = {}      # batch size -> (graph, static x, static y, loss, logits)
        self.eager_steps: dict[int, int] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if any(g["lr"] is not t for g, t in zip(self.opt.param_groups, self.lrs)):
            raise RuntimeError("the optimizer's learning-rate tensors were replaced after the GraphStepper was made: "
                               "load optimizer state with model.training.load_optimizer_state, before training.")
        n = len(y)
        entry = self.graphs.get(n)
        if entry is None:
            if self.eager_steps.get(n, 0) < self.warmup:
                self.eager_steps[n] = self.eager_steps.get(n, 0) + 1
                return self._side_step(x, y)
            entry = self.graphs[n] = self._capture(x, y)
        graph, static_x, static_y, loss, out = entry
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return loss, out

    def _side_step(self, x, y):
        here = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(here)
        with torch.cuda.stream(side):
            result = self.step(x, y)
        here.wait_stream(side)
        return result

    def _capture(self, x, y):
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        # records the step (it runs when replayed); "thread_local": the loaders' own threads (DALI, FFCV) may go on
        # calling CUDA on their streams meanwhile, which the default ("global") would make fail
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            loss, out = self.step(static_x, static_y)
        return graph, static_x, static_y, loss, out
