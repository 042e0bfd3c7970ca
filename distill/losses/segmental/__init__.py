"""Segmental information distillation, MUSIC-style (see docs/segmental.md).

``information.py`` holds the math (codes, joints, entropies, mutual information),
``estimates.py`` the global-batch and moving-average estimates of the joints, and
``loss.py`` registers the loss ``segmental``.
"""

from distill.losses.segmental import loss  # noqa: F401  (registers the loss)
