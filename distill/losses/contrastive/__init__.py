"""Contrastive distillation: projection heads, the momentum memory bank, negatives, estimators.

``loss.py`` registers the presets ``crd``, ``cpc`` and ``ml_cpc``.
"""

from distill.losses.contrastive import loss  # noqa: F401  (registers the presets)
