"""Train the CIFAR-10 CNN with any registered loader engine.

    python train.py --loader torch --data-dir data/cifar10 --epochs 30 --out runs/NAME

Per epoch: a progress bar (loss, img/s), test accuracy, ``metrics.json``, TensorBoard scalars,
``history.png``, and an atomic checkpoint that ``--resume`` continues from. ``config.json`` holds
the arguments, the augmentation policy and the data's meta. Channels-last and mixed precision
are on by default; what ran is logged.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import (ACTIVATIONS, ARCHS, DEFAULT_ACTIVATION, PARAMETER_BUDGET, WIDTHS, build_model, count_parameters,
                   layout, whiten_first_conv)
from model import custom, recipe, training
from model.checkpoint import (CUSTOM, CheckpointError, checkpoint_weights, load, model_from_checkpoint,
                              require_resumable, save_atomic, write_atomic, write_text_atomic)
from model.training import AMP_CHOICES, GraphStepper, Stepper, graph_problem, precision
from pipeline import build_loader, check_seed, known_loaders
from pipeline.albu_import import add_policy_arguments, policy_for
from pipeline.cli import HelpFormatter, os_error_sentence, run_main
from pipeline.format import load_split, read_meta
from pipeline.output import Normalizer, resolve_device
from pipeline.policy import AugmentPolicy

class RunError(Exception):
    """A run that cannot start or go on as asked (its folder, --resume, an option this device cannot do).
    The message is one sentence for the user."""


WHITEN_IMAGES = 5000        # --whiten's sample of the training images (airbench takes 5,000 too)


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------

def positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def non_negative_float(text):
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return v


def positive_float(text):
    v = non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def learning_rate(text):
    v = positive_float(text)
    if v > FLOAT32_MAX:     # the optimizer steps in float32: it refuses such a rate mid-step, with a traceback
        raise argparse.ArgumentTypeError(f"must be a rate a float32 can hold (at most {FLOAT32_MAX:.3g}), got {text}")
    return v


FLOAT32_MAX = float(np.finfo(np.float32).max)


def seed_number(text):
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63 - 1, got {text}") from None


def fraction(text):
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return v


class _RaisingParser(argparse.ArgumentParser):
    """For fit(): a bad option is a ValueError with the sentence, not SystemExit."""

    def error(self, message):
        raise ValueError(message)


EXAMPLES = """examples:
  python train.py --data-dir data/cifar10                              the default recipe, 30 epochs
  python train.py --source download --data-dir data/cifar10            convert first (needs network)
  python train.py --model my_net.py:Net --data-dir data/cifar10        your own model
  python train.py --policy my_policy.py --data-dir data/cifar10       your albumentations Compose
  python train.py --loader torch --epochs 2 --out runs/quick           the albumentations reference loader
  python train.py --out runs/quick --resume                            continue a stopped run
  torchrun --standalone --nproc_per_node 8 train.py --loader dali       eight GPUs

