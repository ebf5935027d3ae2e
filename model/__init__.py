"""The CIFAR-10 CNN (C1-C2-C3-C4-Output); knows nothing of pipeline/ or train.py."""
from model.net import (ACTIVATIONS, ARCHS, DEFAULT_ACTIVATION, PARAMETER_BUDGET, WIDTHS, Net, activation,
                       build_model, conv_layers, count_parameters, first_conv, layout, receptive_field,
                       whiten_first_conv, whitening_filters)

__all__ = ["ACTIVATIONS", "ARCHS", "DEFAULT_ACTIVATION", "PARAMETER_BUDGET", "WIDTHS", "Net", "activation",
           "build_model", "conv_layers", "count_parameters", "first_conv", "layout", "receptive_field",
           "whiten_first_conv", "whitening_filters"]
