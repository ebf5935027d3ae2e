"""The measurements, run in a worker process per engine (so memory figures and warm state are its own):

    python -m bench.measure --engine NAME ...   prints one JSON object on its last line

- loader-only: images/s over full epochs after a warm-up epoch, data ending on the device;
- batch scaling: loader-only images/s per batch size;
- end-to-end: epochs (or, with --e2e-batches, a stated number of batches) of training the model on the
  engine's batches; the model-only bound is measured with ``--engine bound``: the same model and batch
  size trained on one batch resident on the device;
- torch operations dispatched per batch at train.py's batch of 128, counted over an epoch (``OpCount``);
- peak device memory and host RSS; optional torch.profiler traces for TensorBoard.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.training import GRAPH_WARMUP


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()),
            "std": float(t.std()) if len(values) > 1 else 0.0, "values": [float(v) for v in values]}


def peak_host_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0   # Linux: kB; the largest child (loader workers) added to our own


OPTIONS: dict = {}   # engine options from --options, e.g. chunk=8192
POLICY: dict = {}    # {"policy": the AugmentPolicy of --policy}; empty: the project's
MODEL: dict = {}     # {"spec": --model's FILE.py:NAME}; empty: the default net
TRAIN_BATCH = 128    # train.py's default batch size: the bound is also measured there (kernel launches weigh more)


def _loader(name, data_dir, batch_size, device, seed=0, augment=True):
    from pipeline import build_loader
    return build_loader(name, data_dir, "train", batch_size, device=device, seed=seed, augment=augment, **POLICY,
                        **OPTIONS)


def epoch_throughput(loader, device, max_batches=None) -> tuple[float, int]:
    """(seconds, images) for one pass (or ``max_batches`` batches) over the loader."""
    sync(device)
    start = time.perf_counter()
    n = 0
    for b, (x, y) in enumerate(loader):
        n += len(y)
        if max_batches is not None and b + 1 >= max_batches:
            break
    sync(device)
    return time.perf_counter() - start, n


def loader_only(name, data_dir, batch_size, device, repeats) -> dict:
    loader = _loader(name, data_dir, batch_size, device)
    epoch_throughput(loader, device)            # warm-up epoch (workers, JIT, caches)
    rates, seconds = [], []
    for _ in range(repeats):
        s, n = epoch_throughput(loader, device)
        rates.append(n / s)
        seconds.append(s)
    return {"img_per_s": stats(rates), "epoch_s": stats(seconds), "images_per_epoch": n}


def batch_scaling(name, data_dir, sizes, device) -> dict:
    out = {}
    for bs in sizes:
        loader = _loader(name, data_dir, bs, device)
        epoch_throughput(loader, device, max_batches=3)     # warm-up
        s, n = epoch_throughput(loader, device)
        out[str(bs)] = n / s
    return out


class OpCount(TorchDispatchMode):
    """Counts the torch operations dispatched in this process (views and copies included): on a GPU each is about
    one kernel launch, so the count per batch says how much launch overhead an engine carries whatever the device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


# engines whose augmentation is no torch operation of this process: their count is only what reaches torch here
OUTSIDE_TORCH = {"torch": "albumentations augments with OpenCV and numpy on DataLoader workers",
                 "dali": "DALI augments with operators of its own"}


def ops_per_batch(name, data_dir, batch_size, device) -> dict:
    """Torch operations dispatched per batch over one whole epoch (so a chunk's work is shared by its batches),
    after a warm-up epoch."""
    loader = _loader(name, data_dir, batch_size, device)
    epoch_throughput(loader, device)
    with OpCount() as counter:
        batches = sum(1 for _ in loader)
    return {"batch_size": batch_size, "ops_per_batch": counter.count / batches, "batches": batches,
            "outside_torch": OUTSIDE_TORCH.get(name)}


def make_model(device, channels_last=True, compile=False, graph=False):
    """The default net, or --model's (seeded), and its optimizer; ``graph``: the optimizer a CUDA-graph step
    needs."""
    from model import build_model, custom
    from model.training import make_optimizer
    torch.manual_seed(0)
    net = (custom.build(MODEL["spec"])[0] if MODEL.get("spec") else build_model()).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, lr=0.05, graph_device=device if graph else None)
    return (torch.compile(net) if compile else net), opt


