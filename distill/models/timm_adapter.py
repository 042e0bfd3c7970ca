"""Any timm architecture as a zoo model (``timm/<name>``), with the same feature record.

Built without pretrained weights (nothing is fetched from a hub); load a local
checkpoint through ``create_model(..., checkpoint=PATH)`` instead. Features come
from timm's ``forward_intermediates`` (stage maps) and ``forward_head``
(``pre_logits=True`` gives the pooled vector the classifier sees).
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.errors import DistillError, UnknownNameError
from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.registry import did_you_mean


def timm_model_exists(name: str) -> bool:
    import timm

    return timm.is_model(name)


class TimmModel(ZooModel):
    """Wraps a timm model so that it answers ``features=True`` with a FeatureRecord.

    timm's intermediate maps are the stage outputs; timm exposes no pre-activation
    versions, so ``preact_maps`` holds the same tensors as ``maps``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: Tensor) -> FeatureRecord:
        final, maps = self.model.forward_intermediates(x)
        pooled = self.model.forward_head(final, pre_logits=True)
        logits = self.model.forward_head(final)
        return FeatureRecord(maps=list(maps), preact_maps=list(maps), pooled=pooled, logits=logits)

    def feature_modules(self) -> list[nn.Module]:
        classifier = self.model.get_classifier()
        return [m for m in self.model.children() if m is not classifier]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | FeatureRecord:
        if features:
            return self.forward_features(x)
        return self.model(x)

    def state_dict(self, *args, **kwargs):
        """The wrapped timm model's own keys, so checkpoints interchange with plain timm."""
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


def create_timm_model(name: str, num_classes: int, **kwargs) -> TimmModel:
    """Build ``timm.create_model(name, pretrained=False, num_classes=...)`` wrapped for features."""
    import timm

    if not timm.is_model(name):
        candidates = timm.list_models()
        raise UnknownNameError(f"unknown timm model {name!r}.{did_you_mean(name, candidates)}")
    if kwargs.pop("pretrained", False):
        raise DistillError(
            f"timm/{name}: pretrained hub weights are not fetched by distill; "
            f"download them yourself and give the file as the model's 'checkpoint'"
        )
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if not hasattr(model, "forward_intermediates"):
        raise DistillError(
            f"timm/{name} has no forward_intermediates(), so its features cannot be read; "
            f"choose a timm architecture that supports it (most CNNs and ViTs do)"
        )
    return TimmModel(model)