A run writes config.json (arguments, policy, data, model facts), metrics.json, history.png, TensorBoard
scalars (tb/) and checkpoint.pt into --out after every epoch; python -m model.evaluate --checkpoint
OUT/checkpoint.pt scores it. Measured results: README.md and bench/results/."""


def build_parser(parser_class=argparse.ArgumentParser):
    """train.py's argument parser (fit() reads its options from it too)."""
    ap = parser_class(
        prog="python train.py",
        description="Train a CNN on converted CIFAR-10 with one of cifarflow's loader engines (all share one\n"
                    "augmentation policy): the built-in C1-C2-C3-C4 net, or your own with --model.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    data = ap.add_argument_group("data")
    data.add_argument("--data-dir", default="data/cifar10", help="converted data (python -m pipeline.convert)")
    data.add_argument("--source", default=None,
                      help="if --data-dir holds no converted data, convert this source into it first "
                           "('download', a cifar-10-batches-py folder, the official tar.gz or an image-folder archive)")
    data.add_argument("--loader", choices=list(known_loaders()),
                      help="data engine: gpu (batched torch ops on a device-resident dataset), torch (albumentations "
                           "on DataLoader workers, the reference), dali, ffcv; pipeline.available_loaders() lists "
                           "those installed")
    add_policy_arguments(data)
    data.add_argument("--workers", type=int, default=None,
                      help="loader workers: torch DataLoader processes, FFCV threads, DALI threads (default: all "
                           "cores; gpu has none)")
    rec = ap.add_argument_group("recipe")
    rec.add_argument("--config", default=None, metavar="FILE.toml",
                        help="a recipe file (TOML, train.py's option names with underscores) on top of "
                             "recipes/default.toml, which holds every default below; flags override both")
    rec.add_argument("--epochs", type=positive_int, help="training epochs")
    rec.add_argument("--batch-size", type=positive_int, help="images per step (per process)")
    rec.add_argument("--lr", type=learning_rate, help="peak learning rate (onecycle) or initial (step)")
    rec.add_argument("--momentum", type=fraction, help="SGD momentum")
    rec.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    rec.add_argument("--weight-decay", type=non_negative_float,
                        help="on convolution and linear weights (not on BatchNorm or biases)")
    rec.add_argument("--schedule", choices=["onecycle", "step"],
                        help="learning-rate schedule: OneCycle (linear warm-up and decay) or StepLR")
    rec.add_argument("--warmup", type=fraction, help="OneCycle: share of steps spent warming up")
    rec.add_argument("--label-smoothing", type=fraction, help="of the cross-entropy targets")
    rec.add_argument("--seed", type=seed_number, help="seeds the weights, the epoch order and the augmentation "
                                                       "(0 to 2**63 - 1)")
    model = ap.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, help="the built-in net (see --model for your own)")
    model.add_argument("--model", default=None, metavar="FILE.py:NAME",
                       help="train your own model instead of --arch: a Python file (or an importable module) and the "
                            "nn.Module class or factory in it, e.g. my_net.py:Net; called with num_classes=10 where "
                            "it takes it; checkpoints record the spec and the file's sha256")
    model.add_argument("--max-params", type=positive_int, default=None, metavar="N",
                       help="refuse a model with N parameters or more (default: 200,000 for the built-in archs, no "
                            "limit for --model); every run prints and records its count and receptive field")
    model.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,  # per arch, below
                       help="set the first 3x3 convolution to a whitening of the training images' 3x3 patches (their "
                            "principal directions and the negatives) and freeze it, as airbench does; its parameters "
                            "still count (default: on for c1c2c3c4, off for dilated and --model)")
    perf = ap.add_argument_group("performance")
    perf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA where there is a GPU")
    perf.add_argument("--amp", choices=list(AMP_CHOICES), default="auto",
                      help="mixed precision: auto = bf16 on CUDA where supported (else fp16 with a GradScaler), "
                           "bf16 on CPUs with native bf16 (avx512_bf16/AMX), fp32 on other CPUs; on = autocast "
                           "even where slow; off = fp32; bf16 / fp16 = autocast to that type on any device")
    perf.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                      help="channels-last memory format for the model and its batches")
    perf.add_argument("--compile", action="store_true", help="torch.compile the model")
    perf.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=False,
                      help="record the training step once per batch size as a CUDA graph and replay it: one launch "
                           "per step instead of hundreds (CUDA, one process, bf16 or fp32, not with --compile; SGD "
                           "then runs fused with the learning rate as a GPU tensor: the same update)")
    run = ap.add_argument_group("run")
    run.add_argument("--out", default=None, help="run folder (default: runs/<loader>-<arch or model name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    exp = ap.add_argument_group("experiments", "options kept for studies; the default recipe does not use them")
    exp.add_argument("--widths", type=positive_int, nargs=4, metavar=("C1", "C2", "C3", "C4"),
                     help="channels of C1's output and of C2, C3, C4 of a built-in arch (default: c1c2c3c4 "
                          f"{' '.join(map(str, WIDTHS['c1c2c3c4']))}, dilated {' '.join(map(str, WIDTHS['dilated']))})")
    exp.add_argument("--activation", choices=list(ACTIVATIONS),
                     help="the nonlinearity of every layer of a built-in arch (stored in the checkpoint)")
    exp.add_argument("--ema", type=fraction, metavar="DECAY",
                     help="keep an exponential moving average of the weights (and BatchNorm statistics) with this "
                          "decay per step, e.g. 0.999, and test and save it instead of the last weights; 0 = off")
    exp.add_argument("--step-size", type=positive_int, help="StepLR: epochs between decays")
    exp.add_argument("--gamma", type=positive_float, help="StepLR: decay factor")
    exp.add_argument("--log-samples", action="store_true",
                     help="write the sample indices each process trained on, per epoch (an audit of sharding)")
    ap.set_defaults(**recipe.load(recipe.DEFAULT, ap))      # the default recipe's numbers live in that file
    return ap


def parse_args(argv=None, parser_class=argparse.ArgumentParser):
    ap = build_parser(parser_class)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=None)
    config = first.parse_known_args(argv)[0].config
    if config is not None:      # the file's values become the defaults, so flags still override them
        try:
            ap.set_defaults(**recipe.load(config, ap))
        except recipe.RecipeError as e:
            ap.error(str(e))
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        ap.error("--workers must be >= 0")
    if args.model is not None:
        if args.widths is not None or args.activation != DEFAULT_ACTIVATION:
            ap.error("--widths and --activation shape the built-in nets; a model brought with --model sets its own")
        args.arch = CUSTOM
    elif args.widths is not None:
        n = count_parameters(build_model(args.arch, widths=args.widths))
        budget = args.max_params or PARAMETER_BUDGET
        if n >= budget:
            ap.error(f"--widths {' '.join(map(str, args.widths))} gives the {args.arch} model {n:,} parameters; "
                     f"it must stay under {budget:,}: narrow a stage")
    if "whiten" not in vars(args):
        args.whiten = args.arch == "c1c2c3c4"
    if args.out is None:
        args.out = f"runs/{args.loader}-{args.arch if args.model is None else args.model.rsplit(':', 1)[-1]}"
    return args


