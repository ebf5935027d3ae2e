"""The model of a run: the built-in arch, a --model spec or a model object from fit(), within its parameter budget,
whitened and in the memory format the recipe asks for."""
from __future__ import annotations

import torch

from model import PARAMETER_BUDGET, build_model, count_parameters, custom, whiten_first_conv
from trainer.data import whitening_images
from trainer.folders import RunError
from trainer.recipe import Recipe


def make_net(recipe: Recipe, num_classes: int, model_object=None):
    """(the net, its ModelSpec or None): fit()'s model object, --model's own, or the built-in arch; refused
    (RunError) over the budget."""
    spec = None
    if model_object is not None:
        net = model_object
        custom.check_output(net, num_classes, type(net).__name__)
    elif recipe.model:
        try:
            net, spec = custom.build(recipe.model, num_classes)
        except custom.ModelSpecError as e:
            raise RunError(str(e)) from None
    else:
        net = build_model(recipe.arch, num_classes, recipe.widths, recipe.activation)
    budget = recipe.max_params or (None if recipe.model else PARAMETER_BUDGET)
    n = count_parameters(net)
    if budget is not None and n >= budget:
        raise RunError(f"{recipe.model or recipe.arch} has {n:,} parameters; --max-params allows fewer than "
                       f"{budget:,}: make it smaller, or raise --max-params.")
    return net, spec


def place(net, recipe: Recipe, device: torch.device, policy, resume: bool):
    """The net on ``device``: its first convolution whitened (computed on the CPU, so every device gets the same
    filters; a resumed run's come from its checkpoint) and channels-last, as the recipe says."""
    net = net.to(device)
    if recipe.whiten:
        whiten_first_conv(net, None if resume else whitening_images(recipe.data_dir, policy))
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net
