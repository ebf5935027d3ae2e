"""The training loop: a Recipe in, a trained run folder out.

    run(recipe) -> {"metrics", "out", "model", "config"}

``prepare`` builds the pieces a run trains with (its data, model, optimizer and schedule, the step; a ``Run``),
``restore`` continues them from a checkpoint on --resume, and ``train_epochs`` trains epoch after epoch, testing,
recording and checkpointing each (the epoch itself: trainer.epoch). The loop reads the loader registry and the
model, never an engine directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import DEFAULT_ACTIVATION, custom
from model.checkpoint import CheckpointError
from model.training import GraphStepper, Stepper, graph_problem, precision
from pipeline.format import read_meta
from pipeline.policy import AugmentPolicy
from trainer import data, epoch as epochs, network, optim, state
from trainer import recipe as recipes
from trainer.distributed import Dist
from trainer.folders import RunError, check_run_folder, interrupted_sentence, write_json, write_progress
from trainer.recipe import Recipe


@dataclass
class Run:
    """The pieces a run trains with."""
    recipe: Recipe
    dist: Dist
    out: Path
    meta: dict
    policy: AugmentPolicy
    train_loader: object
    test_loader: object
    net: torch.nn.Module
    spec: object                    # the --model ModelSpec, or None
    facts: dict                     # custom.facts of the net: parameters, receptive field, widths, activation
    opt: torch.optim.Optimizer
    sched: object
    per_batch: bool                 # the schedule steps per batch (else per epoch)
    ema: object
    amp_dtype: torch.dtype | None
    amp_note: str
    model_object: torch.nn.Module | None = None
    step: object = None
    config: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    start_epoch: int = 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def tested(self) -> torch.nn.Module:
        """The net that is tested and saved: the weight average with --ema."""
        return self.net if self.ema is None else self.ema.module

    def say(self, text: str) -> None:
        if self.dist.main:
            print(text)


def run(recipe: Recipe, model_object: torch.nn.Module | None = None) -> dict:
    """Train ``recipe`` (``model_object``: fit()'s nn.Module, trained in place); returns the metrics, the run folder,
    the trained model and the run's config."""
    out = Path(recipe.out)
    resume = check_run_folder(out, recipe.resume)
    dist = Dist(recipe.device)
    try:
        r = prepare(recipe, dist, out, model_object, resume)
        if resume:
            ckpt = state.restore(r, r.ckpt_path)
            r.metrics, r.start_epoch = list(ckpt["metrics"]), ckpt["epoch"]
            r.say(f"resuming {out} after epoch {r.start_epoch}")
        r.step = make_step(r)
        if resume:
            state.restore_scaler(r.step, ckpt, r.ckpt_path)
        r.config = run_config(r)
        if not dist.main:
            return train_epochs(r, tb=None)
        out.mkdir(parents=True, exist_ok=True)
        write_json(r.config, out / "config.json")
        if r.metrics:     # a kill between the checkpoint and these files left them behind it: made again from it
            write_progress(r.metrics, out)
        announce(r)
        from torch.utils.tensorboard import SummaryWriter
        return train_epochs(r, SummaryWriter(str(out / "tb"), purge_step=r.start_epoch + 1))
    finally:
        dist.close()


def amp_and_graph(recipe: Recipe, dist: Dist) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, the sentence saying what runs) on this device; RunError where --cuda-graph cannot run."""
    amp_dtype, amp_note = precision(dist.device, recipe.amp)    # ValueError: --amp bf16 on a GPU without bf16
    if recipe.cuda_graph:
        if dist.enabled or recipe.compile:
            raise RunError("--cuda-graph replays one process's step as it was recorded: leave it off "
                           f"{'with torchrun' if dist.enabled else 'with --compile'}.")
        problem = graph_problem(dist.device, amp_dtype)
        if problem:
            raise RunError(problem)
    return amp_dtype, amp_note


def prepare(recipe: Recipe, dist: Dist, out: Path, model_object, resume: bool) -> Run:
    """The data, the model, the optimizer and schedule of a run (the step comes after a resume: make_step)."""
    amp_dtype, amp_note = amp_and_graph(recipe, dist)
    if dist.main:
        data.ensure_data(recipe)
    dist.barrier()
    meta = read_meta(recipe.data_dir)
    say = print if dist.main else (lambda text: None)
    policy = data.policy_of(recipe, meta, say)
    state.seed_everything(recipe.seed)
    train_loader, test_loader = data.loaders(recipe, policy, dist.device, say)
    net, spec = network.make_net(recipe, len(meta["classes"]), model_object)
    facts = custom.facts(net)
    net = network.place(net, recipe, dist.device, policy, resume)
    opt = optim.make_optimizer(net, recipe, dist.device)
    sched, per_batch = optim.make_scheduler(opt, recipe, len(train_loader))
    return Run(recipe, dist, out, meta, policy, train_loader, test_loader, net, spec, facts, opt, sched, per_batch,
               optim.make_ema(net, recipe.ema), amp_dtype, amp_note, model_object)


def make_step(r: Run):
    """The training step: the net wrapped for DDP and torch.compile where asked, eager or as a CUDA graph."""
    wrapped = r.net
    if r.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        device = r.dist.device
        wrapped = DistributedDataParallel(r.net, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = torch.compile(wrapped) if r.recipe.compile else wrapped
    kind = GraphStepper if r.recipe.cuda_graph else Stepper
    return kind(compiled, r.opt, r.dist.device, r.amp_dtype, r.recipe.label_smoothing)


def run_config(r: Run) -> dict:
    """config.json: the recipe (every option, and what a run trains with), the policy, the data, the model's facts,
    where it ran and the code that ran."""
    device, facts = r.dist.device, r.facts
    model_spec = r.spec.to_dict() if r.spec else (
        {"spec": None, "object": f"{type(r.net).__module__}.{type(r.net).__qualname__}"}
        if r.model_object is not None else None)
    args = vars(r.recipe).copy()
    return {"args": args, "policy": r.policy.to_dict(),
            "data": {k: r.meta[k] for k in ("classes", "counts", "mean", "std", "source")},
            "precision": r.amp_note, "device": str(device),
            "parameters": facts["parameters"], "receptive_field": facts["receptive_field"],
            "widths": facts["widths"], "activation": facts["activation"],
            "receptive_field_clipped": facts["receptive_field_clipped"], "model_spec": model_spec,
            "recipe": {"files": recipes.files(r.recipe), "values": recipes.resolved(args)},
            "code": recipes.code_version(), "torch": str(torch.__version__), "world_size": r.dist.world,
            "threads": torch.get_num_threads() if device.type == "cpu" else None}


def announce(r: Run) -> None:
    """What runs: the model and its facts, the loader, the device, the precision; the recipe and the code."""
    recipe, facts, device = r.recipe, r.facts, r.dist.device
    variant = " (widths " + " ".join(map(str, r.net.widths)) + ")" if recipe.widths else ""
    name = r.spec.text if r.spec else (type(r.net).__name__ if r.model_object is not None else recipe.arch)
    if recipe.activation != DEFAULT_ACTIVATION:
        variant += f" ({recipe.activation})"
    if recipe.whiten:
        variant += " (first convolution whitened, frozen)"
    rf = f"{'at least ' if facts['receptive_field_clipped'] else ''}{facts['receptive_field']}"
    threads = torch.get_num_threads()
    print(f"{name}{variant}: {facts['parameters']:,} parameters, receptive field {rf}; "
          f"loader {recipe.loader}, {len(r.train_loader)} batches of {recipe.batch_size}; device {device}"
          f"{f' ({threads} thread' + ('s' if threads != 1 else '') + ')' if device.type == 'cpu' else ''}; "
          f"{r.amp_note}; {'channels-last' if recipe.channels_last else 'contiguous'}"
          f"{'; torch.compile' if recipe.compile else ''}{'; CUDA graph' if recipe.cuda_graph else ''}"
          f"{f'; {r.dist.world} processes (DistributedDataParallel)' if r.dist.enabled else ''}")
    if getattr(r.train_loader, "summary", None):        # how the engine runs here (DALI: its operators and batch)
        print(f"loader {recipe.loader}: {r.train_loader.summary}")
    code = r.config["code"]
    print(f"recipe {' + '.join(r.config['recipe']['files'])}; code "
          + (f"{code['commit'][:10]}{' with uncommitted changes' if code['dirty'] else ''}" if code else
             "outside a git checkout"))


def train_epochs(r: Run, tb) -> dict:
    """Epoch after epoch from ``r.start_epoch``: train, test, record, checkpoint. Ctrl-C and a loss that is not
    finite stop it with the sentence of what is kept (the last checkpoint)."""
    saved = r.start_epoch             # the epoch whose checkpoint is on disk
    try:
        for epoch in range(r.start_epoch, r.recipe.epochs):
            m = one_epoch(r, epoch)
            if not r.dist.main:
                r.metrics.append({"epoch": epoch + 1})
                continue
            r.metrics.append(m)
            record(r, m, tb)
            state.save_checkpoint(state.checkpoint(r, epoch + 1, r.metrics), r.ckpt_path, r.out, r.metrics)
            saved = epoch + 1       # the checkpoint is what --resume continues; the files below follow from it
            write_progress(r.metrics, r.out)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_sentence(r.out, saved)) from None
    except epochs.NonFiniteLoss as e:
        raise RunError(non_finite_sentence(e, r.recipe, r.out, saved)) from None
    finally:
        if tb is not None:
            tb.close()
    if r.metrics and r.dist.main:
        print(f"test accuracy {100 * r.metrics[-1]['test_acc']:.2f}% after {r.metrics[-1]['epoch']} epochs -> {r.out}")
    return {"metrics": r.metrics, "out": str(r.out), "model": r.tested, "config": r.config}


def one_epoch(r: Run, epoch: int) -> dict:
    """Train and test one epoch (0-based ``epoch``); its metrics."""
    r.train_loader.set_epoch(epoch)
    lr = float(r.opt.param_groups[0]["lr"])          # a GPU tensor with --cuda-graph
    seen = [] if r.recipe.log_samples else None
    tr_loss, tr_acc, seconds, img_s = epochs.train_one_epoch(r.step, r.train_loader, r.sched, r.per_batch, epoch,
                                                             r.recipe.epochs, r.dist, seen, r.ema, r.net)
    te_loss, te_acc = epochs.evaluate(r.tested, r.test_loader, r.dist.device, r.amp_dtype, r.dist)
    if not math.isfinite(te_loss):
        raise epochs.NonFiniteLoss(f"the test set after epoch {epoch + 1}", te_loss)
    if seen is not None:
        r.out.mkdir(parents=True, exist_ok=True)
        write_json(seen, r.out / f"samples-epoch{epoch + 1}-rank{r.dist.rank}.json")
    return {"epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
            "test_acc": te_acc, "epoch_time_s": seconds, "img_per_s": img_s, "lr": lr}


def record(r: Run, m: dict, tb) -> None:
    """The epoch's line, and its scalars in TensorBoard."""
    print(f"epoch {m['epoch']:>3}/{r.recipe.epochs}  train loss {m['train_loss']:.4f} acc {100 * m['train_acc']:5.2f}%  "
          f"test loss {m['test_loss']:.4f} acc {100 * m['test_acc']:5.2f}%  {m['epoch_time_s']:6.1f}s  "
          f"{m['img_per_s']:7.0f} img/s  lr {m['lr']:.4f}", flush=True)
    for k, v in m.items():
        if k != "epoch":
            tb.add_scalar(k, v, m["epoch"])
    tb.flush()


def non_finite_sentence(e: epochs.NonFiniteLoss, recipe: Recipe, out: Path, saved: int) -> str:
    kept = (f"{out} still holds epoch {saved}'s checkpoint, trained before it" if saved else
            "no checkpoint was written")
    return (f"the loss became {e.value} at {e.where}: the model's outputs or weights are no longer finite numbers "
            f"(a learning rate too high for it, --lr {recipe.lr:g}, or a model that makes NaN); stopped, {kept}: "
            f"lower --lr or mend the model, and start a new run.")


__all__ = ["Run", "run", "RunError", "CheckpointError"]
