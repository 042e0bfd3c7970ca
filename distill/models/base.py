"""The common base of zoo models: one forward that serves logits and features."""

from __future__ import annotations

from torch import Tensor, nn

from distill.models.features import FeatureRecord


class ZooModel(nn.Module):
    """A classifier that can also report its intermediate features.

    Subclasses implement :meth:`forward_features`; ``forward`` returns logits, or
    the whole :class:`FeatureRecord` with ``features=True``. Keeping references
    to intermediate tensors costs nothing extra, so both paths run the same code.
    """

    def forward_features(self, x: Tensor) -> FeatureRecord:
        raise NotImplementedError

    def feature_modules(self) -> list[nn.Module]:
        """The modules that produce the features (everything but the classifier head).

        The reference's ``get_feat_modules``: two-stage methods (AB, FSP) train
        exactly these in their init stage.
        """
        raise NotImplementedError

    def forward(self, x: Tensor, features: bool = False) -> Tensor | FeatureRecord:
        record = self.forward_features(x)
        return record if features else record.logits
