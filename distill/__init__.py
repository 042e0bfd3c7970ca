"""distill: knowledge distillation with contrastive objectives, on CIFAR-100 and beyond."""

__version__ = "0.1.0"
