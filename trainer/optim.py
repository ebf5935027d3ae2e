"""The optimizer, the learning-rate schedule and the weight average of a run, from its recipe."""
from __future__ import annotations

import torch

from model import training
from trainer.recipe import Recipe


def make_optimizer(net, recipe: Recipe, device=None):
    return training.make_optimizer(net, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay,
                                   graph_device=device if recipe.cuda_graph else None)


def make_scheduler(opt, recipe: Recipe, steps_per_epoch):
    """Returns (scheduler, steps it per batch?)."""
    if recipe.schedule == "onecycle":
        total = recipe.epochs * steps_per_epoch
        if recipe.warmup * total == 1:      # OneCycleLR divides by zero on a warm-up of exactly one step
            raise ValueError(f"{recipe.epochs} epoch(s) of {steps_per_epoch} batch(es) with --warmup {recipe.warmup} "
                             f"warm up over exactly one step, which OneCycle cannot do: pass another --warmup "
                             f"or --schedule step.")
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=total, pct_start=recipe.warmup,
            anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
            base_momentum=recipe.momentum, max_momentum=recipe.momentum), True
    return torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.step_size, gamma=recipe.gamma), False


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
