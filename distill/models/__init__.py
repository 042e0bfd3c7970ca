"""The model zoo: every CIFAR architecture of the CRD benchmark, plus timm.

``create_model(name, num_classes=...)`` builds one; ``list_models()`` lists them.
Each architecture file registers its builders on import.
"""

from distill.models.features import FeatureRecord, FeatureShapes, probe_feature_shapes
from distill.models.registry import create_model, is_model, list_models, register_model

# Importing the architecture files registers their models.
from distill.models import resnet, resnetv2, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2  # noqa: E402,F401

__all__ = [
    "FeatureRecord",
    "FeatureShapes",
    "create_model",
    "is_model",
    "list_models",
    "probe_feature_shapes",
    "register_model",
]
