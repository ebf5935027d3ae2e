"""The CIFAR-10 CNN (C1-C2-C3-C4-Output): see issue 3."""
