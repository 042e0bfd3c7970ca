"""The model zoo: every CIFAR architecture of the CRD benchmark, plus timm.

``create_model(name, num_classes=...)`` builds one; ``list_models()`` lists them.
Each architecture file registers its builders on import.
"""

# Importing the architecture files registers their models.
from distill.models import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: E402,F401
from distill.models.features import FeatureRecord, FeatureShapes, probe_feature_shapes
from distill.models.registry import create_model, is_model, list_models, register_model

__all__ = [
    "FeatureRecord",
    "FeatureShapes",
    "create_model",
    "is_model",
    "list_models",
    "probe_feature_shapes",
    "register_model",
]