# ---------------------------------------------------------------------------------------------
# set-up helpers
# ---------------------------------------------------------------------------------------------

def whitening_images(data_dir, policy: AugmentPolicy, n: int = None) -> torch.Tensor:
    """--whiten's sample: ``n`` training images taken at an even stride over the whole split (a converted
    image-folder tree is stored class by class, so its first images are one class), normalised by the
    loaders' own Normalizer; float32 N x 3 x 32 x 32 on the CPU."""
    split, _ = load_split(data_dir, "train", verify=False)
    images = split.images
    n = min(n or WHITEN_IMAGES, len(images))
    picked = np.asarray(images[np.linspace(0, len(images) - 1, n).round().astype(np.int64)])
    return Normalizer(policy, torch.device("cpu"), normalize=True)(torch.from_numpy(picked))


# the option through which each engine takes --workers
WORKER_OPTION = {"torch": "num_workers", "ffcv": "num_workers", "dali": "num_threads"}


class Dist:
    """torchrun's process group, or a single process. Only rank 0 writes files and prints."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        want_cuda = resolve_device(device_arg).type == "cuda"
        self.device = torch.device(f"cuda:{self.local_rank}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True   # fixed input shapes: let cuDNN time its kernels once
        if self.enabled:
            import torch.distributed as dist
            dist.init_process_group("nccl" if want_cuda else "gloo")
            if not want_cuda:   # share the cores between the local processes instead of oversubscribing
                local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over ranks."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def make_net(args, num_classes: int):
    """(the net, its ModelSpec or None): --model's own, or the built-in arch; refused (RunError) over the budget."""
    spec = None
    if getattr(args, "model_object", None) is not None:     # fit(model=an nn.Module)
        net = args.model_object
        custom.check_output(net, num_classes, type(net).__name__)
    elif args.model:
        try:
            net, spec = custom.build(args.model, num_classes)
        except custom.ModelSpecError as e:
            raise RunError(str(e)) from None
    else:
        net = build_model(args.arch, num_classes, args.widths, args.activation)
    budget = args.max_params or (None if args.model else PARAMETER_BUDGET)
    n = count_parameters(net)
    if budget is not None and n >= budget:
        raise RunError(f"{args.model or args.arch} has {n:,} parameters; --max-params allows fewer than {budget:,}: "
                       f"make it smaller, or raise --max-params.")
    return net, spec


def make_optimizer(net, args, device=None):
    return training.make_optimizer(net, args.lr, args.momentum, args.nesterov, args.weight_decay,
                                   graph_device=device if args.cuda_graph else None)


def make_scheduler(opt, args, steps_per_epoch):
    """Returns (scheduler, steps it per batch?)."""
    if args.schedule == "onecycle":
        total = args.epochs * steps_per_epoch
        if args.warmup * total == 1:      # OneCycleLR divides by zero on a warm-up of exactly one step
            raise ValueError(f"{args.epochs} epoch(s) of {steps_per_epoch} batch(es) with --warmup {args.warmup} "
                             f"warm up over exactly one step, which OneCycle cannot do: pass another --warmup "
                             f"or --schedule step.")
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=args.lr, total_steps=total, pct_start=args.warmup,
            anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
            base_momentum=args.momentum, max_momentum=args.momentum), True
    return torch.optim.lr_scheduler.StepLR(opt, step_size=args.step_size, gamma=args.gamma), False


def ensure_data(args) -> dict:
    data_dir = Path(args.data_dir)
    if not (data_dir / "meta.json").is_file() and args.source:
        from pipeline.convert import convert
        convert(args.source, data_dir)
    return read_meta(data_dir)


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def evaluate(net, loader, device, amp_dtype, dist: "Dist | None" = None) -> tuple[float, float]:
    net.eval()
    # summed on the device and read back once: a read per batch would make the host wait for the GPU each time
    loss_t = torch.zeros((), dtype=torch.float64, device=device)
    correct_t = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for x, y in loader:
            out = net(x).float()
            loss_t += F.cross_entropy(out, y, reduction="sum")
            correct_t += (out.argmax(1) == y).sum()
            n += len(y)
    loss_sum, correct = loss_t.item(), int(correct_t.item())
    if dist is not None:
        loss_sum, correct, n = dist.sum(loss_sum, correct, n)
    return loss_sum / n, correct / n