def make_step(device, amp, channels_last=True, compile=False, graph=False):
    """(net, step, precision note): train.py's step, eager (Stepper) or replayed as a CUDA graph (GraphStepper,
    as --cuda-graph trains)."""
    from model.training import GraphStepper, Stepper, precision
    net, opt = make_model(device, channels_last, compile, graph)
    dtype, note = precision(device, amp)
    step = (GraphStepper if graph else Stepper)(net, opt, device, dtype, 0.1)
    return net, step, note


def model_bound(batch_size, device, amp, channels_last, compile, steps, warmup, train_size, graph=False) -> dict:
    """Images/s of training steps on one resident batch; ``graph``: the whole step replayed as a CUDA graph
    (the batch is still copied into the graph's input each step, as in training)."""
    net, step, note = make_step(device, amp, channels_last, compile, graph)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    net.train()
    run = lambda: step(x, y)                    # noqa: E731
    for _ in range(max(warmup, GRAPH_WARMUP + 1) if graph else warmup):    # a graph step: eager, then recorded
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    rate = steps * batch_size / (time.perf_counter() - start)
    return {"batch_size": batch_size, "channels_last": channels_last, "amp": amp, "precision": note,
            "compile": compile, "graph": graph, "img_per_s": rate, "epoch_s": train_size / rate}


def end_to_end(name, data_dir, batch_size, device, amp, epochs, max_batches, train_size, profile_dir=None,
               graph=False) -> dict:
    """Training on the engine's batches; ``graph``: with the step replayed as a CUDA graph (--cuda-graph)."""
    net, step, note = make_step(device, amp, graph=graph)
    loader = _loader(name, data_dir, batch_size, device, seed=1)
    net.train()
    for b, (x, y) in enumerate(loader):         # warm-up: a few steps of a first epoch
        step(x, y)
        if b >= 4:
            break
    last = train_size % batch_size
    if max_batches is None and last:
        # a timed full epoch ends in a smaller batch: a new shape, for which cuDNN (benchmark mode) times its
        # kernels anew, seconds on a GPU that training pays once per run, not once per epoch; pay it here
        # (a graph step: its eager steps and the recording of that size too)
        for _ in range(GRAPH_WARMUP + 1 if graph else 1):
            step(x[:last], y[:last])
    seconds, rates = [], []
    for e in range(epochs):                     # timed without the profiler: it slows every step it sees
        loader.set_epoch(e + 1)
        sync(device)
        start = time.perf_counter()
        n = 0
        for b, (x, y) in enumerate(loader):
            step(x, y)
            n += len(y)
            if max_batches is not None and b + 1 >= max_batches:
                break
        sync(device)
        s = time.perf_counter() - start
        seconds.append(s)
        rates.append(n / s)
    top_ops = profile_steps(loader, step, device, profile_dir, epochs + 1) if profile_dir else None
    return {"img_per_s": stats(rates), "measured_images": n, "precision": note, "top_ops": top_ops,
            "measured_s": stats(seconds)}


def profile_steps(loader, step, device, profile_dir, epoch) -> list[dict]:
    """A trace of a few end-to-end steps (for TensorBoard), after and apart from the timed epochs."""
    prof = _profiler(profile_dir, device)
    loader.set_epoch(epoch)
    with prof:
        for b, (x, y) in enumerate(loader):
            step(x, y)
            prof.step()
            if b + 1 >= PROFILED_STEPS:
                break
        sync(device)
    return _top_ops(prof, device)


PROFILE_SCHEDULE = {"wait": 1, "warmup": 1, "active": 4}
PROFILED_STEPS = sum(PROFILE_SCHEDULE.values())


def _profiler(profile_dir, device):
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=acts, schedule=schedule(**PROFILE_SCHEDULE, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(profile_dir)), record_shapes=False)


def _top_ops(prof, device, k=10) -> list[dict]:
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    for ev in sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:k]:
        rows.append({"op": ev.key, "self_ms": getattr(ev, key, 0) / 1000.0, "calls": ev.count})
    return rows


def parity_figures(name, data_dir, device, policy, meta) -> list[dict]:
    """The statistical parity harness's checks of an engine against albumentations, as figures (for a peer that
    does not reproduce the policy exactly, how far from it it lands)."""
    from pipeline.parity import statistical_parity
    from pipeline.policy import AugmentPolicy
    checks = statistical_parity(name, data_dir, policy or AugmentPolicy.from_meta(meta), device=device,
                                options=dict(OPTIONS) or None, sampler=False)   # our sampler's checks say nothing of it
    return [{"name": c.name, "within_tolerance": c.passed, "figures": c.figures} for c in checks]


