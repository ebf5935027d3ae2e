"""The CIFAR-10 CNN (C1-C2-C3-C4-Output); knows nothing of pipeline/ or train.py."""
from model.net import ARCHS, Net, activation, build_model, conv_layers, count_parameters, layout, receptive_field

__all__ = ["ARCHS", "Net", "activation", "build_model", "conv_layers", "count_parameters", "layout", "receptive_field"]