def make_ema(net, decay: float):
    """An averaged copy of ``net`` (parameters and BatchNorm buffers) that update_parameters(net) moves
    toward net by 1 - d per call, d = min(decay, (1 + n) / (10 + n)) after n updates: the decay warms up
    (as in TensorFlow's and timm's EMA), else at 0.999 the average of the first epochs is mostly the
    random initial weights and tests at chance. None when decay is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged, current, n):      # n: a tensor on the device, so no sync per step
        if not torch.is_floating_point(averaged[0]):           # num_batches_tracked: keep the model's
            torch._foreach_copy_(averaged, current)
            return
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(averaged[0].dtype)
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - d))

    return AveragedModel(net, multi_avg_fn=update, use_buffers=True)


class NonFiniteLoss(Exception):
    """A loss that is NaN or infinite: training cannot go on from there. ``where``: "step 17 of epoch 3"."""

    def __init__(self, where: str, value: float):
        super().__init__(where, value)
        self.where, self.value = where, value


def check_losses(losses: torch.Tensor, epoch: int, dist: "Dist | None", final: bool) -> None:
    """NonFiniteLoss naming the first of ``losses`` (each step's, in order) that is not finite, if any. Reads the
    device, so it is called where the loop reads it anyway. Under torchrun only at the end of the epoch (``final``),
    and decided over all ranks at once, so that every rank stops together instead of one waiting for the others."""
    bad = ~torch.isfinite(losses)
    if dist is not None and dist.enabled:
        if not final:
            return
        local = bool(bad.any())
        if dist.sum(float(local))[0] == 0:
            return
        if not local:
            raise NonFiniteLoss(f"epoch {epoch} (on another process)", float("nan"))
    elif not bool(bad.any()):
        return
    step = int(bad.nonzero()[0, 0])
    raise NonFiniteLoss(f"step {step + 1} of epoch {epoch}", float(losses[step]))


def train_one_epoch(step: Stepper, loader, sched, per_batch, epoch, epochs, dist: "Dist | None" = None,
                    seen: list | None = None, ema=None, net=None):
    """One epoch; returns (loss, accuracy, seconds, images/s), summed over ranks. ``seen`` collects the
    sample indices trained on (the loader then yields them); ``ema`` (with the unwrapped ``net``) is
    updated after every step. NonFiniteLoss at the first step whose loss is NaN or infinite (check_losses, where
    the losses are read: about once a second, and at the end)."""
    from tqdm import tqdm
    step.net.train()
    device = step.device
    losses = torch.zeros(max(len(loader), 1), device=device)    # each step's loss, kept on the device
    sizes = []
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    start = shown = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, mininterval=1.0,
               dynamic_ncols=True, disable=dist is not None and not dist.main)
    with bar:
        for b, batch in enumerate(bar):
            x, y = batch[0], batch[1]
            if seen is not None:
                seen.extend(batch[2].tolist())
            loss, out = step(x, y)
            if ema is not None:
                ema.update_parameters(net)
            if per_batch:
                sched.step()
            if b == len(losses):        # a loader that yields more batches than its len() said
                losses = torch.cat([losses, torch.zeros_like(losses)])
            losses[b] = loss
            sizes.append(len(y))
            correct += (out.argmax(1) == y).sum()
            n += len(y)
            now = time.perf_counter()
            if now - shown >= 1.0:      # reading the losses waits for the GPU: about once a second, as tqdm redraws
                shown = now
                check_losses(losses[:b + 1], epoch + 1, dist, final=False)
                bar.set_postfix(loss=f"{losses[:b + 1].mean().item():.3f}", img_s=f"{n / (now - start):.0f}")
    if not per_batch:
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    check_losses(losses[:len(sizes)], epoch + 1, dist, final=True)
    total_loss = float((losses[:len(sizes)].double() * torch.tensor(sizes, dtype=torch.float64, device=device)).sum())
    total_correct, total_n = correct.item(), n
    if dist is not None:
        total_loss, total_correct, total_n, seconds = dist.sum(total_loss, total_correct, total_n, seconds)
        seconds /= dist.world
    return total_loss / total_n, total_correct / total_n, seconds, total_n / seconds


def plot_history(metrics: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [m["epoch"] for m in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [m["train_loss"] for m in metrics], "o-", label="train (augmented, smoothed)")
    a.plot(ep, [m["test_loss"] for m in metrics], "o-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [100 * m["train_acc"] for m in metrics], "o-", label="train (augmented)")
    b.plot(ep, [100 * m["test_acc"] for m in metrics], "o-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.legend(), b.grid(alpha=0.3)
    best = max(metrics, key=lambda m: m["test_acc"])
    fig.suptitle(f"last test accuracy {100 * metrics[-1]['test_acc']:.2f}% "
                 f"(best {100 * best['test_acc']:.2f}% at epoch {best['epoch']})")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def write_json(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def run_folder_state(out: Path) -> str:
    """"absent", "empty", "run" (a run folder of train.py's, with its config.json or checkpoint: it may be
    continued or restarted, and only the run's own files in it are ever written) or "foreign" (anything else:
    never written into)."""
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "foreign"
    names = {p.name for p in out.iterdir()}
    if not names:
        return "empty"
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    ours = isinstance(config, dict) and "args" in config and "policy" in config
    return "run" if ours or "checkpoint.pt" in names else "foreign"


def check_run_folder(args) -> bool:
    """Whether this run continues from a checkpoint: refuses (RunError) a folder that is not a run's, a finished
    or started run without --resume, --resume with nothing to continue."""
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    state = run_folder_state(out)
    if state == "foreign":
        raise RunError(f"{out} exists and is not a run folder of train.py (it holds other files): it is never "
                       f"written into; pass another --out.")
    if ckpt_path.exists() and not args.resume:
        raise RunError(f"{out} already holds a run: pass --resume to continue it, or another --out.")
    if args.resume and not ckpt_path.exists():
        if state == "run":      # killed or interrupted before its first checkpoint: nothing to lose, start it
            print(f"note: {out} holds no checkpoint yet (stopped during epoch 1): starting it from the beginning")
            return False
        raise RunError(f"--resume: {ckpt_path} does not exist, nothing to continue: drop --resume to start a run.")
    return args.resume


def run(args) -> dict:
    out = Path(args.out)
    resume = check_run_folder(args)
    ckpt_path = out / "checkpoint.pt"
    dist = Dist(args.device)
    try:
        return _run(args, dist, out, ckpt_path, resume)
    finally:
        dist.close()


def _run(args, dist: Dist, out: Path, ckpt_path: Path, resume: bool) -> dict:
    device = dist.device
    amp_dtype, amp_note = precision(device, args.amp)    # ValueError: --amp bf16 on a GPU without bf16
    if args.cuda_graph:
        if dist.enabled or args.compile:
            raise RunError("--cuda-graph replays one process's step as it was recorded: leave it off "
                           f"{'with torchrun' if dist.enabled else 'with --compile'}.")
        problem = graph_problem(device, amp_dtype)
        if problem:
            raise RunError(problem)
    if dist.main:
        meta = ensure_data(args)
    if dist.enabled:
        import torch.distributed as tdist
        tdist.barrier()
    meta = read_meta(args.data_dir)
    policy, notes = policy_for(meta, args.policy, strict=args.strict_policy)
    if dist.main:
        for note in notes:
            print(f"note: {note}")
    seed_everything(args.seed)

    options = {}
    if args.workers is not None:
        key = WORKER_OPTION.get(args.loader)
        if key is None:
            if dist.main:
                print(f"note: --workers does not apply to --loader {args.loader} (it has no worker processes)")
        else:
            options[key] = args.workers
    train_loader = build_loader(args.loader, args.data_dir, "train", args.batch_size, device=device,
                                seed=args.seed, policy=policy, return_index=args.log_samples, **options)
    test_loader = build_loader(args.loader, args.data_dir, "test", 500, device=device, augment=False,
                               seed=args.seed, policy=policy, **options)

    net, spec = make_net(args, len(meta["classes"]))
    facts = custom.facts(net)
    net = net.to(device)
    if args.whiten:     # computed on the CPU, so every device gets the same filters; a resumed run's are saved
        whiten_first_conv(net, None if resume else whitening_images(args.data_dir, policy))
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, args, device)
    sched, per_batch = make_scheduler(opt, args, len(train_loader))
    metrics, start_epoch = [], 0
    ema = make_ema(net, args.ema)

    if resume:
        ckpt = load(ckpt_path)
        require_resumable(ckpt, ckpt_path)
        # the run goes on with the recipe it started with: the one its config.json records
        before, now = recipe.recorded(ckpt["config"]), recipe.resolved(vars(args))
        if before is None:
            raise RunError(f"--resume: the run in {out} was written by an earlier cifarflow that did not record its "
                           f"recipe, so it cannot be checked that this command goes on with the same one: start "
                           f"the run afresh in another --out.")
        differ = [key for key in recipe.KEYS if before.get(key) != now.get(key)]
        if differ:
            key, more = differ[0], recipe.differences(before, now, differ[1:])
            flag = f"--{key.replace('_', '-')}"
            same = (f"pass {flag if before[key] else '--no-' + flag[2:]}" if isinstance(before[key], bool)
                    else "pass the same value")
            also = f" (and {', '.join(more)})" if more else ""
            raise RunError(f"--resume: the run in {out} used {flag} {before[key]}, not {now[key]}{also}: {same} "
                           f"(its config.json records its recipe).")
        trained_on = ckpt["config"].get("data")
        if isinstance(trained_on, dict) and any(trained_on.get(k) != meta[k] for k in ("classes", "counts", "mean", "std")):
            was = ckpt["config"]["args"].get("data_dir")
            raise RunError(f"--resume: the run in {out} trained on other data than {args.data_dir} holds "
                           f"({_counts(trained_on)}, not {_counts(meta)}): pass the --data-dir it trained on"
                           + (f" ({was})." if isinstance(was, str) else "."))
        try:
            trained_policy = AugmentPolicy.from_dict(ckpt["config"]["policy"])
        except ValueError as e:
            raise CheckpointError(f"{ckpt_path} records a policy this version cannot read ({e}): start the run "
                                  f"afresh in another --out.") from None
        if trained_policy != policy:
            now = f"--policy {args.policy}" if args.policy else "the project's policy"
            raise RunError(f"--resume: the run in {out} trained with another augmentation policy than {now}: pass "
                           f"the --policy it trained with (its config.json holds that policy).")
        # "model" holds the weights that are tested and released: the average when --ema is on
        if getattr(args, "model_object", None) is not None:      # fit(model=an nn.Module): the weights go into it
            tested = checkpoint_weights(ckpt)
        else:
            tested = model_from_checkpoint(ckpt, ckpt_path, args.arch).state_dict()
        try:
            if ema is not None:
                ema.module.load_state_dict(tested)
                ema.n_averaged.fill_(ckpt["ema_updates"])
                net.load_state_dict(ckpt["trained_model"])
            else:
                net.load_state_dict(tested)
            training.load_optimizer_state(opt, ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt_path} holds trained weights, an optimizer, scheduler or random-number "
                                  f"state that does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}): start the "
                                  f"run afresh in another --out.") from None
        scaler_state = ckpt["scaler"]
        metrics, start_epoch = list(ckpt["metrics"]), ckpt["epoch"]
        if dist.main:
            print(f"resuming {out} after epoch {start_epoch}")

    wrapped = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = torch.compile(wrapped) if args.compile else wrapped
    if args.cuda_graph:
        step = GraphStepper(compiled, opt, device, amp_dtype, args.label_smoothing)
    else:
        step = Stepper(compiled, opt, device, amp_dtype, args.label_smoothing)
    if resume:
        try:
            step.scaler.load_state_dict(scaler_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt_path} holds a gradient-scaler state that does not fit this run "
                                  f"({type(e).__name__}): start the run afresh in another --out.") from None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    config = {"args": {k: v for k, v in vars(args).items() if k != "model_object"}, "policy": policy.to_dict(), "data": {k: meta[k] for k in
              ("classes", "counts", "mean", "std", "source")}, "precision": amp_note, "device": str(device),
              "parameters": facts["parameters"], "receptive_field": facts["receptive_field"],
              "widths": facts["widths"], "activation": facts["activation"],
              "receptive_field_clipped": facts["receptive_field_clipped"],
              "model_spec": spec.to_dict() if spec else (
                  {"spec": None, "object": f"{type(net).__module__}.{type(net).__qualname__}"}
                  if getattr(args, "model_object", None) is not None else None),
              "recipe": {"files": [str(recipe.DEFAULT.relative_to(recipe.ROOT)), *([args.config] if args.config
                                                                                    else [])],
                         "values": recipe.resolved(vars(args))},
              "code": recipe.code_version(),
              "torch": str(torch.__version__), "world_size": dist.world,
              "threads": torch.get_num_threads() if device.type == "cpu" else None}
    if not dist.main:
        return _train(args, dist, out, ckpt_path, train_loader, test_loader, net, compiled, opt, sched,
                      per_batch, step, amp_dtype, metrics, start_epoch, config, meta, tb=None, ema=ema)
    write_json(config, out / "config.json")
    if metrics:     # a kill between the checkpoint and these files left them behind it: made again from it
        write_json(metrics, out / "metrics.json")
        plot_history(metrics, out / "history.png")
    variant = " (widths " + " ".join(map(str, net.widths)) + ")" if args.widths else ""
    name = spec.text if spec else (type(net).__name__ if getattr(args, "model_object", None) is not None
                                   else args.arch)
    if args.activation != DEFAULT_ACTIVATION:
        variant += f" ({args.activation})"
    if args.whiten:
        variant += " (first convolution whitened, frozen)"
    rf = f"{'at least ' if facts['receptive_field_clipped'] else ''}{facts['receptive_field']}"
    print(f"{name}{variant}: {facts['parameters']:,} parameters, "
          f"receptive field {rf}; "
          f"loader {args.loader}, {len(train_loader)} batches of {args.batch_size}; device {device}"
          f"{f' ({threads(torch.get_num_threads())})' if device.type == 'cpu' else ''}; "
          f"{amp_note}; {'channels-last' if args.channels_last else 'contiguous'}"
          f"{'; torch.compile' if args.compile else ''}{'; CUDA graph' if args.cuda_graph else ''}"
          f"{f'; {dist.world} processes (DistributedDataParallel)' if dist.enabled else ''}")
    if getattr(train_loader, "summary", None):        # how the engine runs here (DALI: its operators and batch)
        print(f"loader {args.loader}: {train_loader.summary}")
    code = config["code"]
    print(f"recipe {' + '.join(config['recipe']['files'])}; code "
          + (f"{code['commit'][:10]}{' with uncommitted changes' if code['dirty'] else ''}" if code else
             "outside a git checkout"))

    from torch.utils.tensorboard import SummaryWriter
    tb = SummaryWriter(str(out / "tb"), purge_step=start_epoch + 1)
    return _train(args, dist, out, ckpt_path, train_loader, test_loader, net, compiled, opt, sched,
                  per_batch, step, amp_dtype, metrics, start_epoch, config, meta, tb, ema)


def _counts(data: dict) -> str:
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    return f"{counts.get('train')} train and {counts.get('test')} test images"


def threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def _train(args, dist, out, ckpt_path, train_loader, test_loader, net, compiled, opt, sched, per_batch, step,
           amp_dtype, metrics, start_epoch, config, meta, tb, ema=None) -> dict:
    device = dist.device
    saved = start_epoch             # the epoch whose checkpoint is on disk
    try:
        for epoch in range(start_epoch, args.epochs):
            train_loader.set_epoch(epoch)
            lr = float(opt.param_groups[0]["lr"])          # a GPU tensor with --cuda-graph
            seen = [] if args.log_samples else None
            tr_loss, tr_acc, seconds, img_s = train_one_epoch(step, train_loader, sched, per_batch, epoch,
                                                              args.epochs, dist, seen, ema, net)
            tested = net if ema is None else ema.module
            te_loss, te_acc = evaluate(tested, test_loader, device, amp_dtype, dist)
            if not math.isfinite(te_loss):
                raise NonFiniteLoss(f"the test set after epoch {epoch + 1}", te_loss)
            if seen is not None:
                out.mkdir(parents=True, exist_ok=True)
                write_json(seen, out / f"samples-epoch{epoch + 1}-rank{dist.rank}.json")
            if not dist.main:
                metrics.append({"epoch": epoch + 1})
                continue
            m = {"epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
                 "test_acc": te_acc, "epoch_time_s": seconds, "img_per_s": img_s, "lr": lr}
            metrics.append(m)
            print(f"epoch {epoch + 1:>3}/{args.epochs}  train loss {tr_loss:.4f} acc {100 * tr_acc:5.2f}%  "
                  f"test loss {te_loss:.4f} acc {100 * te_acc:5.2f}%  {seconds:6.1f}s  {img_s:7.0f} img/s  lr {lr:.4f}",
                  flush=True)
            for k, v in m.items():
                if k != "epoch":
                    tb.add_scalar(k, v, epoch + 1)
            tb.flush()
            extra = {} if ema is None else {"trained_model": net.state_dict(),
                                            "ema_updates": int(ema.n_averaged.item())}
            save_checkpoint({"model": tested.state_dict(), "arch": args.arch, "widths": config["widths"],
                         "layout": layout(net), "activation": config["activation"], **extra,
                         **({"model_spec": config["model_spec"]} if config["model_spec"] else {}),
                         "num_classes": len(meta["classes"]),
                         "optimizer": training.optimizer_state(opt), "scheduler": training.scheduler_state(sched),
                         "scaler": step.scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                         "metrics": metrics, "config": config}, ckpt_path, out, metrics)
            saved = epoch + 1       # the checkpoint is what --resume continues; the files below follow from it
            write_json(metrics, out / "metrics.json")
            plot_history(metrics, out / "history.png")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_sentence(out, saved)) from None
    except NonFiniteLoss as e:
        raise RunError(non_finite_sentence(e, args, out, saved)) from None
    finally:
        if tb is not None:
            tb.close()
    if metrics and dist.main:
        print(f"test accuracy {100 * metrics[-1]['test_acc']:.2f}% after {metrics[-1]['epoch']} epochs -> {out}")
    return {"metrics": metrics, "out": str(out), "model": net if ema is None else ema.module, "config": config}


@dataclass
class Result:
    """What fit() returns: the per-epoch metrics, the run folder, the final test accuracy, the trained model (on its
    device; the averaged one with ema) and the run's config (config.json)."""
    metrics: list[dict]
    out: Path
    test_acc: float
    model: torch.nn.Module
    config: dict


def fit(model=None, data_dir="data/cifar10", *, loader: str | None = None, epochs: int | None = None, out=None,
        **options) -> Result:
    """Train from Python, as ``python train.py`` does from the command line; raises exceptions, never exits.

    ``model``: None (the built-in ``arch`` option, default c1c2c3c4), a spec such as ``"my_net.py:Net"`` (as
    ``--model``), or an ``nn.Module`` to train in place. ``loader``, ``epochs`` and every option left out take
    the recipe's values (recipes/default.toml, or ``config=``). ``options`` are train.py's options with underscores
    (``batch_size=256``, ``amp="off"``, ``resume=True``...). Bad options raise ValueError; bad data DataError;
    a run folder that cannot be used RunError; a checkpoint that cannot be resumed CheckpointError;
    an engine that is not installed LoaderUnavailable. Each sentence says what to do."""
    module = model if isinstance(model, torch.nn.Module) else None
    argv = ["--data-dir", str(data_dir)]       # loader and epochs: the recipe's (recipes/default.toml) unless given
    if loader is not None:
        argv += ["--loader", loader]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if out is not None:
        argv += ["--out", str(out)]
    if isinstance(model, str):
        argv += ["--model", model]
    elif model is not None and module is None:
        raise TypeError(f"fit(model=...) takes None, a spec such as 'my_net.py:Net' or an nn.Module, "
                        f"not {type(model).__name__}.")
    argv += _option_argv(options)
    args = parse_args(argv, parser_class=_RaisingParser)
    if module is not None:
        args.arch, args.model_object = CUSTOM, module
        args.whiten = options.get("whiten", False)
        if out is None:
            args.out = f"runs/{args.loader}-{type(module).__name__}"
    result = run(args)
    final = result["metrics"][-1] if result["metrics"] else {}
    return Result(result["metrics"], Path(result["out"]), final.get("test_acc"), result["model"], result["config"])


def _option_argv(options: dict) -> list[str]:
    """train.py's command line for fit()'s keyword options (unknown names refused)."""
    known = {a.dest: a for a in build_parser()._actions}
    argv = []
    for name, value in options.items():
        action = known.get(name)
        if action is None or name in ("data_dir", "loader", "epochs", "out", "model"):
            raise ValueError(f"fit() takes no option {name!r}" + ("" if action is None else " here: it is an argument of "
                                                                  "its own") + f"; its options are train.py's: "
                             f"{', '.join(sorted(n for n in known if n != 'help'))}.")
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def save_checkpoint(state: dict, ckpt_path: Path, out: Path, metrics: list[dict]) -> None:
    """The epoch's checkpoint (metrics.json and history.png follow it, and are made again from it on --resume if a
    kill falls between). A disk that fills up loses only this epoch, and the sentence says so."""
    try:
        save_atomic(state, ckpt_path)
    except OSError as e:
        kept = metrics[-2]["epoch"] if len(metrics) > 1 else 0
        reason = os_error_sentence(e).rstrip(".")
        raise RunError(f"could not save the checkpoint of epoch {metrics[-1]['epoch']}: {reason}; "
                       f"{out} still holds " + (f"epoch {kept}'s: continue it with the same command and --resume "
                                                f"once there is room." if kept else
                                                "no checkpoint: run the same command again once there is room.")
                       ) from None


def non_finite_sentence(e: NonFiniteLoss, args, out: Path, saved: int) -> str:
    kept = (f"{out} still holds epoch {saved}'s checkpoint, trained before it" if saved else
            "no checkpoint was written")
    return (f"the loss became {e.value} at {e.where}: the model's outputs or weights are no longer finite numbers "
            f"(a learning rate too high for it, --lr {args.lr:g}, or a model that makes NaN); stopped, {kept}: "
            f"lower --lr or mend the model, and start a new run.")


def interrupted_sentence(out: Path, done: int) -> str:
    if done:
        return (f"interrupted: {out} holds the checkpoint of epoch {done}; continue with the same command "
                f"and --resume.")
    return ("interrupted during epoch 1, before its checkpoint: nothing to continue; run the same command again "
            "to start over.")


def main(argv=None) -> int:
    args = parse_args(argv)
    interrupted = ["interrupted before training began: run the same command again."]

    def body():
        try:
            run(args)
        except KeyboardInterrupt as e:
            if e.args:
                interrupted[0] = e.args[0]
            raise
    return run_main(body, expected=(CheckpointError, RunError), interrupted=lambda: interrupted[0])


if __name__ == "__main__":
    sys.exit(main())