def bound_configs(batch_size: int, amp: str, which: str, graphs: bool) -> list[tuple]:
    """The bound's variants, (batch, channels-last, amp, compile, CUDA graph), the first the default. "all"
    adds the layouts, precisions and compile, the default and compiled at train.py's batch of 128, and with
    ``graphs`` (a GPU, not fp16) the step as one CUDA graph at both sizes: on an H100 a step took about the
    same time at batch 128 as at 512, so launches, not arithmetic, bound it."""
    configs = [(True, amp, False, False), (False, amp, False, False)]
    if which == "all":
        configs += [(True, "off", False, False), (False, "off", False, False), (True, "on", False, False),
                    (True, amp, True, False)]
    configs = [(batch_size, *c) for c in configs]
    sizes = [batch_size]
    if which == "all" and batch_size != TRAIN_BATCH:
        sizes.append(TRAIN_BATCH)
        configs += [(TRAIN_BATCH, True, amp, False, False), (TRAIN_BATCH, True, amp, True, False)]
    if which == "all" and graphs:
        configs += [(bs, True, amp, False, True) for bs in sizes]
    return configs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.measure", description="One engine's measurements (worker).")
    ap.add_argument("--engine", required=True, help="an engine name, or 'bound' for the model-only bound")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scaling", default="128,256,512,1024,2048")
    ap.add_argument("--e2e-epochs", type=int, default=1)
    ap.add_argument("--e2e-batches", type=int, default=None)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--bound-steps", type=int, default=30)
    ap.add_argument("--bound-variants", default="all", choices=["all", "quick"])
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--options", default="", help="engine options, k=v,k=v (e.g. chunk=8192)")
    ap.add_argument("--policy", default=None, help="a policy file (as train.py --policy); default: the project's")
    ap.add_argument("--strict-policy", action="store_true")
    ap.add_argument("--model", default=None, help="a model of your own, as train.py --model (default: c1c2c3c4)")
    ap.add_argument("--parity", action="store_true",
                    help="also measure how far the engine lands from albumentations (statistical parity, as figures)")
    args = ap.parse_args(argv)
    OPTIONS.update(kv.split("=", 1) for kv in args.options.split(",") if kv)
    MODEL["spec"] = args.model
    device = torch.device(args.device)
    from pipeline.format import read_meta
    meta = read_meta(args.data_dir)
    train_size = meta["counts"]["train"]
    if args.policy:
        from pipeline.albu_import import policy_for
        POLICY["policy"] = policy_for(meta, args.policy, strict=args.strict_policy)[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True       # as train.py: fixed shapes, cuDNN times its kernels once
    from model.training import graph_problem, precision
    graphs = graph_problem(device, precision(device, args.amp)[0]) is None     # a GPU, not fp16
    if args.engine == "bound":
        variants = []
        for bs, cl, amp, comp, graph in bound_configs(args.batch_size, args.amp, args.bound_variants, graphs):
            variants.append(model_bound(bs, device, amp, cl, comp, args.bound_steps,
                                        max(2, args.bound_steps // 5), train_size, graph=graph))
        result = {"default": variants[0], "variants": variants}
    else:
        result = {"loader_only": loader_only(args.engine, args.data_dir, args.batch_size, device, args.repeats),
                  "batch_scaling": batch_scaling(args.engine, args.data_dir,
                                                 [int(v) for v in args.scaling.split(",") if v], device),
                  "ops": ops_per_batch(args.engine, args.data_dir, TRAIN_BATCH, device),
                  "end_to_end": end_to_end(args.engine, args.data_dir, args.batch_size, device, args.amp,
                                           args.e2e_epochs, args.e2e_batches, train_size, args.profile_dir)}
        if graphs:
            result["end_to_end_graph"] = end_to_end(args.engine, args.data_dir, args.batch_size, device, args.amp,
                                                    args.e2e_epochs, args.e2e_batches, train_size, graph=True)
        for key in ("end_to_end", "end_to_end_graph"):
            if key in result:
                e2e = result[key]
                e2e["epoch_s"] = stats([train_size / r for r in e2e["img_per_s"]["values"]])
                e2e["estimated_from_batches"] = args.e2e_batches
    result["peak_host_rss_mb"] = peak_host_rss_mb()
    result["peak_device_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if args.parity:         # after the memory figures: the harness runs the albumentations reference too
        result["parity"] = parity_figures(args.engine, args.data_dir, device, POLICY.get("policy"), meta)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
